"""The dimension-mask protocol shared by every searchable embedding layer.

A *searchable* layer owns one embedding table per field (stored as one
concatenated table) of width `output_dim`, and a `DimensionMask` saying which
columns each field keeps. Callbacks find such layers with
`find_searchable_layers`, read and write their masks through
`DimensionSearchable`, and `keras_embdim.export` turns a table plus its mask
into the compact tables that ship. See docs/architecture.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from keras_embdim import _compat


@dataclass
class DimensionMask:
    """Which embedding columns each field keeps.

    Args:
        vocab_sizes: rows of each field's table, `n_f`.
        keep: boolean array `[num_fields, output_dim]`; `keep[f, j]` says that
            column `j` of field `f` is kept (per-field granularity).
        field_names: optional names of the fields, for reports.
        value_sizes: optional per-value granularity: for each field an int array
            of length `n_f` giving how many leading columns each value keeps.
            When set, `keep` must be the union (columns any value keeps).
    """

    vocab_sizes: tuple[int, ...]
    keep: np.ndarray
    field_names: tuple[str, ...] | None = None
    value_sizes: list[np.ndarray] | None = field(default=None)

    def __post_init__(self):
        self.vocab_sizes = tuple(int(n) for n in self.vocab_sizes)
        keep = np.asarray(self.keep)
        if keep.ndim != 2 or keep.shape[0] != len(self.vocab_sizes):
            raise ValueError(
                "`keep` must have shape [num_fields, output_dim] = "
                f"[{len(self.vocab_sizes)}, D]; received shape {keep.shape}."
            )
        if keep.dtype != bool:
            if not np.all((keep == 0) | (keep == 1)):
                raise ValueError("`keep` must hold only 0/1 or booleans.")
            keep = keep.astype(bool)
        self.keep = keep
        if self.field_names is None:
            self.field_names = tuple(f"field_{i}" for i in range(len(self.vocab_sizes)))
        else:
            self.field_names = tuple(self.field_names)
        if self.value_sizes is not None:
            sizes = [np.asarray(s, dtype=np.int32) for s in self.value_sizes]
            for f, (s, n) in enumerate(zip(sizes, self.vocab_sizes)):
                if s.shape != (n,):
                    raise ValueError(
                        f"value_sizes[{f}] must have shape ({n},); got {s.shape}."
                    )
                if s.min(initial=0) < 0 or s.max(initial=0) > self.output_dim:
                    raise ValueError(
                        f"value_sizes[{f}] must lie in [0, {self.output_dim}]."
                    )
            self.value_sizes = sizes

    # ------------------------------------------------------------------ sizes
    @property
    def num_fields(self) -> int:
        return len(self.vocab_sizes)

    @property
    def output_dim(self) -> int:
        return int(self.keep.shape[1])

    @property
    def granularity(self) -> str:
        return "field" if self.value_sizes is None else "value"

    @property
    def kept_dims(self) -> np.ndarray:
        """Kept columns per field (per-value: the largest size of the field)."""
        return self.keep.sum(axis=1).astype(np.int64)

    def field_kept_params(self) -> np.ndarray:
        if self.value_sizes is not None:
            return np.array([int(s.sum()) for s in self.value_sizes], dtype=np.int64)
        return self.kept_dims * np.asarray(self.vocab_sizes, dtype=np.int64)

    @property
    def kept_params(self) -> int:
        return int(self.field_kept_params().sum())

    @property
    def full_params(self) -> int:
        return int(sum(self.vocab_sizes) * self.output_dim)

    @property
    def is_full(self) -> bool:
        return bool(self.keep.all()) and (
            self.value_sizes is None
            or all(int(s.min(initial=self.output_dim)) == self.output_dim for s in self.value_sizes)
        )

    def kept_columns(self, f: int) -> np.ndarray:
        return np.flatnonzero(self.keep[f])

    @classmethod
    def full(cls, vocab_sizes: Sequence[int], output_dim: int, field_names=None) -> "DimensionMask":
        return cls(
            tuple(vocab_sizes),
            np.ones((len(vocab_sizes), output_dim), dtype=bool),
            field_names,
        )

    def as_float(self) -> np.ndarray:
        return self.keep.astype(np.float32)

    def to_records(self) -> list[dict]:
        """One dict per field: the rows of a dimension report."""
        params = self.field_kept_params()
        out = []
        for f in range(self.num_fields):
            rec = {
                "field": self.field_names[f],
                "vocab": self.vocab_sizes[f],
                "full_dims": self.output_dim,
                "kept_dims": int(self.kept_dims[f]),
                "kept_columns": [int(c) for c in self.kept_columns(f)],
                "params_before": self.vocab_sizes[f] * self.output_dim,
                "params_after": int(params[f]),
            }
            if self.value_sizes is not None:
                s = self.value_sizes[f]
                rec["mean_value_dims"] = float(s.mean()) if len(s) else 0.0
                rec["size_histogram"] = np.bincount(s, minlength=self.output_dim + 1).tolist()
            out.append(rec)
        return out


class DimensionSearchable:
    """Interface of a layer whose embedding dimensions can be searched.

    Implemented by `keras_embdim.layers.SearchableEmbedding` and everything
    derived from it. Callbacks and the exporter use only these members.
    """

    #: "field" (every value of a field keeps the same columns) or "value".
    granularity: str = "field"

    @property
    def field_vocab_sizes(self) -> tuple[int, ...]:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def field_names(self) -> tuple[str, ...]:  # pragma: no cover - interface
        raise NotImplementedError

    def dimension_mask(self) -> DimensionMask:  # pragma: no cover - interface
        """The mask in force now, as numpy."""
        raise NotImplementedError

    def set_dimension_mask(self, mask: "DimensionMask | np.ndarray") -> None:  # pragma: no cover
        """Impose a mask (pruners call this)."""
        raise NotImplementedError

    @property
    def embedding_variable(self):  # pragma: no cover - interface
        """The full-size table variable `[sum(n_f), output_dim]`."""
        raise NotImplementedError

    @property
    def multi_field(self) -> bool:  # pragma: no cover - interface
        """Whether the last axis of the layer's ids indexes its fields."""
        raise NotImplementedError

    def serving_ids(self, inputs):  # pragma: no cover - interface
        """The local ids (`[..., F]`, or `[...]` for one field) that a serving
        lookup of this layer takes (the exporter folds with them)."""
        raise NotImplementedError

    def use_serving_lookup(self, lookup) -> None:  # pragma: no cover - interface
        """While `lookup` is set, `call` returns `lookup.padded(serving_ids(inputs))`
        (the exporter traces the serving graph so); None switches back."""
        raise NotImplementedError

    def sync_search_state(self) -> bool:
        """After weights were restored (a checkpoint, `BackupAndRestore`,
        `load_weights`): make the layer's Python state (frozen, per-value)
        agree with its restored variables. Returns True if it changed; the
        caller then retraces the training step."""
        return False


def find_searchable_layers(model: Any, names: Iterable[str] | None = None) -> list:
    """Every searchable layer inside `model`, at any depth, each once.

    Args:
        model: any Keras model or layer (functional, sequential, subclassed,
            nested, TFRS).
        names: optional layer names to restrict the result to; an unknown name
            is an error.
    """
    layers = [l for l in _compat.flatten_layers(model) if isinstance(l, DimensionSearchable)]
    # a searchable layer wrapped by another (TwinsMaskLayer around a PrunableEmbedding)
    # is searched and compacted through its wrapper only
    wrapped = {id(getattr(l, "embedding", None)) for l in layers}
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


def check_fraction(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """Validate a fraction argument such as `budget` (0 < value <= 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"`{name}` must be a number in (0, 1]; received {value!r}.")
    value = float(value)
    low_ok = value >= 0 if allow_zero else value > 0
    if math.isnan(value) or not low_ok or value > 1:
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(
            f"`{name}` must be a fraction of the embedding parameters in {interval}; "
            f"received {name}={value!r}."
        )
    return value
