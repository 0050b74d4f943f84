"""Callbacks that search, prune and export embedding dimensions."""

from keras_embdim.callbacks.dimension_exporter import DimensionExporter
from keras_embdim.callbacks.single_shot_pruner import SingleShotPruner

__all__ = ["DimensionExporter", "SingleShotPruner"]
