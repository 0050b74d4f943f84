"""Compaction: from a searchable layer's table and mask to the tables that ship.

`compact_layer(layer)` reads the layer's table variable a bounded number of
rows at a time (`keras_embdim.rows`) and builds its serving lookup
(`keras_embdim.export.lookup`):

- per-field masks: field f's kept columns, `[n_f, k_f]`, go into the table of
  its width (fields of one width share one variable, filled by row scatters;
  a field may be padded with zero columns into a wider table while the padding
  stays within 1 % of the kept bytes, `group_widths`: fewer tables, fewer ops
  per request); the bytes are the kept parameters x the storage size, plus
  that padding;
- per-value sizes: the fields whose values nearly all keep the field's widest
  size are stored whole, like per-field tables (each row's prefix, zeros after
  it: `dense_field_plan`); every other row's kept prefix goes into the packed
  `values` of `keras_embdim.export.layouts` (the layout's index is built from
  the sizes of those rows only).

No whole-table numpy copy is made and, for float32 exports, no reference copy
either: the export's own memory is the compact tables plus one chunk. For
float16 / int8 exports `CompactLayer.stored_values()` swaps the stored values
into the layer's table for verification (and back): only the kept entries'
float32 originals are kept for that.
"""

from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from keras_embdim import _utils, rows as row_ops
from keras_embdim.export import layouts, quantize
from keras_embdim.export.lookup import FieldGroup, FieldLookup, IdGuard, SplitLookup, ValueLookup
from keras_embdim.fields import field_offsets
from keras_embdim.mask import size_dtype
from keras_embdim.validation import check_bool

_STORE = {"float32": np.float32, "float16": np.float16, "int8": np.int8}


@dataclass
class CompactLayer:
    """A layer's serving lookup and what verification needs to run it at stored precision."""

    layer: Any
    lookup: FieldLookup | ValueLookup | SplitLookup
    table_dtype: str
    # quantized exports: per (row range, kept-entry selector) the float32 originals and the stored values
    _swaps: list = field(default_factory=list, repr=False)

    @property
    def nbytes(self) -> int:
        return self.lookup.nbytes

    @property
    def variables(self) -> list:
        return self.lookup.variables

    @property
    def resources(self) -> list:
        """Non-variable resources the lookup reads (the head layout's hash table)."""
        return self.lookup.resources

    @contextlib.contextmanager
    def stored_values(self):
        """While inside, the layer's table holds the values the export serves (float16 or int8
        rounded); the float32 originals are put back on exit, whatever happens."""
        table = self.layer.embedding_variable
        try:
            for start, stop, select, _, stored in self._swaps:
                current = row_ops.read_rows(table, start, stop)
                current[select] = stored
                row_ops.assign_rows(table, start, stop, current)
            yield
        finally:
            for start, stop, select, original, _ in self._swaps:
                current = row_ops.read_rows(table, start, stop)
                current[select] = original
                row_ops.assign_rows(table, start, stop, current)


def compact_layer(
    layer: Any,
    *,
    value_layout: str = "auto",
    value_read: str = "auto",
    jit_compile: bool = False,
    table_dtype: str = "float32",
    on_invalid_id: str = "error",
    value_dense_fields: bool = True,
) -> CompactLayer:
    """The serving lookup of a searchable layer: per-field or per-value compaction.

    Args:
        layer: a searchable layer (anything `find_searchable_layers` returns).
        value_layout: per-value sizes only: the `layouts` layout, `"auto"` (the
            fastest within 1.10 x the kept bytes), `"head"` (not with `jit_compile`),
            `"offsets"`, `"runs"`, `"planes"` or `"sparse"`.
        value_read: per-value sizes only: `"auto"`, `"prefix"` or `"ranged"` (`ValueLookup`).
        jit_compile: XLA-compile the lookup (see `FieldLookup`, `ValueLookup`).
        table_dtype: storage of the kept values: `"float32"`, `"float16"`, or
            `"int8"` with a float16 scale per row (`keras_embdim.export.quantize`).
        on_invalid_id: `"error"`, `"zero"` or `"unchecked"` (`keras_embdim.export.lookup.IdGuard`).
        value_dense_fields: per-value sizes only: store the fields whose rows nearly all have
            the field's widest size whole, in per-field tables (`dense_field_plan`); False
            packs every field.
    """
    quantize.check_dtype(table_dtype)
    layouts.check_read(value_read)
    check_bool("value_dense_fields", value_dense_fields)
    mask = layer.dimension_mask()
    guard = IdGuard(layer.name, mask.field_names, mask.vocab_sizes, layer.multi_field, on_invalid_id)
    if mask.granularity == "value":
        return _compact_values(layer, mask, guard, value_layout, value_read, jit_compile, table_dtype,
                               value_dense_fields)
    return _compact_fields(layer, mask, guard, jit_compile, table_dtype)


PADDING_SLACK = 0.01  # per-field tables: padding allowed, as a share of the kept bytes, to serve fewer tables


def group_widths(widths: np.ndarray, rows: np.ndarray, slack: float = PADDING_SLACK) -> np.ndarray:
    """The table width each field is stored at: its kept width, or a wider group's.

    A served lookup costs a few ops per table (one table per distinct width),
    which dominate at small batches; a field is padded with zero columns into
    the next wider table while the padding stays within `slack` x the kept
    values: small-vocabulary fields join a wider table for free. Greedy: the
    merge that pads the fewest entries first.

    Args:
        widths: `[F]` kept columns per field (0: the field keeps nothing).
        rows: `[F]` vocabulary sizes.
        slack: padding allowed, as a share of the kept entries.

    Example:

    >>> group_widths(np.array([2, 3, 5, 0]), np.array([10, 1000, 1000, 7])).tolist()
    [3, 3, 5, 0]
    """
    widths, rows = np.asarray(widths, np.int64), np.asarray(rows, np.int64)
    to = widths.copy()
    allowed = slack * float(widths @ rows)
    spent = 0.0
    while True:
        groups = sorted(set(to[to > 0].tolist()))
        if len(groups) < 2:
            return to
        # merging group i into group i + 1 pads each of its rows by the difference of the widths
        extra = [(groups[i + 1] - groups[i]) * int(rows[to == groups[i]].sum()) for i in range(len(groups) - 1)]
        i = int(np.argmin(extra))
        if spent + extra[i] > allowed:
            return to
        spent += extra[i]
        to[to == groups[i]] = groups[i + 1]


DENSE_FIELD_SLACK = 0.10  # per-value layers: a field is stored whole when that pads it by at most this share


def dense_field_plan(value_sizes: list, output_dim: int, *, layout: str = "auto", static: bool = False,
                     max_overhead: float = 1.10) -> np.ndarray:
    """Which fields of a per-value layer are stored whole (`[F]` booleans): every row of such a
    field padded with zeros to the field's widest size, the fields in per-field tables
    (`FieldLookup`: a plain row gather per table, no index); the other fields' rows are packed
    (`keras_embdim.export.layouts`).

    A per-value search often gives nearly every value of a small field the same size (a field of
    a few hundred frequent values, all at the widest size): packing those rows only adds index
    work to a large share of the lookups (one per example and field). A field is a candidate when
    storing it whole pads it by at most `DENSE_FIELD_SLACK` x its own kept values (a field that
    keeps nothing is one: its table is empty); the candidates are stored whole while the layer's
    bytes (their tables, `group_widths` padding included, plus the packed layout of the other
    fields) stay within `max_overhead` x the kept bytes, else the candidate that pads most is
    packed again, and so on.

    Args:
        value_sizes: per field, `[V_f]` kept size of each of its values.
        output_dim: D.
        layout: the packed fields' layout (`"auto"`: `layouts.choose_layout`).
        static: an XLA-compiled lookup (`choose_layout(static=True)`).
        max_overhead: bytes allowed, as a multiple of the kept values x 4 B.

    Example:

    >>> dense_field_plan([np.full(50, 16), np.r_[np.ones(990), np.full(10, 16)]], 16).tolist()
    [True, False]
    """
    return _dense_plan(value_sizes, output_dim, layout, static, max_overhead)[0]


def _dense_plan(value_sizes, output_dim, layout, static, max_overhead=1.10) -> tuple[np.ndarray, str | None]:
    """`(dense_field_plan(...), the packed fields' layout as weighed there)`; the layout is None
    when no candidate was weighed (`layout` stays to be chosen on the packed rows)."""
    # integers as they are (a mask's int32: no int64 copy of every row's size)
    sizes = [s if np.issubdtype(s.dtype, np.integer) else s.astype(np.int64) for s in map(np.asarray, value_sizes)]
    vocab = np.array([s.shape[0] for s in sizes], np.int64)
    widths = np.array([int(s.max(initial=0)) for s in sizes], np.int64)
    kept = np.array([int(s.sum(dtype=np.int64)) for s in sizes], np.int64)
    pad = vocab * widths - kept
    dense = pad <= DENSE_FIELD_SLACK * kept
    limit = max_overhead * 4 * int(kept.sum())
    name = None
    while dense.any():
        whole = group_widths(widths[dense], vocab[dense]) @ vocab[dense]
        rest = ~dense
        packed, name = 0, None
        if rest.any():
            rest_sizes = _joined(sizes, np.flatnonzero(rest), output_dim)
            if layout == "auto":  # one pass over the rows: the choice and its bytes
                name, nbytes = layouts.layout_choice(rest_sizes, output_dim, max_overhead, static)
            else:
                name, nbytes = layout, layouts.layout_bytes(rest_sizes, output_dim, max_overhead)
            packed = nbytes[name]
        if 4 * int(whole) + packed <= limit:
            return dense, name
        ratio = np.where(dense, pad / np.maximum(kept, 1), -1.0)
        dense[int(np.argmax(ratio))] = False
    return dense, None


def _compact_fields(layer, mask, guard, jit_compile, table_dtype) -> CompactLayer:
    fields = np.arange(mask.num_fields)
    groups, row_offsets, swaps = _field_groups(layer.embedding_variable, mask, fields,
                                               [mask.kept_columns(f) for f in fields], table_dtype)
    lookup = FieldLookup(mask.num_fields, mask.output_dim, groups, row_offsets, multi_field=layer.multi_field,
                         guard=guard, jit_compile=jit_compile)
    return CompactLayer(layer, lookup, table_dtype, swaps)


def _stored_widths(mask, fields: np.ndarray, columns: list, bases: list | None, slack: float) -> np.ndarray:
    """The table width of each of `fields` (`group_widths` of what each stores: its kept columns,
    or its rank where `bases[i]` is not None)."""
    bases = bases if bases is not None else [None] * len(fields)
    widths = np.array([len(c) if b is None else b.shape[0] for c, b in zip(columns, bases)], np.int64)
    return group_widths(widths, np.asarray(mask.vocab_sizes, np.int64)[fields], slack)


def _field_groups(table, mask, fields: np.ndarray, columns: list, table_dtype: str, sizes: list | None = None,
                  bases: list | None = None, slack: float = PADDING_SLACK, reuse: dict | None = None):
    """`(groups, row_offsets, swaps)`: the `FieldGroup`s of `fields` (of the layer's table, in this
    order: field i of the lookup is `fields[i]`), each field keeping `columns[i]`, filled from the
    table a chunk of rows at a time. `sizes` (per-value layers, `dense_field_plan`): each row of
    `fields[i]` keeps only its first `sizes[i][row]` of `columns[i]` (zeros after them). `bases`
    (float32 only, `rank_fold`): per field None, or `[r, len(columns[i])]` with orthonormal rows:
    the field stores its kept values times its transpose (r values per row). `slack`: `group_widths`'.
    `reuse` (float32, `rank_fold`): width -> a `FieldGroup` already holding exactly the fields of
    that width in this order, kept as it is (not read again)."""
    offsets = field_offsets(mask.vocab_sizes)
    vocab = np.asarray(mask.vocab_sizes, np.int64)[fields]
    bases = bases if bases is not None else [None] * len(fields)
    stored_widths = _stored_widths(mask, fields, columns, bases, slack)
    store = _STORE[table_dtype]
    row_offsets = np.zeros(len(fields), np.int32)
    groups, swaps = [], []
    for width in sorted(set(int(w) for w in stored_widths if w > 0)):
        members = np.flatnonzero(stored_widths == width)
        if reuse and width in reuse:
            if not np.array_equal(reuse[width].fields, members) or table_dtype != "float32":
                raise ValueError(f"the table of width {width} to reuse holds fields {reuse[width].fields.tolist()}, "
                                 f"not {members.tolist()}.")
            row_offsets[members] = np.cumsum(np.r_[0, vocab[members][:-1]])
            groups.append(reuse[width])
            continue
        rows = int(vocab[members].sum())
        values = _utils.plain_variable(tf.zeros([rows, width], store), name=f"width_{width}")
        scales = _utils.plain_variable(tf.zeros([rows], tf.float16), name=f"width_{width}_scales") if table_dtype == "int8" else None
        r = 0
        for i in members:
            f, cols = int(fields[i]), np.asarray(columns[i])
            row_offsets[i] = r
            for a, b in row_ops.chunks(0, int(vocab[i])):
                kept = row_ops.read_rows(table, offsets[f] + a, offsets[f] + b, cols)
                if bases[i] is not None:  # its coordinates in the basis: kept = stored @ basis
                    kept = (kept.astype(np.float64) @ bases[i].T).astype(np.float32)
                select = (slice(None), cols)
                if sizes is not None:  # per-value sizes: each row's prefix of `cols`, zeros after it
                    keep = np.arange(len(cols))[None, :] < np.asarray(sizes[i][a:b])[:, None]
                    kept = kept * keep
                    select = np.zeros((b - a, mask.output_dim), bool)
                    select[:, cols] = keep
                stored, sc = quantize.quantize(kept, table_dtype)
                row_ops.assign_rows(values, r + a, r + b, np.pad(stored, ((0, 0), (0, width - stored.shape[1]))))
                if sc is not None:
                    row_ops.assign_rows(scales, r + a, r + b, sc)
                if table_dtype != "float32":
                    back = quantize.dequantize(stored, sc)
                    if sizes is not None:
                        kept, back = kept[keep], back[keep]
                    swaps.append((offsets[f] + a, offsets[f] + b, select, kept, back))
            r += int(vocab[i])
        basis = [bases[i] for i in members] if any(bases[i] is not None for i in members) else None
        groups.append(FieldGroup(width, members, [np.asarray(columns[i]) for i in members], values, scales, basis))
    return groups, row_offsets, swaps


def field_basis(rows: np.ndarray) -> np.ndarray | None:
    """`[r, k]` orthonormal rows spanning the rows of a field's kept values `[n, k]`, when their
    rank r (numerical, as `np.linalg.matrix_rank`: singular values above `max(n, k) x eps(float32)`
    times the largest) is below k and above 0; else None. Then `rows = (rows @ B.T) @ B` to float32 rounding.

    Example:

    >>> np.abs(field_basis(np.array([[3.0, 0.0, 4.0], [6.0, 0.0, 8.0]]))).round(6).tolist()  # up to its sign
    [[0.6, 0.0, 0.8]]
    >>> field_basis(np.eye(3)) is None
    True
    """
    rows = np.asarray(rows, np.float64)
    if rows.size == 0:
        return None
    _, s, vt = np.linalg.svd(rows, full_matrices=False)
    rank = int((s > s[0] * max(rows.shape) * np.finfo(np.float32).eps).sum()) if s[0] > 0 else 0
    return vt[:rank] if 0 < rank < rows.shape[1] else None  # all zeros: stored as they are


def rank_fold(compact: CompactLayer, slack: float = PADDING_SLACK) -> bool:
    """Store the fields of `compact`'s per-field lookup that have fewer ids than kept columns in
    the basis of their rows (`field_basis`): r values per row where the field keeps k > r columns
    (a field of n ids has rank at most n). Only for a consumer that is linear in the kept values
    and multiplies them by a matrix anyway (a folded Dense: `keras_embdim.export.fold.fold_ranks`
    multiplies the basis into its kernel rows), so that the request computes r columns of the field,
    not k.

    In place: `compact.lookup` becomes the rank-folded lookup. Its tables whose fields, columns and
    width are unchanged are the old lookup's; the others are released before the new ones are
    filled from the layer's variable, so the export holds one set of compact tables at a time and
    reads again only the rows of the tables that change. The caller must hold no reference to the
    old lookup. Returns False (`compact` unchanged) where no field is rank-deficient, for a
    per-value layer and for a quantized export."""
    lookup = compact.lookup
    if not isinstance(lookup, FieldLookup) or compact.table_dtype != "float32" or lookup.rank_folded:
        return False
    layer = compact.layer
    mask = layer.dimension_mask()
    offsets, vocab = field_offsets(mask.vocab_sizes), mask.vocab_sizes
    fields = np.arange(mask.num_fields)
    columns = [mask.kept_columns(f) for f in fields]
    bases = [field_basis(row_ops.read_rows(layer.embedding_variable, offsets[f], offsets[f] + vocab[f], columns[f]))
             if 0 < vocab[f] < len(columns[f]) else None for f in fields]
    if all(b is None for b in bases):
        return False
    stored = _stored_widths(mask, fields, columns, bases, slack)
    unchanged = {(g.width, tuple(g.fields.tolist())): g for g in lookup.groups
                 if all(b is None for b in g.basis or [None])}
    keep = {}  # width -> the old group the new grouping has again (same fields; same columns: one mask)
    for width in set(int(w) for w in stored if w > 0):
        members = np.flatnonzero(stored == width)
        old = unchanged.get((width, tuple(fields[members].tolist())))
        if old is not None and all(bases[i] is None for i in members):
            keep[width] = old
    multi_field, guard, jit_compile = lookup.multi_field, lookup.guard, lookup.jit_compile
    compact.lookup = lookup = old = unchanged = None
    gc.collect()  # the old lookup's gather function refers to it: free its other tables now
    groups, row_offsets, _ = _field_groups(layer.embedding_variable, mask, fields, columns, "float32",
                                           bases=bases, slack=slack, reuse=keep)
    compact.lookup = FieldLookup(mask.num_fields, mask.output_dim, groups, row_offsets, multi_field=multi_field,
                                 guard=guard, jit_compile=jit_compile)
    return True


def _compact_values(layer, mask, guard, value_layout, value_read, jit_compile, table_dtype,
                    dense_fields: bool) -> CompactLayer:
    D = mask.output_dim
    value_sizes = list(mask.value_sizes)  # as the mask holds them (`size_dtype`): no copy of every row's size
    layouts.check_layout(value_layout, jit_compile)
    dense, rest_layout = (_dense_plan(value_sizes, D, value_layout, jit_compile) if dense_fields
                          else (np.zeros(mask.num_fields, bool), None))
    if not layer.multi_field and not dense.all():
        dense[:], rest_layout = False, None  # a single-field layer is one part or the other
    parts, swaps, value_padding = [], [], 0
    if dense.any():
        fields = np.flatnonzero(dense)
        widths = [int(value_sizes[f].max(initial=0)) for f in fields]
        groups, row_offsets, swaps = _field_groups(layer.embedding_variable, mask, fields,
                                                   [np.arange(w) for w in widths], table_dtype,
                                                   sizes=[value_sizes[f] for f in fields])
        sub = guard.part(fields)
        value_padding = int(sum(len(value_sizes[f]) * w - int(value_sizes[f].sum(dtype=np.int64))
                                for f, w in zip(fields, widths)))
        parts.append((FieldLookup(len(fields), D, groups, row_offsets, multi_field=sub.multi_field, guard=sub,
                                  jit_compile=jit_compile), fields))
    if not dense.all():
        fields = np.flatnonzero(~dense)
        lookup, more = _packed_lookup(layer, mask, fields, value_sizes, guard.part(fields), rest_layout or value_layout,
                                      value_read, jit_compile, table_dtype)
        parts.append((lookup, fields))
        swaps += more
    if not dense.any():  # every field packed: the packed lookup is the layer's
        return CompactLayer(layer, parts[0][0], table_dtype, swaps)
    lookup = SplitLookup(parts, mask.num_fields, D, guard=guard, value_padding=value_padding)
    return CompactLayer(layer, lookup, table_dtype, swaps)


def _joined(sizes: list, fields: np.ndarray, output_dim: int) -> np.ndarray:
    """The sizes of `fields` (`sizes[f]`: field f's) one after another, in `size_dtype(output_dim)`
    (int8 up to D = 127): the copy a packed layout is planned and built from costs 1 B per row
    (`docs/results/serving.md`, the export's added RSS)."""
    dtype = size_dtype(output_dim)
    sizes = [np.asarray(sizes[f]) for f in fields]
    for f, s in zip(fields, sizes):  # before the narrowing cast, which would wrap an out-of-range size
        if s.size and (s.min() < 0 or s.max() > output_dim):
            raise ValueError(f"value sizes must lie in [0, {output_dim}]; field {f} has sizes in "
                             f"[{s.min()}, {s.max()}].")
    if not sizes:
        return np.zeros(0, dtype)
    return np.concatenate(sizes, dtype=dtype, casting="unsafe")


def _packed_lookup(layer, mask, fields, value_sizes, guard, value_layout, value_read, jit_compile, table_dtype):
    """`(ValueLookup, swaps)` of the rows of `fields` in a packed layout (`keras_embdim.export.layouts`)."""
    table = layer.embedding_variable
    D = mask.output_dim
    sizes = _joined(value_sizes, fields, D)
    if value_layout == "auto":  # XLA: no head layout (`choose_layout`)
        value_layout = layouts.choose_layout(sizes, D, static=jit_compile)
    vocab = np.asarray(mask.vocab_sizes, np.int64)[fields]
    packed = layouts.pack_index(sizes, D, field_sizes=vocab, layout=value_layout)
    store = _STORE[table_dtype]
    W, H, m = packed.head_width, packed.head_rows, packed.base_width  # head layout: `base`, `head`, then `values`
    values = _utils.plain_variable(tf.zeros([packed.values_size], store), name="values")  # + zero slot
    head = _utils.plain_variable(tf.zeros([H + 1, W], store), name="head") if packed.layout == "head" else None
    base = _utils.plain_variable(tf.zeros([packed.num_rows, m], store), name="base") if head is not None and m else None
    scales = _utils.plain_variable(tf.zeros([packed.num_rows], tf.float16), name="scales") if table_dtype == "int8" else None
    swaps, pos, head_pos = [], 0, 0
    columns = np.arange(D)[None, :]
    offsets = field_offsets(mask.vocab_sizes)
    for f, start in zip(fields, packed.field_starts):  # field f's rows: `start...` in the packed table
        for a0, b0 in row_ops.chunks(0, int(mask.vocab_sizes[f])):
            a, b = int(start) + a0, int(start) + b0  # rows of the packed table
            rows = row_ops.read_rows(table, offsets[f] + a0, offsets[f] + b0)
            keep = columns < sizes[a:b, None]
            if table_dtype == "int8":  # one scale per row, from its kept prefix
                sc = quantize.row_scales(rows * keep)
                q = quantize.quantize(rows, "int8", sc)[0]
                stored, back = q[keep], quantize.dequantize(q, sc)[keep]
                row_ops.assign_rows(scales, a, b, sc)
            else:
                stored = quantize.quantize(rows[keep], table_dtype)[0]
                back = stored.astype(np.float32)
            if table_dtype != "float32":
                swaps.append((offsets[f] + a0, offsets[f] + b0, keep, rows[keep], back))
            if head is not None:  # `base` (every row), the head rows (padded) to `head`, the tail's rest to `values`
                dense = np.zeros((b - a, D), stored.dtype)
                dense[keep] = stored
                parts = layouts.split_rows(dense, sizes[a:b], packed)
                if base is not None:
                    row_ops.assign_rows(base, a, b, parts["base"])
                k = parts["head"].shape[0]
                if k and W:
                    row_ops.assign_rows(head, head_pos, head_pos + k, parts["head"])
                head_pos += k
                stored = parts["values"]
            n = stored.shape[0]
            if n:
                row_ops.assign_rows(values, pos, pos + n, stored)
            pos += n
    arrays = {"values": values, **({"head": head} if head is not None else {})}
    if base is not None:
        arrays["base"] = base
    for name, array in packed.arrays.items():
        arrays[name] = _utils.plain_variable(array, name=name)
    if scales is not None:
        arrays["scales"] = scales
    widths = np.array([int(value_sizes[f].max(initial=0)) for f in fields], np.int64)
    lookup = ValueLookup(packed, arrays, widths, multi_field=guard.multi_field, guard=guard, jit_compile=jit_compile,
                         read=value_read)
    return lookup, swaps
