"""`DimensionMask`: the common notion of which embedding dimensions a layer keeps.

A searchable layer (`keras_embdim.searchable.DimensionSearchable`) owns one
embedding table per field (stored as one concatenated table) of width
`output_dim`; its `DimensionMask` says which columns each field keeps (per
field), or how many leading columns each value keeps (per value), and does the
parameter accounting. Callbacks read and write it, reports print it, and
`keras_embdim.export` turns a table plus its mask into the tables that ship.
See docs/reference/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np



def size_dtype(output_dim: int) -> type:
    """The narrowest signed integer type that holds every per-value size (0..`output_dim`): int8 up
    to 127, 1 B per row where int32 took 4. Signed, so the difference of two sizes cannot wrap.

    >>> size_dtype(16).__name__, size_dtype(200).__name__
    ('int8', 'int16')
    """
    for dtype in (np.int8, np.int16):
        if output_dim <= np.iinfo(dtype).max:
            return dtype
    return np.int32


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
            When set, `keep` must be the union (columns any value keeps). Signed
            integer arrays are held as they come (a layer's read: `size_dtype`,
            1 B per row up to D = 127), any other as int32.
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
            # signed integers as they come (a layer's int8 read: 1 B per row), anything else as int32
            sizes = [np.asarray(s) for s in self.value_sizes]
            sizes = [s if np.issubdtype(s.dtype, np.signedinteger) else s.astype(np.int32) for s in sizes]
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

    def same_as(self, other: "DimensionMask") -> bool:
        """True if `other` keeps exactly the same entries (granularity, columns and value sizes)."""
        if self.granularity != other.granularity or not np.array_equal(self.keep, other.keep):
            return False
        return self.value_sizes is None or all(np.array_equal(a, b)
                                               for a, b in zip(self.value_sizes, other.value_sizes))

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
