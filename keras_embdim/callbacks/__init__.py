"""Callbacks that search, prune, regularise and export embedding dimensions."""

from keras_embdim.callbacks.dimension_exporter import DimensionExporter
from keras_embdim.callbacks.hard_mask_search import HardMaskSearch
from keras_embdim.callbacks.orthogonal_regularizer import OrthogonalRegularizer
from keras_embdim.callbacks.pme_pruner import PMEPruner
from keras_embdim.callbacks.search_callback import DimensionSearchCallback, EpochBoundedSearch, Phase, SearchResult
from keras_embdim.callbacks.single_shot_pruner import SingleShotPruner
from keras_embdim.callbacks.twins_mask_search import TwinsMaskSearch

__all__ = ["DimensionExporter", "DimensionSearchCallback", "EpochBoundedSearch", "Phase", "SearchResult", "HardMaskSearch", "OrthogonalRegularizer", "PMEPruner", "SingleShotPruner", "TwinsMaskSearch"]
