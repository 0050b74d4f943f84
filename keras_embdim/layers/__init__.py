"""Searchable embedding layers and helpers."""

from keras_embdim.layers.fields import FieldOffsets, StackFields
from keras_embdim.layers.hard_mask_embedding import HardMaskEmbedding
from keras_embdim.layers.mixed_dimension_embedding import MixedDimensionEmbedding
from keras_embdim.layers.prunable_embedding import PrunableEmbedding
from keras_embdim.layers.searchable_embedding import SearchableEmbedding
from keras_embdim.layers.twins_mask_layer import TwinsMaskLayer

__all__ = ["FieldOffsets", "HardMaskEmbedding", "MixedDimensionEmbedding", "PrunableEmbedding", "SearchableEmbedding", "StackFields", "TwinsMaskLayer"]
