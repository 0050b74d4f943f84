"""The field layout of an embedding layer: how its ids map to the rows of one table.

A layer over F categorical fields keeps one concatenated table of
`sum(n_f)` rows, field after field. Its ids arrive either as local ids per
field (`[..., F]`, field f's ids in `[0, n_f)`; or `[...]` for a single field)
or, for a plain `Embedding` behind a `TwinsMaskLayer`, already offset into the
shared id space (`global_ids`). `FieldLayout` holds that layout and every
operation on it: parsing `input_dim`, offsets, local and global ids, table
rows, the field of each position, and the id checks; `SearchableEmbedding`,
`TwinsMaskLayer` and `MixedDimensionEmbedding` share it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import tensorflow as tf


def field_offsets(vocab_sizes: Sequence[int]) -> np.ndarray:
    """Row of each field's id 0 in the concatenated table."""
    return np.concatenate([[0], np.cumsum(np.asarray(vocab_sizes, np.int64))[:-1]]).astype(np.int64)


def parse_vocab(input_dim: Any, name: str = "input_dim") -> tuple[tuple[int, ...], bool]:
    """`(vocab sizes, multi_field)` from an int (one field) or a sequence of ints (several)."""
    def ok(n):
        return isinstance(n, (int, np.integer)) and not isinstance(n, bool) and int(n) > 0

    if ok(input_dim):
        return (int(input_dim),), False
    if isinstance(input_dim, (list, tuple, np.ndarray)) and len(input_dim) > 0 and all(ok(n) for n in input_dim):
        return tuple(int(n) for n in input_dim), True
    raise ValueError(
        f"`{name}` must be a positive integer (one field) or a non-empty list of "
        f"positive integers (the vocabulary size of each field); received {name}={input_dim!r}."
    )


def as_int_ids(inputs, layer_name: str | None = None) -> tf.Tensor:
    """Ids as an int32 or int64 tensor, what a gather takes: floats and booleans are cast to int32
    (as `keras.layers.Embedding` does), narrower integers too, unsigned 32- and 64-bit ones to int64
    (an id past int32 stays out of every vocabulary, for the range check to see). Strings, ragged
    and sparse tensors are refused with what to do instead."""
    who = f"layer '{layer_name}'" if layer_name else "an embedding layer"
    if isinstance(inputs, (tf.RaggedTensor, tf.SparseTensor)):
        raise TypeError(f"{who} takes dense ids; received a {type(inputs).__name__}: pad the sequences "
                        "(`ids.to_tensor()`, or `keras.utils.pad_sequences`) with an id of its own and build the "
                        "layer with `mask_zero=True` to pool over the real ones.")
    ids = tf.convert_to_tensor(inputs)
    if ids.dtype == tf.string:
        raise TypeError(f"{who} takes integer ids; received strings: map them to ids first "
                        "(`keras.layers.StringLookup` or `keras.layers.Hashing` before the layer).")
    if ids.dtype in (tf.int32, tf.int64):
        return ids
    if ids.dtype in (tf.uint32, tf.uint64):
        return tf.cast(ids, tf.int64)
    return tf.cast(ids, tf.int32)


def stack_columns(columns: Sequence[tf.Tensor]) -> tf.Tensor:
    """Per-field id tensors `[...]` stacked into `[..., n]` as integer ids (`as_int_ids`), at
    their common dtype (int64 when they differ: nothing wraps or is clipped here; a range check
    comes after)."""
    columns = [as_int_ids(c) for c in columns]
    if len({c.dtype for c in columns}) > 1:
        columns = [tf.cast(c, tf.int64) for c in columns]
    return tf.stack(columns, axis=-1)


def check_id_range(ids: tf.Tensor, low, high, layer_name: str, fields: dict) -> tf.Tensor:
    """`ids` after asserting `low <= ids < high` (per field along the last axis).

    One comparison in unsigned arithmetic (`uint(ids - low) < high - low`: a
    negative difference wraps to a huge value), so that the check costs four
    ops, not the eight of two `tf.debugging` asserts.
    """
    low, high = np.asarray(low), np.asarray(high)
    shifted = ids - tf.constant(low, ids.dtype) if np.any(low) else ids
    unsigned = tf.uint64 if ids.dtype.size > 4 else tf.uint32
    ok = tf.reduce_all(tf.cast(shifted, unsigned) < tf.constant(high - low, unsigned))
    check = tf.debugging.Assert(
        ok,
        [
            f"layer '{layer_name}': embedding ids must be >= 0 (>= the field's offset for global ids) and "
            f"< the field's vocabulary size; vocabulary sizes are {fields}"
        ],
    )
    with tf.control_dependencies([check]):
        return tf.identity(ids)


class FieldLayout:
    """Fields of one table: vocabularies, names, offsets, and how ids map to rows.

    Args:
        vocab_sizes: rows of each field, `n_f`.
        names: a name per field.
        multi_field: whether the last axis of the ids indexes fields (`[..., F]`).
        global_ids: whether ids arrive offset into the shared id space (a plain
            `Embedding` over several fields, `keras_embdim.layers.FieldOffsets`).

    Example:

    >>> layout = FieldLayout((3, 5), ("a", "b"), multi_field=True)
    >>> layout.offsets.tolist(), layout.num_rows
    ([0, 3], 8)
    >>> layout.rows(tf.constant([[2, 4]])).numpy().tolist()
    [[2, 7]]
    """

    def __init__(self, vocab_sizes: Sequence[int], names: Sequence[str], *, multi_field: bool,
                 global_ids: bool = False):
        self.vocab_sizes = tuple(int(n) for n in vocab_sizes)
        self.names = tuple(str(n) for n in names)
        if len(self.names) != len(self.vocab_sizes):
            raise ValueError(
                f"`field_names` must name each of the {len(self.vocab_sizes)} fields; received {list(names)!r}."
            )
        repeated = sorted({n for n in self.names if self.names.count(n) > 1})
        if repeated:
            raise ValueError(
                f"`field_names` must be distinct (a field's name is how exports, reports and id errors name it); "
                f"received {list(names)!r}, which repeats {repeated!r}."
            )
        self.multi_field = bool(multi_field)
        self.global_ids = bool(global_ids)
        self.offsets = field_offsets(self.vocab_sizes)

    @classmethod
    def from_input_dim(cls, input_dim: Any, field_names: Sequence[str] | None, single_name: str) -> "FieldLayout":
        """The layout of a layer built with `input_dim=n` (one field, named `single_name`)
        or `input_dim=[n_1, ..., n_F]` (fields `field_0`, ... unless `field_names`)."""
        vocab, multi = parse_vocab(input_dim)
        if field_names is None:
            field_names = [f"field_{i}" for i in range(len(vocab))] if multi else [single_name]
        return cls(vocab, field_names, multi_field=multi)

    @property
    def num_fields(self) -> int:
        return len(self.vocab_sizes)

    @property
    def num_rows(self) -> int:
        return int(sum(self.vocab_sizes))

    # ------------------------------------------------------------------- ids
    def check_axis(self, ids: tf.Tensor, layer_name: str) -> None:
        """Multi-field ids must be `[..., F]`: one column per field."""
        if not self.multi_field:
            return
        shape = ids.shape
        F = self.num_fields
        if shape.rank == 0 or (shape.rank is not None and shape[-1] is not None and shape[-1] != F):
            raise ValueError(
                f"layer '{layer_name}' embeds {F} fields: its ids must have shape [..., {F}] "
                f"(one column per field); received shape {tuple(shape)}."
            )

    def checked(self, inputs, layer_name: str, validate: bool = True) -> tf.Tensor:
        """Integer ids of the right shape, asserted inside their fields' ranges (training graph)."""
        ids = as_int_ids(inputs, layer_name)
        self.check_axis(ids, layer_name)
        if not validate:
            return ids
        fields = dict(zip(self.names, self.vocab_sizes))
        if self.global_ids:
            return check_id_range(ids, self.offsets, self.offsets + np.asarray(self.vocab_sizes), layer_name, fields)
        high = np.asarray(self.vocab_sizes if self.multi_field else self.vocab_sizes[0])
        return check_id_range(ids, 0, high, layer_name, fields)

    def local(self, ids: tf.Tensor) -> tf.Tensor:
        """Local ids per field (global ids made local)."""
        return ids - tf.constant(self.offsets, ids.dtype) if self.global_ids else ids

    def local_columns(self, columns: Sequence[tf.Tensor], layer_name: str) -> list[tf.Tensor]:
        """`local` for ids given as one tensor per field (multi-field layouts only)."""
        if not self.multi_field or len(columns) != self.num_fields:
            raise ValueError(f"layer '{layer_name}' embeds {self.num_fields} field(s) (multi_field="
                             f"{self.multi_field}): it takes one id tensor per field only as a multi-field "
                             f"layer; received {len(columns)}.")
        columns = [as_int_ids(c, layer_name) for c in columns]
        if not self.global_ids:
            return columns
        return [c - tf.constant(int(o), c.dtype) if o else c for c, o in zip(columns, self.offsets)]

    def rows(self, ids: tf.Tensor) -> tf.Tensor:
        """Rows of the concatenated table the ids look up."""
        if self.multi_field and not self.global_ids:
            return ids + tf.constant(self.offsets, ids.dtype)
        return ids

    def field_index(self, rows: tf.Tensor) -> tf.Tensor:
        """The field of every position: the last axis for multi-field ids, else 0."""
        if not self.multi_field:
            return tf.zeros_like(rows)
        return tf.broadcast_to(tf.range(self.num_fields, dtype=rows.dtype), tf.shape(rows))

    def field_of_rows(self, rows: tf.Tensor) -> tf.Tensor:
        """The field of arbitrary table rows (`[N]` int32)."""
        return tf.searchsorted(tf.constant(self.offsets.astype(np.int32)), rows, side="right") - 1

    # ---------------------------------------------------------------- arrays
    def split(self, per_row: np.ndarray) -> list[np.ndarray]:
        """A `[num_rows]` array as one array per field."""
        return [per_row[o : o + n] for o, n in zip(self.offsets, self.vocab_sizes)]

    def join(self, per_field) -> np.ndarray:
        """One array per field (or already `[num_rows]`) as one `[num_rows]` array."""
        if isinstance(per_field, (list, tuple)) and len(per_field) == self.num_fields and np.ndim(per_field[0]) == 1:
            return np.concatenate([np.asarray(s) for s in per_field])
        return np.asarray(per_field)
