"""Serving lookups of compacted layers, in standard TensorFlow ops only.

A compacted layer serves through one of these lookups (built by
`keras_embdim.export.compact.compact_layer`):

- `FieldLookup` (per-field masks): field f keeps `k_f` columns. Fields of the
  same kept width share one `[rows, k]` table variable, so a lookup is one row
  gather per distinct width (at most D), never an element gather.
- `ValueLookup` (per-value sizes): the packed layouts of
  `keras_embdim.export.layouts`; a lookup decodes each row's start and size
  and reads the rows (`layouts.prefix_rows`, or `layouts.ranged_rows`).
- `SplitLookup` (per-value sizes, some fields stored whole): a `FieldLookup`
  over the fields whose values nearly all keep the field's widest size (their
  rows padded to it: `keras_embdim.export.compact.dense_field_plan`) and a
  `ValueLookup` over the others.

Each has two outputs:

- `folded(ids) -> [batch, P]`: the kept values of every looked-up row side by
  side, in the lookup's own column order; `folded_codes(...)` says, for every
  column, which column of the padded output it is (its flat index within one
  example), so the exporter can select the matching rows of the `Dense` kernel
  that consumes them (`keras_embdim.export.fold`). Removed columns are not
  computed at all. `folded_fields(columns)` is the same from one id tensor per
  field (the inputs of a `StackFields` call): `FieldLookup` then stacks only
  the fields of each table into its rows (the id check alone reads all
  fields, stacked along a new first axis). `folded_parts` / `folded_fields_parts`
  give the same columns as pieces (`folded_part_widths` columns each) that are
  not concatenated: one for `FieldLookup` and `ValueLookup`, one per part for
  `SplitLookup`, whose parts the exporter multiplies by their own kernel rows.
- `padded(ids) -> [..., F, D]` (or `[..., D]`): the layer's own output shape,
  removed columns exact zeros, for consumers that need aligned columns (FM
  inner products, max or masked pooling over fields, attention).

Ids are checked by an `IdGuard`: `on_invalid_id="error"` fails the request
with a message naming the layer, the field, the bad id and the vocabulary
size; `"zero"` serves a zero vector for it and answers the rest;
`"unchecked"` builds no check, as Keras' own `Embedding` (an invalid id is
not detected: it reads another row, or fails in the gather when no row has
that index). `folded` and
`folded_fields` take `checked=True` when the caller knows every id is in its
field's range (the exporter, for ids straight from a `StringLookup` whose
vocabulary fits the field: `keras_embdim.export.fold`); no check is built then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import tensorflow as tf

from keras_embdim.export import layouts
from keras_embdim.fields import as_int_ids, stack_columns

INVALID_ID_POLICIES = ("error", "zero", "unchecked")


def check_invalid_id_policy(value: str) -> str:
    if value not in INVALID_ID_POLICIES:
        raise ValueError(f"`on_invalid_id` must be one of {INVALID_ID_POLICIES}; received on_invalid_id={value!r}.")
    return value


class IdGuard:
    """Checks a layer's local ids at serving time.

    Args:
        layer_name: for the error message.
        field_names: names of the fields (last axis of multi-field ids).
        vocab_sizes: vocabulary size of each field.
        multi_field: whether the last axis of the ids indexes fields.
        policy: `"error"`, `"zero"` or `"unchecked"` (see the module docstring).
    """

    def __init__(self, layer_name: str, field_names: Sequence[str], vocab_sizes: Sequence[int], multi_field: bool,
                 policy: str = "error"):
        self.layer_name = layer_name
        self.field_names = [str(n) for n in field_names]
        self.vocab_sizes = np.asarray(vocab_sizes, np.int64)
        self.multi_field = bool(multi_field)
        self.policy = check_invalid_id_policy(policy)

    def __call__(self, ids: tf.Tensor, checked: bool = False) -> tuple[tf.Tensor, tf.Tensor | None]:
        """`(int32 ids, valid)`; `valid` is a boolean mask like `ids` for `"zero"`, else None.
        `checked`: every id is known to be in its field's range, so nothing is built (nor
        under `"unchecked"`).

        `"error"` compares each field's largest id (its bits read as unsigned, so a negative
        id is the largest) with the field's vocabulary, as `check_stacked` does; only a
        failing request looks for the first bad id to name it."""
        ids = as_int_ids(ids)
        if checked or self.policy == "unchecked":
            return tf.cast(ids, tf.int32), None
        high = self.vocab_sizes if self.multi_field else self.vocab_sizes[:1].reshape(())
        if self.policy == "zero":
            in_range = _below(ids, high)
            return tf.cast(_zeroed(ids, in_range), tf.int32), in_range
        bits = _unsigned(ids)
        rank = ids.shape.rank
        if rank is None:  # the last axis is still the fields' (or there is no field axis)
            axes = tf.range(tf.rank(ids) - 1) if self.multi_field else None
        else:
            axes = list(range(rank - 1 if self.multi_field else rank))
        ok = tf.reduce_all(tf.reduce_max(bits, axis=axes) < tf.constant(high, bits.dtype))

        def fail(ids):
            with tf.control_dependencies([self._fail(ids, _below(ids, high))]):
                return tf.identity(ids)

        failing = _apart(fail)
        checked = tf.cond(ok, lambda: ids, lambda: failing(ids))
        return tf.cast(checked, tf.int32), None

    def check_stacked(self, ids: tf.Tensor, fields: np.ndarray) -> list:
        """The `"error"` check of the ids of every field, stacked on the first axis in the
        order `fields` (a permutation of the layer's fields; `[F, ...]`): the ids' bits read
        as unsigned (a bitcast, so a negative id is a huge value), each field's largest id
        (one reduction along each field's contiguous ids) against its vocabulary, and one
        `cond`; only a failing request computes the message, naming the first field (in
        field order) with a bad id and its largest bad id. Returns the check that whatever
        reads the ids must run after (`tf.control_dependencies`).

        The reduction first, then `F` comparisons: comparing every id with its field's
        vocabulary (broadcast along the batch) and reducing the `[F, N]` booleans took more
        op time than this one reduction along contiguous ids, from batch 512 on."""
        fields = np.asarray(fields, np.int64)
        if sorted(fields.tolist()) != list(range(len(self.vocab_sizes))):
            raise ValueError(f"`fields` must hold every field of layer '{self.layer_name}' once; "
                             f"received {fields.tolist()}.")
        bits = _unsigned(ids)
        unsigned, signed = bits.dtype, (tf.int64 if bits.dtype == tf.uint64 else tf.int32)
        largest = tf.reduce_max(bits, axis=list(range(1, ids.shape.rank)))  # [F], in stack order
        ok = tf.reduce_all(largest < tf.constant(self.vocab_sizes[fields], unsigned))

        def fail(largest):  # field order: the first field with a bad id
            bad = tf.gather(largest, np.argsort(fields))  # [F], in field order
            field = tf.cast(tf.where(bad >= tf.constant(self.vocab_sizes, unsigned))[0][0], tf.int32)
            value = tf.cast(tf.bitcast(tf.gather(bad, field), signed), tf.int64)
            with tf.control_dependencies([self._assert(field, value)]):
                return tf.constant(False)

        failing = _apart(fail)
        return [tf.cond(ok, lambda: tf.constant(True), lambda: failing(largest))]

    def replace_invalid(self, ids: tf.Tensor, fields: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
        """`"zero"`: `(ids, valid)` for the ids of `fields` on the last axis (`[..., n]`; the
        `[N]` ids of one field): invalid ids replaced by 0, `valid` marks the others."""
        vocab = self.vocab_sizes[np.asarray(fields, np.int64)]
        in_range = _below(ids, vocab if ids.shape.rank > 1 or len(vocab) > 1 else vocab[0])
        return _zeroed(ids, in_range), in_range

    def part(self, fields: np.ndarray) -> "IdGuard":
        """The guard of `fields` only (a `SplitLookup` part: the last axis of its ids holds
        those fields, in this order); a single-field layer's part is the layer's guard."""
        if not self.multi_field:
            return self
        fields = np.asarray(fields, np.int64)
        return IdGuard(self.layer_name, [self.field_names[f] for f in fields], self.vocab_sizes[fields], True,
                       self.policy)

    def _fail(self, ids: tf.Tensor, in_range: tf.Tensor) -> tf.Operation:
        """The assertion that fails a request, naming its first bad field and id."""
        where = tf.where(tf.logical_not(in_range))[0]  # the first bad position
        field = tf.cast(where[-1], tf.int32) if self.multi_field else tf.constant(0)
        return self._assert(field, tf.cast(tf.gather_nd(ids, where[None])[0], tf.int64))

    def _assert(self, field: tf.Tensor, value: tf.Tensor) -> tf.Operation:
        vocab = tf.strings.as_string(tf.gather(self.vocab_sizes, field))
        message = tf.strings.join([
            f'layer "{self.layer_name}": field "', tf.gather(self.field_names, field), '" received id ',
            tf.strings.as_string(value), ", outside its vocabulary of ", vocab, " ids [0, ", vocab, ").",
        ])
        return tf.debugging.Assert(tf.constant(False), [message])


def _apart(fn):
    """`fn` as a function of its own that the graph optimizer does not inline (`_noinline`): the
    failing branch of an id check is then one call op. Inlined, its ops (the message's where,
    gathers, string joins) sit in the serving graph, and every request, which takes the other
    branch, pays the executor's work of marking each of them dead. Eagerly, `fn` itself."""
    if tf.executing_eagerly():
        return fn
    return tf.function(fn, autograph=False, experimental_attributes={"_noinline": True})


def _zeroed(ids: tf.Tensor, in_range: tf.Tensor) -> tf.Tensor:
    """`"zero"`: the ids with the invalid ones replaced by 0 (a row every table has)."""
    return tf.where(in_range, ids, tf.zeros_like(ids))


def _unsigned(ids: tf.Tensor) -> tf.Tensor:
    """The ids' bits read as unsigned (a bitcast, no copy; ids narrower than 32 bits are cast to
    int32 first), so that a negative id is a huge value: one comparison checks both ends."""
    if ids.dtype.size < 4:
        ids = tf.cast(ids, tf.int32)
    unsigned = tf.uint64 if ids.dtype.size > 4 else tf.uint32
    return ids if ids.dtype == unsigned else tf.bitcast(ids, unsigned)


def _below(ids: tf.Tensor, high) -> tf.Tensor:
    """`0 <= ids < high` in one unsigned comparison (`_unsigned`)."""
    bits = _unsigned(ids)
    return bits < tf.constant(high, bits.dtype)


def placed(kept: tf.Tensor, codes: np.ndarray, size: int) -> tf.Tensor:
    """`[batch, size]` from the kept values `[batch, P]`: column `i` of `kept` goes to `codes[i]`
    (`folded_codes`; -1: nowhere), every other column is zero. One element gather per row from
    `[kept..., 0]`.

    Example:

    >>> placed(tf.constant([[1.0, 2.0, 3.0]]), np.array([3, -1, 0]), 4).numpy().tolist()
    [[3.0, 0.0, 0.0, 1.0]]
    """
    codes = np.asarray(codes, np.int64)
    place = np.full(size, codes.shape[0], np.int32)  # past the kept values: the zero column
    real = codes >= 0
    place[codes[real]] = np.flatnonzero(real)
    return tf.gather(tf.pad(kept, [[0, 0], [0, 1]]), place, axis=1)


def _check_columns(lookup, columns: Sequence) -> None:
    if not lookup.multi_field or len(columns) != lookup.num_fields:
        raise ValueError(f"`columns` must hold one id tensor per field of a multi-field layer; received "
                         f"{len(columns)} for {lookup.num_fields} field(s), multi_field={lookup.multi_field}.")


def _decode(rows: tf.Tensor, scales, index: tf.Tensor, dtype) -> tf.Tensor:
    """Stored values (float32, float16, int8) to `dtype`; int8 times its row's float16 scale."""
    rows = tf.cast(rows, dtype)
    if scales is not None:
        rows = rows * tf.cast(tf.gather(scales, index), dtype)[..., None]
    return rows


def _per_example(x: tf.Tensor, batch, inner: int) -> tf.Tensor:
    """`x` as `[batch, positions * inner]`: the width is given when the positions are
    static (so an empty batch keeps it; `-1` cannot be inferred from no elements)."""
    mid = x.shape[1:-2] if x.shape.rank is not None else None
    known = mid is not None and all(d is not None for d in mid)
    if known:  # a static shape: no shape ops in the serving graph
        return tf.reshape(x, [-1, int(np.prod(mid, dtype=np.int64)) * inner])
    return tf.reshape(x, tf.stack([batch, -1]))


def _jit(fn, variables):
    """`fn` XLA-compiled; XLA has no resource gathers, so the variables are read first."""
    compiled = tf.function(lambda ids, *values: fn(ids, values), jit_compile=True, autograph=False)
    return lambda ids: compiled(ids, *[tf.convert_to_tensor(v) for v in variables])


class _OnePart:
    """The folded output as one piece (`SplitLookup` gives one per part): the members
    `keras_embdim.export.fold` calls to multiply each piece by its own kernel rows."""

    def folded_parts(self, ids: tf.Tensor, checked: bool = False) -> list:
        """`[folded(ids, checked)]`: the pieces whose side-by-side concatenation is `folded`."""
        return [self.folded(ids, checked)]

    def folded_fields_parts(self, columns: Sequence[tf.Tensor], checked: bool = False) -> list:
        """`[folded_fields(columns, checked)]` (see `folded_parts`)."""
        return [self.folded_fields(columns, checked)]

    def folded_part_widths(self, positions: int) -> list:
        """Columns of each piece of `folded_parts` (they add up to `folded_codes(positions)`'s)."""
        return [int(self.folded_codes(positions).shape[0])]


@dataclass
class FieldGroup:
    """Fields stored in one `[rows, width]` table: each field's kept columns first, then zeros
    up to `width` (a field narrower than the group's width: `keras_embdim.export.compact.group_widths`)."""

    width: int
    fields: np.ndarray  # field indices, increasing
    columns: list  # per field of the group: its kept columns (increasing), at most `width`
    table: tf.Variable
    scales: tf.Variable | None = None  # int8: a float16 scale per row
    # rank-folded fields (`keras_embdim.export.compact.rank_fold`): per field of the group, None (its
    # stored values are its kept columns) or `[r, len(columns)]`: its kept values are its first r
    # stored values times this matrix (the field has fewer ids than kept columns, so rank <= ids)
    basis: list | None = None

    def stored_widths(self) -> list:
        """Stored (non-padding) columns of each field of the group."""
        return [len(cols) if b is None else int(b.shape[0])
                for cols, b in zip(self.columns, self.basis or [None] * len(self.columns))]

    def codes(self, output_dim: int) -> np.ndarray:
        """`f * D + j` of each table column, field by field; -1 for a padding column (always zero)."""
        if self.basis is not None and any(b is not None for b in self.basis):
            raise ValueError("a rank-folded group's columns are combinations of kept columns: use `expansion`.")
        return np.array([f * output_dim + j if i < len(cols) else -1
                         for f, cols in zip(self.fields, self.columns)
                         for i, j in enumerate(list(cols) + [0] * (self.width - len(cols)))], np.int64)

    def expansion(self, output_dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`(column, code, coefficient)` triples: table column `column` (field by field, as
        `codes`) contributes `coefficient` times its value to padded entry `code` (`f * D + j`).
        A plain column is one triple of coefficient 1; a padding column none."""
        out, start = [], 0
        for f, cols, b in zip(self.fields, self.columns, self.basis or [None] * len(self.columns)):
            cols = np.asarray(cols, np.int64)
            if b is None:
                out.append((start + np.arange(len(cols)), f * output_dim + cols, np.ones(len(cols))))
            else:
                rows, js = np.nonzero(b)
                out.append((start + rows, f * output_dim + cols[js], b[rows, js].astype(np.float64)))
            start += self.width
        return tuple(np.concatenate([o[i] for o in out] + [np.zeros(0, t)])
                     for i, t in enumerate((np.int64, np.int64, np.float64)))


class FieldLookup(_OnePart):
    """Serving lookup of a layer with per-field masks: one row gather per kept width.

    Args:
        num_fields, output_dim: F and D.
        groups: the `FieldGroup`s (fields that keep nothing are in none).
        row_offsets: `[F]` row of each field's id 0 in its group's table.
        multi_field: whether the last axis of the ids indexes fields.
        guard: the `IdGuard` of the layer.
        jit_compile: XLA-compile the lookup (TF Serving then needs
            `--xla_cpu_compilation_enabled=true`).
    """

    granularity = "field"
    layout = "field"

    def __init__(self, num_fields: int, output_dim: int, groups: list[FieldGroup], row_offsets: np.ndarray, *,
                 multi_field: bool, guard: IdGuard, jit_compile: bool = False):
        self.num_fields = int(num_fields)
        self.output_dim = int(output_dim)
        self.groups = groups
        self.multi_field = bool(multi_field)
        self.guard = guard
        self.row_offsets = np.asarray(row_offsets, np.int32)
        self.jit_compile = bool(jit_compile)
        self.kept_width = int(sum(g.width * len(g.fields) for g in groups))  # K: columns per lookup, padding included
        self.rank_folded = any(g.basis is not None and any(b is not None for b in g.basis) for g in groups)
        # code (f * D + j) of every column, in the order `_gather` puts them (-1: padding); a
        # rank-folded lookup's columns are combinations of kept columns instead (`folded_expansion`)
        self._codes = None if self.rank_folded else (
            np.concatenate([g.codes(output_dim) for g in groups]) if groups else np.zeros(0, np.int64))
        # fields in no group (they keep nothing) are still checked on the per-field path
        self._unkept = np.setdiff1d(np.arange(self.num_fields), np.concatenate([g.fields for g in groups] + [[]]))
        if self.jit_compile and groups:
            compiled = tf.function(lambda rows, valid, *values: self._gather_groups(rows, valid, values),
                                   jit_compile=True, autograph=False)
            self._gather_fn = lambda rows, valid: compiled(rows, valid, *[tf.convert_to_tensor(v) for v in self.variables])
        else:
            self._gather_fn = lambda rows, valid: self._gather_groups(rows, valid, None)

    @property
    def variables(self) -> list:
        return [v for g in self.groups for v in (g.table, g.scales) if v is not None]

    @property
    def table_variables(self) -> list:
        return list(self.variables)

    @property
    def resources(self) -> list:
        """Non-variable resources the lookup reads (none: every table is a variable)."""
        return []

    @property
    def dense_fields(self) -> list:
        """Per-value layers' fields stored whole (`SplitLookup`): none here."""
        return []

    @property
    def padding_params(self) -> int:
        """Zero entries stored to pad narrower fields into a wider table (`FieldGroup`)."""
        rows = {int(f): n for g in self.groups for f, n in zip(g.fields, self._field_rows(g))}
        return int(sum((g.width - w) * rows[int(f)] for g in self.groups for f, w in zip(g.fields, g.stored_widths())))

    @property
    def rank_saved_params(self) -> int:
        """Kept parameters not stored because their fields are rank-folded (`FieldGroup.basis`):
        a field of n ids keeping k > r columns stores n x r values, not n x k."""
        return int(sum((len(cols) - w) * n for g in self.groups
                       for cols, w, n in zip(g.columns, g.stored_widths(), self._field_rows(g))))

    def _field_rows(self, group: FieldGroup) -> list:
        """Rows of each field of `group` in its table (from the row offsets and the table's length)."""
        starts = [int(self.row_offsets[f]) for f in group.fields] + [int(group.table.shape[0])]
        return [b - a for a, b in zip(starts[:-1], starts[1:])]

    @property
    def nbytes(self) -> int:
        return int(sum(int(np.prod(v.shape)) * v.dtype.size for v in self.variables))

    def _split(self, ids: tf.Tensor, valid) -> tuple[list, list | None]:
        """`[N, *mid, F]` checked ids -> each group's table rows `[N, *mid, n_g]` (and valid masks)."""
        rows_all = ids + tf.constant(self.row_offsets) if self.row_offsets.any() else ids
        rows, valids = [], []
        for g in self.groups:
            if len(g.fields) == self.num_fields:
                pick = lambda x: x  # noqa: E731
            elif len(g.fields) == 1:
                f = int(g.fields[0])
                pick = lambda x, f=f: x[..., f : f + 1]  # noqa: E731
            else:
                pick = lambda x, fs=g.fields: tf.gather(x, fs, axis=-1)  # noqa: E731
            rows.append(pick(rows_all))
            valids.append(pick(valid) if valid is not None else None)
        return rows, (valids if valid is not None else None)

    def _gather_groups(self, rows: list, valid, values) -> tf.Tensor:
        """Each group's table rows `[N, *mid, n_g]` -> `[N, prod(mid) * K]` kept values.

        `valid` (the `"zero"` policy) zeroes the rows of invalid ids; `values`
        are the tables read for XLA, or None to gather from the variables.
        """
        tables = iter(values) if values is not None else None
        unknown = any(r.shape.rank is None or any(d is None for d in r.shape[1:-1]) for r in rows)
        batch = tf.shape(rows[0])[0] if unknown else None  # only for unknown shapes
        pieces = []
        for i, (g, r) in enumerate(zip(self.groups, rows)):
            table = next(tables) if tables is not None else g.table
            scales = (next(tables) if tables is not None else g.scales) if g.scales is not None else None
            out = _decode(tf.gather(table, r), scales, r, tf.float32)  # [N, *mid, n_g, w]
            if valid is not None:
                out = out * tf.cast(valid[i], out.dtype)[..., None]
            pieces.append(out if out.shape.rank == 2 else _per_example(out, batch, len(g.fields) * g.width))
        return pieces[0] if len(pieces) == 1 else tf.concat(pieces, axis=-1)

    def _checked(self, ids, checked: bool = False):
        ids, valid = self.guard(ids, checked)
        if not self.multi_field:
            ids = ids[..., None]
            valid = valid[..., None] if valid is not None else None
        return ids, valid

    def folded(self, ids: tf.Tensor, checked: bool = False) -> tf.Tensor:
        """`[batch, P]`: the kept values of every lookup of an example (see `folded_codes`);
        `checked`: every id is known to be in its field's range (module docstring)."""
        ids, valid = self._checked(ids, checked)
        if not self.kept_width:
            return tf.zeros(tf.stack([tf.shape(ids)[0], 0]), tf.float32)
        return self._gather_fn(*self._split(ids, valid))

    def folded_fields(self, columns: Sequence[tf.Tensor], checked: bool = False) -> tf.Tensor:
        """`folded` of the ids `stack_columns(columns)` (`columns[f]`: field f's ids `[N, *mid]`).

        One id tensor per field, as a `StackFields` call receives them. Each
        width group stacks its own fields' ids into its table rows (`[N, *mid,
        n_g]`, shifted by the fields' row offsets; a one-field group's `[N]`
        ids are its table rows as they came), so no selection from a stack of
        all fields and no transpose is computed. Under `"error"` the ids of
        all fields are checked at once (`IdGuard.check_stacked`, on their
        stack along a new first axis: each field's ids copied whole), before
        any table is read; fields that keep nothing are checked too. Under
        `"zero"` each group replaces its own invalid ids; with `checked`
        (every id known to be in range) neither runs. Int64 ids are gathered
        as they are, never clipped to int32 first.
        """
        _check_columns(self, columns)
        columns = [as_int_ids(c) for c in columns]
        if any(c.shape.rank is None for c in columns):
            return self.folded(stack_columns(columns), checked)
        # gather indices are int32 or int64: other integer ids (int16, uint32, ...) become int64, as do
        # columns of different dtypes
        if len({c.dtype for c in columns}) > 1 or columns[0].dtype not in (tf.int32, tf.int64):
            columns = [tf.cast(c, tf.int64) for c in columns]
        checks, valid = [], None
        if self.guard.policy == "error" and not checked:
            order = np.concatenate([g.fields for g in self.groups] + [self._unkept])
            checks = self.guard.check_stacked(tf.stack([columns[f] for f in order], axis=0), order)
        if not self.kept_width:
            with tf.control_dependencies(checks):
                return tf.zeros(tf.stack([tf.shape(columns[0])[0], 0]), tf.float32)
        rows = []
        for g in self.groups:
            part = [columns[f] for f in g.fields]
            rows.append(part[0] if len(part) == 1 and part[0].shape.rank == 1 else tf.stack(part, axis=-1))
        if self.guard.policy == "zero" and not checked:
            rows, valid = zip(*[self.guard.replace_invalid(r, g.fields) for r, g in zip(rows, self.groups)])
        rows = [r + tf.constant(self.row_offsets[g.fields], r.dtype) if self.row_offsets[g.fields].any() else r
                for r, g in zip(rows, self.groups)]  # a one-field group's offset is 0
        with tf.control_dependencies(checks):  # the reads wait for the ids' check
            return self._gather_fn(rows, list(valid) if valid is not None else None)

    def folded_part_widths(self, positions: int) -> list:
        """Columns of `folded` for examples of `positions` lookups each (one piece)."""
        return [positions * self.kept_width]

    def folded_expansion(self, positions: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`(column, code, coefficient)`: `folded` column `column` contributes `coefficient` times
        its value to padded entry `code` (as in `folded_codes`) for examples of `positions`
        lookups each; for a lookup that is not rank-folded, `folded_codes` as triples of
        coefficient 1."""
        out, start = [], 0
        F, D = self.num_fields, self.output_dim
        for g in self.groups:  # `_gather_groups`' order: group by group, then position by position
            col, code, coef = g.expansion(D)
            size = g.width * len(g.fields)
            for p in range(positions):
                out.append((start + p * size + col, p * F * D + code, coef))
            start += positions * size
        return tuple(np.concatenate([o[i] for o in out] + [np.zeros(0, t)])
                     for i, t in enumerate((np.int64, np.int64, np.float64)))

    def folded_codes(self, positions: int) -> np.ndarray:
        """Code of every `folded` column for examples of `positions` lookups each:
        `(position * F + f) * D + j` (the flat index in the padded `[positions, F, D]`
        output of one example), -1 for a padding column (always zero); for a
        single-field layer F = 1. A rank-folded lookup has none (`folded_expansion`)."""
        if self.rank_folded:
            raise ValueError("a rank-folded lookup's columns are combinations of kept columns: use "
                             "`folded_expansion`.")
        out = []
        for g in self.groups:  # `_gather_groups`' order: group by group, then position by position
            codes = g.codes(self.output_dim)[None, :]
            at = np.arange(positions)[:, None] * self.num_fields * self.output_dim + codes
            out.append(np.where(codes >= 0, at, -1).reshape(-1))
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def padded(self, ids: tf.Tensor, dtype=tf.float32, checked: bool = False) -> tf.Tensor:
        """`[..., F, D]` (multi-field) or `[..., D]`: removed columns exact zeros; `checked` as in `folded`."""
        ids = tf.convert_to_tensor(ids)
        shape = tf.shape(ids)
        flat = tf.reshape(ids, [-1, self.num_fields] if self.multi_field else [-1])
        checked, valid = self._checked(flat, checked)
        F, D = self.num_fields, self.output_dim
        if not self.kept_width:
            out = tf.zeros(tf.stack([tf.shape(checked)[0], F * D]), dtype)
        else:
            kept = self._gather_fn(*self._split(checked, valid))  # [N, K]
            if self.rank_folded:  # each column's combination of kept columns, one small matmul
                col, code, coef = self.folded_expansion(1)
                expand = np.zeros((self.kept_width, F * D), np.float32)
                np.add.at(expand, (col, code), coef)
                out = tf.cast(tf.matmul(kept, tf.constant(expand)), dtype)
            else:
                out = tf.cast(placed(kept, self._codes, F * D), dtype)
        tail = [F, D] if self.multi_field else [D]
        lead = shape[:-1] if self.multi_field else shape
        return tf.reshape(out, tf.concat([lead, tail], 0))


class ValueLookup(_OnePart):
    """Serving lookup of a layer with per-value sizes (`keras_embdim.export.layouts`).

    Args:
        packed: the layer's `layouts.PackedTable` (all its fields), its arrays
            as variables.
        field_widths: `[F]` largest size of each field.
        multi_field: whether the last axis of the ids indexes fields.
        guard: the `IdGuard` of the layer.
        jit_compile: XLA-compile the lookup (the static-shape `layouts.prefix_rows`
            path): TF Serving then needs `--xla_cpu_compilation_enabled=true`.
        read: without XLA, how rows are read once their starts and sizes are
            known: `"auto"` (`layouts.reads_ranged`: ranged for the head layout's
            other rows, else prefix), `"prefix"` (`layouts.prefix_rows`, `N x width`
            element reads) or `"ranged"` (`layouts.ranged_rows`, only the kept values plus the
            ragged ops' fixed cost).
    """

    granularity = "value"

    def __init__(self, packed: layouts.PackedTable, arrays: dict, field_widths: np.ndarray, *, multi_field: bool,
                 guard: IdGuard, jit_compile: bool = False, read: str = "auto"):
        self.layout = packed.layout
        self.meta = packed.meta
        self.field_starts = packed.field_starts
        self.output_dim = packed.output_dim
        self.num_fields = len(packed.field_starts)
        self.arrays = arrays
        self.kept = packed.kept
        self.multi_field = bool(multi_field)
        self.guard = guard
        self.field_widths = np.asarray(field_widths, np.int64)
        self.width = int(self.field_widths.max(initial=0))  # folded rows are padded to the widest field only
        self.jit_compile = bool(jit_compile)
        self.read = layouts.check_read(read)
        self._ranged = layouts.reads_ranged(read, self.layout)
        # the head layout's keyed rows -> places / starts, filled from its keys when the SavedModel loads
        self.index = layouts.lookup_index(arrays, self.meta)
        if self.jit_compile:  # XLA: static shapes, full-width rows (`layouts.prefix_rows`)
            names = list(arrays)
            self._compiled = _jit(lambda g, values: self._rows_from(g, dict(zip(names, values)), self.output_dim, False),
                                  [arrays[n] for n in names])

    @property
    def variables(self) -> list:
        return list(self.arrays.values())

    @property
    def resources(self) -> list:
        """Non-variable resources the lookup reads: the head layout's hash table (`layouts.lookup_index`)."""
        return [self.index] if self.index is not None else []

    @property
    def dense_fields(self) -> list:
        """Fields stored whole (`SplitLookup`): none, every field is packed."""
        return []

    @property
    def padding_params(self) -> int:
        """No padding: a per-value layout's overhead is its index (`layouts.PackedTable.overhead`)."""
        return 0

    @property
    def rank_saved_params(self) -> int:
        """0: rank folding (`FieldLookup.rank_saved_params`) is for per-field tables."""
        return 0

    @property
    def nbytes(self) -> int:
        return int(sum(int(np.prod(v.shape)) * v.dtype.size for v in self.variables))

    def _rows_from(self, g: tf.Tensor, arrays: dict, width: int, ranged: bool) -> tf.Tensor:
        rows = layouts.read_rows(arrays, g, width, ranged=ranged, static=self.jit_compile, index=self.index,
                                 **self.meta)
        return _decode(rows, arrays.get("scales"), g, tf.float32)

    def _lookup_rows(self, ids: tf.Tensor, width: int,
                     checked: bool = False) -> tuple[tf.Tensor, tf.Tensor | None]:
        """`[N, width]` rows of the flattened checked ids, and the flat valid mask."""
        ids, valid = self.guard(ids, checked)
        g = ids + tf.constant(self.field_starts) if self.multi_field else ids
        g = tf.reshape(g, [-1])
        if self.jit_compile:
            rows = self._compiled(g)[:, :width]
        else:
            rows = self._rows_from(g, self.arrays, width, self._ranged)
        if valid is not None:
            rows = rows * tf.cast(tf.reshape(valid, [-1]), rows.dtype)[:, None]
        return rows, ids

    def folded(self, ids: tf.Tensor, checked: bool = False) -> tf.Tensor:
        """`[batch, P]`: every lookup's first `width` columns (the widest field's size);
        `checked`: every id is known to be in its field's range (module docstring)."""
        rows, ids = self._lookup_rows(ids, self.width, checked)
        if not self.width:  # every value keeps nothing: no columns (a reshape could not infer the batch)
            return tf.zeros(tf.stack([tf.shape(ids)[0], 0]), tf.float32)
        ids = ids if self.multi_field else ids[..., None]  # [batch, *mid, F]
        shaped = tf.reshape(rows, tf.concat([tf.shape(ids), [self.width]], 0))
        return _per_example(shaped, tf.shape(ids)[0], self.num_fields * self.width)

    def folded_fields(self, columns: Sequence[tf.Tensor], checked: bool = False) -> tf.Tensor:
        """`folded(stack_columns(columns), checked)`: int64 ids stacked as they are, checked by
        the guard, never clipped to int32 first (see `FieldLookup.folded_fields`)."""
        _check_columns(self, columns)
        return self.folded(stack_columns(columns), checked)

    def folded_codes(self, positions: int) -> np.ndarray:
        """As `FieldLookup.folded_codes`; columns past a field's widest value are -1 (always zero)."""
        F, D, W = self.num_fields, self.output_dim, self.width
        f = np.arange(F)[:, None]
        j = np.arange(W)[None, :]
        codes = np.where(j < self.field_widths[:, None], f * D + j, -1)  # [F, W]
        pos = np.arange(positions)[:, None, None] * F * D
        return np.where(codes[None] >= 0, pos + codes[None], -1).reshape(-1)

    def padded(self, ids: tf.Tensor, dtype=tf.float32, checked: bool = False) -> tf.Tensor:
        """`[..., F, D]` (multi-field) or `[..., D]`: each value's prefix, then zeros; `checked` as in `folded`."""
        ids = tf.convert_to_tensor(ids)
        rows, _ = self._lookup_rows(ids, self.output_dim, checked)
        return tf.reshape(tf.cast(rows, dtype), tf.concat([tf.shape(ids), [self.output_dim]], 0))


class SplitLookup:
    """Serving lookup of a per-value layer whose fields are served by parts: the fields stored
    whole in per-field tables (a `FieldLookup`, `keras_embdim.export.compact.dense_field_plan`)
    and the packed rest (a `ValueLookup`).

    Each part sees its own fields (the last axis of its ids holds them in its order); under
    `"error"` the ids of all fields are checked once, here, and the parts read unchecked
    ids; under `"zero"` each part replaces its own invalid ids. The folded output is the
    parts' side by side (their `folded_codes` mapped to the layer's fields); the padded one
    puts each part's fields back in the layer's field order.

    Args:
        parts: `(lookup, fields)` pairs; together the fields are the layer's, each once.
        num_fields, output_dim: F and D of the layer.
        guard: the `IdGuard` of the layer.
        value_padding: zero entries the `FieldLookup` parts store past their rows' sizes
            (a whole-stored field's rows padded to its widest size).
    """

    granularity = "value"

    def __init__(self, parts: list, num_fields: int, output_dim: int, *, guard: IdGuard, value_padding: int = 0):
        self.value_padding = int(value_padding)
        self.parts = [(lookup, np.asarray(fields, np.int64)) for lookup, fields in parts]
        self.num_fields = int(num_fields)
        self.output_dim = int(output_dim)
        self.guard = guard
        self.multi_field = guard.multi_field
        order = np.concatenate([f for _, f in self.parts])
        if sorted(order.tolist()) != list(range(self.num_fields)):
            raise ValueError(f"`parts` must hold every field of the layer once; received {order.tolist()}.")
        self._back = np.argsort(order)  # place of each layer field among the parts' fields
        self.layout = "+".join(lookup.layout for lookup, _ in self.parts)

    @property
    def variables(self) -> list:
        return [v for lookup, _ in self.parts for v in lookup.variables]

    @property
    def resources(self) -> list:
        return [r for lookup, _ in self.parts for r in lookup.resources]

    @property
    def padding_params(self) -> int:
        """Zero entries the whole-stored fields hold: past their rows' sizes, and to share a table."""
        return self.value_padding + int(sum(lookup.padding_params for lookup, _ in self.parts))

    @property
    def rank_saved_params(self) -> int:
        """The parts' (`FieldLookup.rank_saved_params`)."""
        return int(sum(lookup.rank_saved_params for lookup, _ in self.parts))

    @property
    def nbytes(self) -> int:
        return int(sum(lookup.nbytes for lookup, _ in self.parts))

    @property
    def dense_fields(self) -> list:
        """Names of the fields stored whole (in per-field tables)."""
        return [self.guard.field_names[f] for lookup, fields in self.parts if lookup.layout == "field"
                for f in fields]

    def _columns(self, ids: tf.Tensor, fields: np.ndarray) -> tf.Tensor:
        if not self.multi_field:
            return ids
        if len(fields) == self.num_fields and (fields == np.arange(self.num_fields)).all():
            return ids
        return tf.gather(ids, fields, axis=-1)

    def _checked(self, ids: tf.Tensor, checked: bool) -> tuple[tf.Tensor, bool]:
        """`(ids, checked)` for the parts: `"error"` checks all fields here once."""
        if checked or self.guard.policy != "error":
            return ids, checked
        return self.guard(ids)[0], True

    def folded(self, ids: tf.Tensor, checked: bool = False) -> tf.Tensor:
        """`[batch, P]`: the parts' folded outputs side by side (see `folded_codes`)."""
        return _side_by_side(self.folded_parts(ids, checked))

    def folded_parts(self, ids: tf.Tensor, checked: bool = False) -> list:
        """The parts' folded outputs, one `[batch, P_i]` tensor per part, not concatenated: the
        exporter multiplies each by its own rows of the Dense kernel (`keras_embdim.export.fold`),
        so the request pays no copy of every kept value into one tensor."""
        ids, checked = self._checked(tf.convert_to_tensor(ids), checked)
        return [lookup.folded(self._columns(ids, f), checked) for lookup, f in self.parts]

    def folded_part_widths(self, positions: int) -> list:
        """Columns of each piece of `folded_parts` (part by part, as `folded_codes` orders them)."""
        return [int(lookup.folded_codes(positions).shape[0]) for lookup, _ in self.parts]

    def folded_fields(self, columns: Sequence[tf.Tensor], checked: bool = False) -> tf.Tensor:
        """`folded(stack_columns(columns), checked)`, each part stacking its own fields' columns."""
        return _side_by_side(self.folded_fields_parts(columns, checked))

    def folded_fields_parts(self, columns: Sequence[tf.Tensor], checked: bool = False) -> list:
        """`folded_parts(stack_columns(columns), checked)`, each part stacking its own fields' columns."""
        _check_columns(self, columns)
        columns = [as_int_ids(c) for c in columns]
        if any(c.shape.rank is None for c in columns):
            return self.folded_parts(stack_columns(columns), checked)
        checks = []
        if self.guard.policy == "error" and not checked:
            if len({c.dtype for c in columns}) > 1:
                columns = [tf.cast(c, tf.int64) for c in columns]
            checks = self.guard.check_stacked(tf.stack(columns, axis=0), np.arange(self.num_fields))
            checked = True
        with tf.control_dependencies(checks):  # the reads wait for the ids' check
            return [lookup.folded_fields([columns[i] for i in f], checked) for lookup, f in self.parts]

    def folded_codes(self, positions: int) -> np.ndarray:
        """As `FieldLookup.folded_codes`, part by part, each part's fields mapped to the layer's."""
        F, D = self.num_fields, self.output_dim
        out = []
        for lookup, fields in self.parts:
            codes = lookup.folded_codes(positions)
            n = len(fields)
            pos, rest = np.divmod(np.maximum(codes, 0), n * D)
            f, j = np.divmod(rest, D)
            out.append(np.where(codes >= 0, (pos * F + fields[f]) * D + j, -1))
        return np.concatenate(out)

    def padded(self, ids: tf.Tensor, dtype=tf.float32, checked: bool = False) -> tf.Tensor:
        """`[..., F, D]` (multi-field) or `[..., D]`: each value's prefix, then zeros."""
        ids = tf.convert_to_tensor(ids)
        if not self.multi_field:
            return self.parts[0][0].padded(ids, dtype, checked)
        ids, checked = self._checked(ids, checked)
        pieces = [lookup.padded(self._columns(ids, f), dtype, checked) for lookup, f in self.parts]
        if len(pieces) == 1:  # one part holds every field, in the layer's order
            return pieces[0]
        return tf.gather(tf.concat(pieces, axis=-2), self._back, axis=-2)  # part by part, back to field order


def _side_by_side(pieces: list) -> tf.Tensor:
    return pieces[0] if len(pieces) == 1 else tf.concat(pieces, axis=-1)
