"""The four methods, by the papers' names: which layer and which callback implement each.

| name | paper | granularity | layer | callback |
|---|---|---|---|---|
| `"sseds"` | Single-shot Embedding Dimension Search (Qu et al., SIGIR 2022) | per field | `PrunableEmbedding` | `SingleShotPruner` |
| `"ham"` | Hard Auxiliary Mask pruning (Xiao et al., DL4SR @ CIKM 2022) | per field | `HardMaskEmbedding` | `HardMaskSearch` (+ `OrthogonalRegularizer`) |
| `"amtl"` | Adaptively-Masked Twins-based Layer (Yan et al., CIKM 2021) | per value | `TwinsMaskLayer` | `TwinsMaskSearch` |
| `"pme"` | Pruning-based Multi-size Embedding (Liu et al., Frontiers in Big Data 2023) | per value | `PrunableEmbedding` | `PMEPruner` |

`get_method("ham").embedding(vocab_sizes, 16, field_names)` builds the layer a
method searches (a multi-field layer over `[..., F]` ids), and
`.search(budget, **kwargs)` its callback; the benchmarks and examples use this
instead of chains of ifs.

Example:

>>> import keras_embdim as ked
>>> m = ked.methods.get_method("amtl")
>>> m.granularity, m.callback.__name__
('value', 'TwinsMaskSearch')
>>> type(m.embedding([10, 20], 8, ["a", "b"])).__name__
'TwinsMaskLayer'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from keras_embdim.callbacks.hard_mask_search import HardMaskSearch
from keras_embdim.callbacks.pme_pruner import PMEPruner
from keras_embdim.callbacks.single_shot_pruner import SingleShotPruner
from keras_embdim.callbacks.twins_mask_search import TwinsMaskSearch
from keras_embdim.layers.hard_mask_embedding import HardMaskEmbedding
from keras_embdim.layers.prunable_embedding import PrunableEmbedding
from keras_embdim.layers.searchable_embedding import SearchableEmbedding
from keras_embdim.layers.twins_mask_layer import TwinsMaskLayer


def _prunable(vocab_sizes, dim, field_names, name, **kwargs):
    return PrunableEmbedding(list(vocab_sizes), dim, field_names=field_names, name=name, **kwargs)


def _hard_mask(vocab_sizes, dim, field_names, name, **kwargs):
    return HardMaskEmbedding(list(vocab_sizes), dim, field_names=field_names, name=name, **kwargs)


def _twins(vocab_sizes, dim, field_names, name, **kwargs):
    return TwinsMaskLayer(PrunableEmbedding(list(vocab_sizes), dim, field_names=field_names), name=name, **kwargs)


@dataclass(frozen=True)
class Method:
    """One method: its name, paper, granularity, layer and search callback."""

    name: str
    paper: str
    granularity: str
    layer: type
    callback: type
    _build: Callable = field(repr=False)

    def embedding(self, vocab_sizes: Sequence[int], output_dim: int, field_names: Sequence[str] | None = None, *,
                  name: str = "embedding", **layer_kwargs: Any):
        """The multi-field layer this method searches (input `[..., F]` local ids)."""
        names = list(field_names) if field_names is not None else None
        return self._build(vocab_sizes, output_dim, names, name, **layer_kwargs)

    def search(self, budget: Any, **kwargs: Any):
        """This method's search callback."""
        return self.callback(budget, **kwargs)


METHODS: dict[str, Method] = {
    "sseds": Method("sseds", "SSEDS: Qu et al., Single-shot Embedding Dimension Search, SIGIR 2022", "field",
                    PrunableEmbedding, SingleShotPruner, _prunable),
    "ham": Method("ham", "HAM: Xiao et al., Hard Auxiliary Mask pruning, DL4SR @ CIKM 2022", "field",
                  HardMaskEmbedding, HardMaskSearch, _hard_mask),
    "amtl": Method("amtl", "AMTL: Yan et al., Adaptively-Masked Twins-based Layer, CIKM 2021", "value",
                   TwinsMaskLayer, TwinsMaskSearch, _twins),
    "pme": Method("pme", "PME: Liu et al., Pruning-based Multi-size Embedding, Frontiers in Big Data 2023", "value",
                  PrunableEmbedding, PMEPruner, _prunable),
}


def get_method(name: str) -> Method:
    """The method of a name (`"sseds"`, `"ham"`, `"amtl"`, `"pme"`)."""
    if name not in METHODS:
        raise ValueError(f"`method` must be one of {sorted(METHODS)}; received {name!r}.")
    return METHODS[name]


def layer_for(callback: type) -> str:
    """The name of the layer a search callback class searches (for error messages)."""
    names = sorted({m.layer.__name__ for m in METHODS.values() if issubclass(callback, m.callback)})
    return " or ".join(names) if names else "a keras_embdim searchable layer"


def callbacks_for(layer: Any) -> list[str]:
    """Names of the search callbacks that search `layer` (for error messages)."""
    if isinstance(layer, HardMaskEmbedding):
        return [HardMaskSearch.__name__]
    if isinstance(layer, TwinsMaskLayer):
        return [TwinsMaskSearch.__name__]
    if isinstance(layer, SearchableEmbedding):
        return [SingleShotPruner.__name__, PMEPruner.__name__]
    return []
