"""keras_embdim: find, train and ship the right embedding size per feature.

>>> import keras_embdim as ked
>>> emb = ked.PrunableEmbedding(input_dim=[100, 20], output_dim=16)
"""

from keras_embdim import _compat
from keras_embdim import data, export, layers, mask, models, plots
from keras_embdim.callbacks import (
    DimensionExporter,
    DimensionSearchCallback,
    HardMaskSearch,
    TwinsMaskSearch,
    OrthogonalRegularizer,
    PMEPruner,
    SingleShotPruner,
)
from keras_embdim.budget import ByteBudget
from keras_embdim.convert import add_twins, make_searchable, rebuild_mixed
from keras_embdim.export import ExportError, ExportResult, export_compact
from keras_embdim.layers import (
    HardMaskEmbedding,
    MixedDimensionEmbedding,
    PrunableEmbedding,
    SearchableEmbedding,
    TwinsMaskLayer,
)
from keras_embdim.mask import DimensionMask, DimensionSearchable, find_searchable_layers
from keras_embdim.report import dimension_report, dimension_summary, format_report

__version__ = "0.1.0"
KERAS_3 = _compat.KERAS_3

__all__ = [
    "ByteBudget",
    "DimensionExporter",
    "DimensionSearchCallback",
    "HardMaskEmbedding",
    "HardMaskSearch",
    "MixedDimensionEmbedding",
    "OrthogonalRegularizer",
    "PMEPruner",
    "DimensionMask",
    "DimensionSearchable",
    "ExportError",
    "ExportResult",
    "PrunableEmbedding",
    "SearchableEmbedding",
    "SingleShotPruner",
    "TwinsMaskLayer",
    "TwinsMaskSearch",
    "add_twins",
    "dimension_report",
    "dimension_summary",
    "export_compact",
    "find_searchable_layers",
    "format_report",
    "make_searchable",
    "rebuild_mixed",
]
