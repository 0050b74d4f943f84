"""Compaction: from a full table and its `DimensionMask` to what ships.

Per-field granularity: field `f` stores only its kept columns, a dense
`[n_f, k_f]` array. The serving lookup gathers the compact rows and puts each
column back at its original position (`placement`), filling removed columns with
exact zeros, so that layers downstream see the same `[..., D]` tensor as in
training. Only standard TensorFlow ops are used, so a SavedModel built from
`compact_lookup` needs nothing of keras_embdim to run.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from keras_embdim.mask import DimensionMask


def field_offsets(vocab_sizes: Sequence[int]) -> np.ndarray:
    """Row offset of each field in the concatenated table."""
    return np.concatenate([[0], np.cumsum(vocab_sizes)[:-1]]).astype(np.int64)


def compact_field_tables(table: np.ndarray, mask: DimensionMask) -> list[np.ndarray]:
    """Split the concatenated table per field, keeping only kept columns."""
    table = np.asarray(table)
    if table.shape != (sum(mask.vocab_sizes), mask.output_dim):
        raise ValueError(
            f"table shape {table.shape} does not match the mask "
            f"({sum(mask.vocab_sizes)}, {mask.output_dim})."
        )
    out = []
    for f, (start, n) in enumerate(zip(field_offsets(mask.vocab_sizes), mask.vocab_sizes)):
        cols = mask.kept_columns(f)
        out.append(np.ascontiguousarray(table[start : start + n][:, cols]))
    return out


def placement(keep_row: np.ndarray) -> np.ndarray:
    """Index that rebuilds a `[D]` row from `[kept..., 0]`.

    `placement[j]` is the position of column `j` among the kept columns, or
    `k` (the appended zero) for a removed column.
    """
    keep_row = np.asarray(keep_row, dtype=bool)
    k = int(keep_row.sum())
    idx = np.full(keep_row.shape[0], k, dtype=np.int32)
    idx[keep_row] = np.arange(k, dtype=np.int32)
    return idx


def _place(rows: tf.Tensor, place: np.ndarray, output_dim: int) -> tf.Tensor:
    if rows.shape[-1] == output_dim:
        return rows  # every column kept: nothing to put back
    zeros = tf.zeros(tf.concat([tf.shape(rows)[:-1], [1]], 0), rows.dtype)
    return tf.gather(tf.concat([rows, zeros], -1), place, axis=-1)


def compact_lookup(
    tables: Sequence[tf.Variable | None],
    placements: Sequence[np.ndarray],
    ids: tf.Tensor,
    *,
    multi_field: bool,
    output_dim: int,
    dtype: tf.DType = tf.float32,
    scales: Sequence[tf.Variable | None] | None = None,
) -> tf.Tensor:
    """Embedding lookup from compact per-field tables (serving graph).

    Args:
        tables: per field a `[n_f, k_f]` variable, or None when `k_f == 0`.
        placements: per field the `placement` index of its kept columns.
        ids: local ids; `[...]` for a single field, `[..., F]` for several.
        multi_field: whether the last axis of `ids` indexes fields.
        output_dim: D.
        scales: per field a `[n_f]` float16 row scale of int8 tables (`keras_embdim.quantize`), or None.
    """
    def one(f, field_ids):
        table = tables[f]
        if table is None:
            return tf.zeros(tf.concat([tf.shape(field_ids), [output_dim]], 0), dtype)
        rows = tf.cast(tf.gather(table, field_ids), dtype)
        if scales is not None and scales[f] is not None:
            rows = rows * tf.cast(tf.gather(scales[f], field_ids), dtype)[..., None]
        return _place(rows, placements[f], output_dim)

    if not multi_field:
        return one(0, ids)
    return tf.stack([one(f, ids[..., f]) for f in range(len(tables))], axis=-2)


def masked_lookup_reference(table: np.ndarray, mask: DimensionMask, ids: np.ndarray, multi_field: bool) -> np.ndarray:
    """Numpy reference of the masked training lookup (a second implementation)."""
    ids = np.asarray(ids, dtype=np.int64)
    keep = mask.as_float()
    if not multi_field:
        return table[ids] * keep[0]
    offs = field_offsets(mask.vocab_sizes)
    return table[ids + offs] * keep


class FieldServing:
    """Serving lookup of a per-field compacted layer: one flat buffer, one gather.

    Field f's kept columns are stored row by row (`[n_f, k_f]`, flattened)
    one field after another in one `values` buffer of exactly the kept
    parameters. Column j of id i of field f sits at
    `start_f + i * k_f + pos_f[j]` (`pos_f[j]`: its place among the kept
    columns); removed columns are zeroed by a `[F, D]` 0/1 constant. The whole
    lookup is a handful of ops whatever the number of fields (measured: the
    per-field loop of `compact_lookup`, three ops per field, made a 39-field
    export twice as slow as the full table at batch 512; `docs/benchmarks.md`).

    Args:
        mask: the layer's `DimensionMask`.
        values: the kept values, flat, in the order above (float32, float16 or int8).
        scales: int8 only: a float16 scale per row of the fields that keep a column.
        jit_compile: XLA-compile the lookup (TF Serving then needs
            `--xla_cpu_compilation_enabled=true`).
    """

    granularity = "field"
    layout = "field"

    def __init__(self, mask, values: np.ndarray, scales: np.ndarray | None = None, jit_compile: bool = False):
        self.jit_compile = bool(jit_compile)
        k = mask.kept_dims.astype(np.int64)
        n = np.asarray(mask.vocab_sizes, np.int64)
        self.total = int((n * k).sum())
        itype = np.int32 if self.total + mask.output_dim < 2**31 - 1 else np.int64  # start + position fits
        self.output_dim = mask.output_dim
        self.row_width = k.astype(itype)
        # a field that keeps nothing reads index 0 (any valid index: its columns are all zeroed)
        self.field_start = np.where(k > 0, np.concatenate([[0], np.cumsum(n * k)[:-1]]), 0).astype(itype)
        pos = np.zeros((mask.num_fields, mask.output_dim), itype)
        for f in range(mask.num_fields):
            pos[f, mask.keep[f]] = np.arange(int(k[f]))
        self.position = pos
        self.keep = mask.keep.astype(np.float32)
        self.values = tf.Variable(values, trainable=False, name="values") if values.size else None
        self.scales = tf.Variable(scales, trainable=False, name="scales") if scales is not None and scales.size else None
        has_rows = (k > 0).astype(itype)
        self.scale_start = np.concatenate([[0], np.cumsum(n * has_rows)[:-1]]).astype(itype)
        self.scale_step = has_rows

    @property
    def variables(self) -> list:
        return [v for v in (self.values, self.scales) if v is not None]

    @property
    def nbytes(self) -> int:
        return int(sum(int(np.prod(v.shape)) * v.dtype.size for v in self.variables))

    def lookup(self, ids, *, multi_field: bool, output_dim: int, dtype) -> tf.Tensor:
        if self.jit_compile and self.values is not None:
            if not hasattr(self, "_xla"):
                self._xla = tf.function(self._lookup, jit_compile=True, autograph=False)
            return self._xla(ids, multi_field, output_dim, dtype, True)
        return self._lookup(ids, multi_field, output_dim, dtype, False)

    def _lookup(self, ids, multi_field, output_dim, dtype, read) -> tf.Tensor:
        if self.values is None:  # every column removed
            shape = tf.shape(ids) if multi_field else tf.concat([tf.shape(ids), [1]], 0)
            zeros = tf.zeros(tf.concat([shape, [output_dim]], 0), dtype)
            return zeros if multi_field else zeros[..., 0, :]
        itype = tf.as_dtype(self.row_width.dtype)
        ids = tf.cast(ids, itype)
        if not multi_field:
            ids = ids[..., None]
        start = tf.constant(self.field_start) + ids * tf.constant(self.row_width)  # [..., F]
        idx = start[..., None] + tf.constant(self.position)  # [..., F, D]
        values = tf.convert_to_tensor(self.values) if read else self.values  # XLA has no resource gathers
        out = tf.gather_nd(values, idx[..., None])
        out = tf.cast(out, dtype) * tf.constant(self.keep, dtype)
        if self.scales is not None:
            rows = tf.minimum(
                tf.constant(self.scale_start) + ids * tf.constant(self.scale_step), int(self.scales.shape[0]) - 1
            )
            scales = tf.convert_to_tensor(self.scales) if read else self.scales
            out = out * tf.cast(tf.gather(scales, rows), dtype)[..., None]
        return out if multi_field else out[..., 0, :]


class ValueServing:
    """Serving lookup of a per-value compacted layer (`keras_embdim.ragged`).

    Args:
        packed: the layer's `ragged.PackedTable` (all its fields).
        jit_compile: compile the lookup with XLA (`tf.function(jit_compile=True)`
            inside the serving graph): about 3x faster at batch 512 on CPU, but
            TF Serving then needs `--xla_cpu_compilation_enabled=true`.
    """

    granularity = "value"

    def __init__(self, packed, jit_compile: bool = False):
        from keras_embdim import ragged

        self.layout = packed.layout
        self.meta = dict(
            layout=packed.layout, field_starts=packed.field_starts, output_dim=packed.output_dim,
            bits=packed.bits, shift=packed.shift, size_offset=packed.size_offset, size_scale=packed.size_scale,
        )
        self.arrays = {k: tf.Variable(a, trainable=False, name=f"{k}") for k, a in packed.arrays.items()}
        self.nbytes = packed.nbytes
        self.kept = packed.kept
        self.jit_compile = bool(jit_compile)

        def lookup(ids, multi_field):
            return ragged.packed_lookup(self.arrays, ids, multi_field=multi_field, **self.meta)

        def xla_lookup(ids, multi_field):  # XLA has no resource gathers: read the variables first
            arrays = {k: tf.convert_to_tensor(v) for k, v in self.arrays.items()}
            return ragged.packed_lookup(arrays, ids, multi_field=multi_field, **self.meta)

        self._lookup = tf.function(xla_lookup, jit_compile=True, autograph=False) if self.jit_compile else lookup

    @property
    def variables(self) -> list:
        return list(self.arrays.values())

    def lookup(self, ids, *, multi_field: bool, output_dim: int, dtype) -> tf.Tensor:
        return tf.cast(self._lookup(ids, multi_field), dtype)


def compact_layer(
    layer,
    table: np.ndarray | None = None,
    *,
    value_layout: str = "auto",
    jit_compile: bool = False,
    table_dtype: str = "float32",
):
    """The serving object of a searchable layer: per-field or per-value compaction.

    Args:
        layer: a searchable layer (anything `find_searchable_layers` returns).
        table: its full table (default: read from the layer).
        value_layout: per-value sizes only: the `ragged` layout, `"auto"` (the
            fastest within 1.10 x the kept bytes), `"offsets"`, `"runs"` or `"planes"`.
        jit_compile: XLA-compile the lookup (see `FieldServing`, `ValueServing`).
        table_dtype: storage of the kept values: `"float32"`, `"float16"`, or
            `"int8"` with a float16 scale per row (`keras_embdim.quantize`).

    Returns:
        a `FieldServing` or `ValueServing`; its `dequantized` is the full table
        with every kept entry replaced by the value the export serves (the
        table itself for float32), for verification.
    """
    from keras_embdim import _compat, quantize, ragged

    quantize.check_dtype(table_dtype)
    mask = layer.dimension_mask()
    table = np.asarray(_compat.to_numpy(layer.embedding_variable) if table is None else table, np.float32)
    if mask.granularity == "value":
        sizes = np.concatenate([np.asarray(v) for v in mask.value_sizes]) if mask.value_sizes else np.zeros(0)
        packed = ragged.pack(table, list(mask.value_sizes), field_sizes=mask.vocab_sizes, layout=value_layout)
        keep = np.arange(table.shape[1])[None, :] < sizes[:, None]
        scales = quantize.row_scales(table * keep) if table_dtype == "int8" else None
        if table_dtype == "int8":
            row_of = np.repeat(np.arange(table.shape[0]), sizes)
            q = np.clip(np.round(packed.arrays["values"][:-1] / scales.astype(np.float32)[row_of]), -127, 127)
            q = q.astype(np.int8)
            packed.arrays["values"] = np.concatenate([q, np.zeros(1, np.int8)])
            packed.arrays["scales"] = scales
        elif table_dtype == "float16":
            packed.arrays["values"] = packed.arrays["values"].astype(np.float16)
        deq = table.copy()
        if table_dtype != "float32":
            rows = table * keep
            back = quantize.dequantize(*quantize.quantize(rows, table_dtype, scales))
            deq = np.where(keep, back, table)
        serving = ValueServing(packed, jit_compile=jit_compile)
        serving.dequantized = deq
        return serving
    deq = table.copy()
    parts, scale_parts = [], []
    for f, (start, n) in enumerate(zip(field_offsets(mask.vocab_sizes), mask.vocab_sizes)):
        cols = mask.kept_columns(f)
        if not len(cols):
            continue
        arr = np.ascontiguousarray(table[start : start + n][:, cols])
        stored, sc = quantize.quantize(arr, table_dtype)
        deq[start : start + n, cols] = quantize.dequantize(stored, sc)
        parts.append(stored.reshape(-1))
        if sc is not None:
            scale_parts.append(sc)
    store_dtype = {"float32": np.float32, "float16": np.float16, "int8": np.int8}[table_dtype]
    values = np.concatenate(parts) if parts else np.zeros(0, store_dtype)
    scales = np.concatenate(scale_parts) if scale_parts else None
    serving = FieldServing(mask, values.astype(store_dtype), scales, jit_compile=jit_compile)
    serving.dequantized = deq
    return serving
