"""keras_embdim: find, train and ship the right embedding size per feature.

Layers (`PrunableEmbedding`, `HardMaskEmbedding`, `TwinsMaskLayer`), search
callbacks (`SingleShotPruner`, `HardMaskSearch`, `TwinsMaskSearch`,
`PMEPruner`), `OrthogonalRegularizer`, and `DimensionExporter` /
`export_compact` for TF Serving; `ked.keras` is the Keras the package runs on
(Keras 3, or `tf_keras` with `TF_USE_LEGACY_KERAS=1`). The papers' methods by
name: `keras_embdim.methods`.

>>> import keras_embdim as ked
>>> emb = ked.PrunableEmbedding(input_dim=[100, 20], output_dim=16)
"""

import importlib

from keras_embdim import _compat
from keras_embdim._compat import keras
from keras_embdim.callbacks import (
    DimensionExporter,
    DimensionSearchCallback,
    HardMaskSearch,
    OrthogonalRegularizer,
    PMEPruner,
    SingleShotPruner,
    TwinsMaskSearch,
)
from keras_embdim.callbacks.search_callback import Phase, SearchResult, dimension_history
from keras_embdim.convert import add_twins, make_searchable, rebuild_mixed
from keras_embdim.export import ExportError, ExportResult, export_compact
from keras_embdim.fields import FieldLayout
from keras_embdim.layers import (
    FieldOffsets,
    HardMaskEmbedding,
    MixedDimensionEmbedding,
    PrunableEmbedding,
    SearchableEmbedding,
    StackFields,
    TwinsMaskLayer,
)
from keras_embdim.mask import DimensionMask
from keras_embdim.methods import METHODS, Method, get_method
from keras_embdim.optimizers import LazyAdagrad, LazyAdam, LazySGD, row_sparse
from keras_embdim.regularizers import OrthogonalEmbeddingRegularizer
from keras_embdim.report import dimension_report, dimension_summary, format_report
from keras_embdim.search.budget import ByteBudget
from keras_embdim.searchable import DimensionSearchable, find_searchable_layers

__version__ = "0.1.0"
KERAS_3 = _compat.KERAS_3

# Demo code (datasets, a model zoo, plots, the quickstart) loads on first use, so
# that `import keras_embdim` does not import pandas or matplotlib.
_LAZY = ("data", "models", "plots", "metrics", "quickstart", "serving", "export", "methods", "search", "layers",
         "callbacks")


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f"keras_embdim.{name}")
    raise AttributeError(f"module 'keras_embdim' has no attribute {name!r}")


__all__ = [
    "ByteBudget",
    "DimensionExporter",
    "DimensionMask",
    "DimensionSearchCallback",
    "DimensionSearchable",
    "ExportError",
    "ExportResult",
    "FieldLayout",
    "FieldOffsets",
    "HardMaskEmbedding",
    "HardMaskSearch",
    "LazyAdagrad",
    "LazyAdam",
    "LazySGD",
    "METHODS",
    "Method",
    "MixedDimensionEmbedding",
    "OrthogonalEmbeddingRegularizer",
    "OrthogonalRegularizer",
    "PMEPruner",
    "Phase",
    "PrunableEmbedding",
    "SearchResult",
    "SearchableEmbedding",
    "SingleShotPruner",
    "StackFields",
    "TwinsMaskLayer",
    "TwinsMaskSearch",
    "add_twins",
    "dimension_history",
    "dimension_report",
    "dimension_summary",
    "export_compact",
    "find_searchable_layers",
    "format_report",
    "get_method",
    "keras",
    "make_searchable",
    "rebuild_mixed",
    "row_sparse",
]
