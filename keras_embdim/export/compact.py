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
- per-value sizes: each row's kept prefix goes into the packed `values` of
  `keras_embdim.export.layouts` (the layout's index is built from the sizes).

No whole-table numpy copy is made and, for float32 exports, no reference copy
either: the export's own memory is the compact tables plus one chunk. For
float16 / int8 exports `CompactLayer.stored_values()` swaps the stored values
into the layer's table for verification (and back): only the kept entries'
float32 originals are kept for that.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from keras_embdim import _utils, rows as row_ops
from keras_embdim.export import layouts, quantize
from keras_embdim.export.lookup import FieldGroup, FieldLookup, IdGuard, ValueLookup
from keras_embdim.fields import field_offsets

_STORE = {"float32": np.float32, "float16": np.float16, "int8": np.int8}


@dataclass
class CompactLayer:
    """A layer's serving lookup and what verification needs to run it at stored precision."""

    layer: Any
    lookup: FieldLookup | ValueLookup
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
        on_invalid_id: `"error"` or `"zero"` (`keras_embdim.export.lookup.IdGuard`).
    """
    quantize.check_dtype(table_dtype)
    layouts.check_read(value_read)
    mask = layer.dimension_mask()
    guard = IdGuard(layer.name, mask.field_names, mask.vocab_sizes, layer.multi_field, on_invalid_id)
    if mask.granularity == "value":
        return _compact_values(layer, mask, guard, value_layout, value_read, jit_compile, table_dtype)
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


def _compact_fields(layer, mask, guard, jit_compile, table_dtype) -> CompactLayer:
    table = layer.embedding_variable
    offsets = field_offsets(mask.vocab_sizes)
    widths = mask.kept_dims
    stored_widths = group_widths(widths, mask.vocab_sizes)
    store = _STORE[table_dtype]
    row_offsets = np.zeros(mask.num_fields, np.int32)
    groups, swaps = [], []
    for width in sorted(set(int(w) for w in stored_widths if w > 0)):
        fields = np.flatnonzero(stored_widths == width)
        rows = int(sum(mask.vocab_sizes[f] for f in fields))
        values = _utils.plain_variable(tf.zeros([rows, width], store), name=f"width_{width}")
        scales = _utils.plain_variable(tf.zeros([rows], tf.float16), name=f"width_{width}_scales") if table_dtype == "int8" else None
        r = 0
        for f in fields:
            cols = mask.kept_columns(f)
            row_offsets[f] = r
            for a, b in row_ops.chunks(0, mask.vocab_sizes[f]):
                kept = row_ops.read_rows(table, offsets[f] + a, offsets[f] + b, cols)
                stored, sc = quantize.quantize(kept, table_dtype)
                row_ops.assign_rows(values, r + a, r + b, np.pad(stored, ((0, 0), (0, width - len(cols)))))
                if sc is not None:
                    row_ops.assign_rows(scales, r + a, r + b, sc)
                if table_dtype != "float32":
                    select = (slice(None), cols)
                    swaps.append((offsets[f] + a, offsets[f] + b, select, kept, quantize.dequantize(stored, sc)))
            r += mask.vocab_sizes[f]
        groups.append(FieldGroup(width, fields, [mask.kept_columns(f) for f in fields], values, scales))
    lookup = FieldLookup(mask.num_fields, mask.output_dim, groups, row_offsets, multi_field=layer.multi_field,
                         guard=guard, jit_compile=jit_compile)
    return CompactLayer(layer, lookup, table_dtype, swaps)


def _compact_values(layer, mask, guard, value_layout, value_read, jit_compile, table_dtype) -> CompactLayer:
    table = layer.embedding_variable
    D = mask.output_dim
    sizes = np.concatenate([np.asarray(v, np.int64) for v in mask.value_sizes])
    if layouts.check_layout(value_layout, jit_compile) == "auto":  # XLA: no head layout (`choose_layout`)
        value_layout = layouts.choose_layout(sizes, D, static=jit_compile)
    packed = layouts.pack_index(sizes, D, field_sizes=mask.vocab_sizes, layout=value_layout)
    store = _STORE[table_dtype]
    W, H, m = packed.head_width, packed.head_rows, packed.base_width  # head layout: `base`, `head`, then `values`
    values = _utils.plain_variable(tf.zeros([packed.values_size], store), name="values")  # + zero slot
    head = _utils.plain_variable(tf.zeros([H + 1, W], store), name="head") if packed.layout == "head" else None
    base = _utils.plain_variable(tf.zeros([packed.num_rows, m], store), name="base") if head is not None and m else None
    scales = _utils.plain_variable(tf.zeros([packed.num_rows], tf.float16), name="scales") if table_dtype == "int8" else None
    swaps, pos, head_pos = [], 0, 0
    columns = np.arange(D)[None, :]
    for a, b in row_ops.chunks(0, packed.num_rows):
        rows = row_ops.read_rows(table, a, b)
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
            swaps.append((a, b, keep, rows[keep], back))
        if head is not None:  # `base` (every row), the head rows (padded) to `head`, the tail rows' rest to `values`
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
    widths = np.array([int(np.max(s, initial=0)) for s in mask.value_sizes], np.int64)
    lookup = ValueLookup(packed, arrays, widths, multi_field=layer.multi_field, guard=guard, jit_compile=jit_compile,
                         read=value_read)
    return CompactLayer(layer, lookup, table_dtype, swaps)
