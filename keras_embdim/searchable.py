"""The protocol every searchable embedding layer implements, and how callbacks find such layers.

Like tfmot's `PrunableLayer`, `DimensionSearchable` is the whole contract
between layers and the glue: the search callbacks, the exporter, reports and
conversions call only the members declared here (no `hasattr` probing, no
private attributes). Members a layer may not need have default behaviour
(no-ops, or a clear error), so a new layer joins by implementing the
abstract ones.

| member | who calls it |
|---|---|
| `granularity`, `field_vocab_sizes`, `field_names`, `num_fields`, `multi_field`, `output_dim` | budgets, reports, exporter |
| `embedding_variable` | exporter (compaction), pruners (zeroing) |
| `dimension_mask()` | everything that reports or decides |
| `set_dimension_mask(mask)` | per-field searches (SSEDS, HAM) |
| `set_value_sizes(sizes)` | per-value searches (PME, AMTL) |
| `end_search(mask)` | a search that stops on a bad loss (fall back to the last good mask) |
| `search_penalty()` | penalty logging (HAM, AMTL) |
| `freeze_table(frozen)` | AMTL's twins-only warm start |
| `attach_gate_probe()` / `attach_entry_probe()` / `detach_probe()` | SSEDS, PME |
| `add_penalty(fn)` / `remove_penalty(fn)` | `OrthogonalRegularizer` |
| `sync_search_state()` | resuming from a checkpoint |
| `serving_ids(inputs)` / `serving_field_ids(columns)` / `use_serving_lookup(lookup)` | exporter |
| `serving_ids_unshifted` | exporter (an id check that could never fail is left out) |
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import tensorflow as tf

from keras_embdim import _utils
from keras_embdim.mask import DimensionMask
from keras_embdim.validation import check_model


class DimensionSearchable:
    """Interface of a layer whose embedding dimensions can be searched (see the module docstring)."""

    #: "field" (every value of a field keeps the same columns) or "value" (each value its prefix).
    granularity: str = "field"

    # ------------------------------------------------------------ the fields
    @property
    def field_vocab_sizes(self) -> tuple[int, ...]:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def field_names(self) -> tuple[str, ...]:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def num_fields(self) -> int:
        return len(self.field_vocab_sizes)

    @property
    def multi_field(self) -> bool:  # pragma: no cover - interface
        """Whether the last axis of the layer's ids indexes its fields."""
        raise NotImplementedError

    @property
    def embedding_variable(self):  # pragma: no cover - interface
        """The full-size table variable `[sum(n_f), output_dim]`."""
        raise NotImplementedError

    # ------------------------------------------------------------- the masks
    def dimension_mask(self) -> DimensionMask:  # pragma: no cover - interface
        """The mask in force now, as numpy."""
        raise NotImplementedError

    def set_dimension_mask(self, mask: "DimensionMask | Any", *, optimizer=None,
                           zero_pruned: bool = True) -> None:  # pragma: no cover - interface
        """Impose a per-field mask; removed columns (and their optimizer slots) are zeroed."""
        raise NotImplementedError

    def set_value_sizes(self, sizes, *, optimizer=None, zero_pruned: bool = True) -> None:
        """Impose per-value sizes: value i keeps its first `sizes[i]` columns."""
        raise ValueError(f"layer '{self.name}' ({type(self).__name__}) takes per-field masks, not per-value sizes.")

    def end_search(self, mask: DimensionMask, *, optimizer=None) -> None:
        """Fix `mask` (per field or per value) and end any search in progress: what a
        search that stopped on a bad loss falls back to. The entries removed
        were zero already, so nothing is zeroed again."""
        if mask.granularity == "value":
            self.set_value_sizes(list(mask.value_sizes), optimizer=optimizer, zero_pruned=False)
        else:
            self.set_dimension_mask(mask, optimizer=optimizer, zero_pruned=False)

    def search_penalty(self) -> tf.Tensor:
        """The penalty the layer's own search adds to the loss now (for logs); 0 without one."""
        return tf.zeros([])

    def freeze_table(self, frozen: bool = True) -> None:
        """Stop (or resume) updates of the embedding table; layers without a twins-first
        warm start need not support it."""
        if frozen:
            raise ValueError(f"layer '{self.name}' ({type(self).__name__}) cannot freeze its table.")

    def sync_search_state(self) -> bool:
        """After weights were restored (a checkpoint, `BackupAndRestore`,
        `load_weights`): make the layer's Python state (frozen, per-value)
        agree with its restored variables. Returns True if it changed; the
        caller then retraces the training step."""
        return False

    # ------------------------------------------------------------- probes
    def attach_gate_probe(self):
        """Record gate gradients `dL/dalpha` from now on (SSEDS; the caller retraces)."""
        raise ValueError(f"layer '{self.name}' ({type(self).__name__}) has no gate outputs to probe.")

    def attach_entry_probe(self):
        """Record entry importances `|w * dL/dw|` from now on (PME; the caller retraces)."""
        raise ValueError(f"layer '{self.name}' ({type(self).__name__}) has no entries to probe.")

    def detach_probe(self) -> None:
        """Stop recording (the caller retraces)."""

    # ---------------------------------------------------------- penalties
    def add_penalty(self, penalty) -> None:
        """Attach a training loss `penalty(layer, rows, mask) -> scalar` (the caller retraces)."""
        raise ValueError(f"layer '{self.name}' ({type(self).__name__}) takes no extra penalties.")

    def remove_penalty(self, penalty) -> None:
        """Detach a penalty attached with `add_penalty` (nothing if it was not)."""

    # ------------------------------------------------------------ serving
    def serving_ids(self, inputs) -> tf.Tensor:  # pragma: no cover - interface
        """The local ids (`[..., F]`, or `[...]` for one field) that a serving
        lookup of this layer takes (the exporter folds with them)."""
        raise NotImplementedError

    def serving_field_ids(self, columns: Sequence[tf.Tensor]) -> list[tf.Tensor]:  # pragma: no cover - interface
        """`serving_ids` of a multi-field layer from one id tensor per field (`[...]`,
        what `keras_embdim.layers.StackFields` would stack), field by field: the
        exporter's per-field lookups stack only the fields each table holds."""
        raise NotImplementedError

    @property
    def serving_ids_unshifted(self) -> bool:
        """Whether `serving_ids` / `serving_field_ids` return their inputs' values unchanged
        (local ids taken as they come, no offset subtracted): then a range known for the
        inputs (a `StringLookup`'s vocabulary, say) is the ids' range, and the exporter can
        leave out an id check that could never fail. False unless a layer says so."""
        return False

    def use_serving_lookup(self, lookup) -> None:  # pragma: no cover - interface
        """While `lookup` is set, `call` returns `lookup.padded(serving_ids(inputs))`
        (the exporter traces the serving graph so); None switches back."""
        raise NotImplementedError


def find_searchable_layers(model: Any, names: Iterable[str] | None = None) -> list:
    """Every searchable layer inside `model`, at any depth, each once.

    A searchable layer wrapped by another (a `PrunableEmbedding` behind a
    `TwinsMaskLayer`) is searched and compacted through its wrapper only.

    Args:
        model: any Keras model or layer (functional, sequential, subclassed,
            nested, TFRS).
        names: optional layer names to restrict the result to; an unknown name
            is an error.
    """
    check_model(model)
    all_layers = _utils.flatten_layers(model)
    layers = [l for l in all_layers if isinstance(l, DimensionSearchable)]
    wrapped = {id(inner) for l in layers for inner in _utils.flatten_layers(l)[1:]}
    layers = [l for l in layers if id(l) not in wrapped]
    if names is not None:
        names = list(names)
        by_name = {l.name: l for l in layers}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(
                f"layers={names!r}: no searchable layer named {missing!r} in model "
                f"{getattr(model, 'name', model)!r}; searchable layers are {sorted(by_name)!r}."
            )
        layers = [by_name[n] for n in names]
    return layers


def total_params(layers: Sequence[Any]) -> tuple[int, int]:
    """(kept, full) embedding parameters over the given searchable layers."""
    kept = full = 0
    for layer in layers:
        m = layer.dimension_mask()
        kept += m.kept_params
        full += m.full_params
    return kept, full
