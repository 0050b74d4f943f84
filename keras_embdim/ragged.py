"""Per-value compaction: each value keeps its own number of leading columns.

All fields of a layer are packed into one table: global row `g = start_f + id`
(fields one after another, as in the training table), and value `g` keeps its
first `d_g` columns. Every layout stores

- `values`: float32 `[sum_g d_g + 1]`, the kept prefixes one after another and
  one trailing zero (the slot that removed columns read),

plus an index that gives each row's start in `values` and its size:

- `"offsets"` (fastest): `base`, int32 per block of `B` rows, and `local`, uint8
  per row (with a sentinel row at the end): `start(g) = base[g >> s] + local[g]`
  and `d_g = start(g + 1) - start(g)`. `B` is the largest power of two up to 16
  with `(B - 1) * D <= 255` (16 for D = 16): `1 + 4 / B` bytes per row (for wide
  rows uint16 local offsets, whichever is smaller).
- `"runs"`: the maximal runs of consecutive rows of one size (`run_row` int32,
  `run_size` uint8, `run_start` int32; a lookup is a binary search): 9 bytes per
  run. Tiny when sizes follow the id order, as they do for vocabularies sorted
  by frequency (`keras.layers.StringLookup` sorts them so).
- `"planes"` (smallest for scattered sizes): sizes written as
  `size_offset + size_scale * code` (the smallest size and the gcd of the
  steps), the codes' `b` bits stored as bit planes: per block of 64 rows, `b`
  uint64 words (bit j of word k = bit k of row j's code) and the block's int32
  start. The sizes before a row are `sum_k 2^k popcount(plane_k & below)`:
  `b / 8 + 1 / 16` bytes per row, a lookup of two gathers and word arithmetic
  on `[N, b]`.

`layout="auto"` takes the fastest layout whose bytes stay within
`max_overhead` x the kept values' bytes, else the smallest (why: docs/methods.md).
Only standard TensorFlow ops are used, so a SavedModel built on `packed_lookup`
serves without keras_embdim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import tensorflow as tf

LAYOUTS = ("offsets", "runs", "planes")
# preference when several fit the byte limit (measured: benchmarks/twins_serving.py)
SPEED_ORDER = ("offsets", "runs", "planes")
PLANE_SHIFT = 6  # planes: 64 rows per block (one uint64 word per bit)


@dataclass
class PackedTable:
    """Numpy arrays of one layer's per-value compact table (all its fields)."""

    layout: str
    arrays: dict = field(repr=False)  # name -> np.ndarray, in a fixed order
    field_starts: np.ndarray  # int32 [F]: global row of each field's id 0
    num_rows: int
    output_dim: int
    kept: int  # sum of the sizes
    bits: int = 0  # planes layout: bits per code
    shift: int = 0  # offsets layout: log2 rows per block
    size_offset: int = 0  # planes layout: size = size_offset + size_scale * code
    size_scale: int = 1

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()))

    @property
    def overhead(self) -> float:
        """Bytes over the kept values' own bytes (`4 * kept`)."""
        return self.nbytes / (4 * self.kept) if self.kept else float("inf")


def _offsets_params(D: int) -> tuple[int, type]:
    """(log2 rows per block, local offset dtype) of the fewest bytes per row."""
    best = None
    for dtype in (np.uint8, np.uint16, np.uint32):
        top = np.iinfo(dtype).max
        s = 4
        while s > 0 and ((1 << s) - 1) * D > top:
            s -= 1
        cost = np.dtype(dtype).itemsize + 4 / (1 << s)
        if best is None or cost < best[0]:
            best = (cost, s, dtype)
    return best[1], best[2]


def _index_dtype(total: int):
    return np.int32 if total < 2**30 else np.int64  # start + zero slot must not overflow


def _affine_codes(sizes: np.ndarray) -> tuple[int, int, np.ndarray, int]:
    """`(offset, scale, codes, bits)` with `sizes = offset + scale * codes`."""
    if sizes.size == 0:
        return 0, 1, sizes, 0
    offset = int(sizes.min())
    steps = sizes - offset
    scale = int(np.gcd.reduce(steps)) if steps.any() else 1
    codes = steps // scale
    return offset, scale, codes, int(codes.max()).bit_length()


def _run_breaks(sizes: np.ndarray) -> np.ndarray:
    """First row of each maximal run of equal sizes."""
    if sizes.size == 0:
        return np.zeros(1, np.int64)
    return np.concatenate([[0], np.flatnonzero(np.diff(sizes)) + 1])


def layout_bytes(sizes: np.ndarray, output_dim: int) -> dict[str, int]:
    """Bytes each layout would take for these per-row sizes (without packing)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    n, D = sizes.size, output_dim
    total = int(sizes.sum())
    isz = np.dtype(_index_dtype(total + 1)).itemsize
    values = 4 * (total + 1)
    shift, local_t = _offsets_params(D)
    local = np.dtype(local_t).itemsize
    size_b = 1 if D <= 255 else 2
    runs = len(_run_breaks(sizes))
    bits = _affine_codes(sizes)[3]
    blocks = -(-max(n, 1) >> PLANE_SHIFT)
    return {
        "offsets": values + local * (n + 1) + isz * (-(-(n + 1) >> shift)),
        "runs": values + runs * (4 + size_b + isz),
        "planes": values + blocks * (isz + 8 * bits),
    }


def choose_layout(sizes: np.ndarray, output_dim: int, max_overhead: float = 1.10) -> str:
    """The fastest layout within `max_overhead` x the kept bytes, else the smallest."""
    sizes = np.asarray(sizes, dtype=np.int64)
    nbytes = layout_bytes(sizes, output_dim)
    limit = max_overhead * 4 * int(sizes.sum())
    for name in SPEED_ORDER:
        if nbytes[name] <= limit:
            return name
    return min(LAYOUTS, key=lambda k: (nbytes[k], SPEED_ORDER.index(k)))


def pack(
    table: np.ndarray,
    sizes: np.ndarray | Sequence[np.ndarray],
    *,
    field_sizes: Sequence[int] | None = None,
    layout: str = "auto",
    max_overhead: float = 1.10,
) -> PackedTable:
    """Pack a `[n, D]` table whose row `g` keeps its first `sizes[g]` columns.

    Args:
        table: the full table, all fields' rows one after another.
        sizes: `[n]` integers in `[0, D]`, or one array per field.
        field_sizes: rows per field (default: one field, or the lengths of
            `sizes` when it is given per field).
        layout: `"auto"`, `"offsets"`, `"runs"` or `"planes"`.
        max_overhead: for `"auto"`: bytes allowed over the kept values' bytes.
    """
    table = np.asarray(table, dtype=np.float32)
    if table.ndim != 2:
        raise ValueError(f"table must be [rows, dim], got shape {table.shape}.")
    n, D = table.shape
    if not isinstance(sizes, np.ndarray) and len(sizes) and np.ndim(sizes[0]) == 1:
        if field_sizes is None:
            field_sizes = [len(s) for s in sizes]
        sizes = np.concatenate([np.asarray(s) for s in sizes]) if len(sizes) else np.zeros(0)
    sizes = np.asarray(sizes)
    if sizes.shape != (n,) or not (np.issubdtype(sizes.dtype, np.integer) or np.all(np.mod(sizes, 1) == 0)):
        raise ValueError(f"sizes must be {n} integers in [0, {D}], got shape {sizes.shape} of {sizes.dtype}.")
    sizes = sizes.astype(np.int64)
    if n and (sizes.min() < 0 or sizes.max() > D):
        raise ValueError(f"sizes must be {n} integers in [0, {D}], got values in [{sizes.min()}, {sizes.max()}].")
    field_sizes = [n] if field_sizes is None else [int(v) for v in field_sizes]
    if sum(field_sizes) != n:
        raise ValueError(f"field_sizes must add up to the table's {n} rows, got {sum(field_sizes)}.")
    if layout == "auto":
        layout = choose_layout(sizes, D, max_overhead)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'auto' or one of {LAYOUTS}, got {layout!r}.")
    if n >= 2**31 - 1:
        raise ValueError(f"tables of {n} rows (>= 2**31) are not supported.")

    total = int(sizes.sum())
    itype = _index_dtype(total + 1)
    keep = np.arange(D)[None, :] < sizes[:, None]
    arrays = {"values": np.concatenate([table[keep], np.zeros(1, np.float32)])}
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # [n + 1]
    size_t = np.uint8 if D <= 255 else np.uint16
    bits = shift = offset = 0
    scale = 1
    if layout == "offsets":
        shift, local_t = _offsets_params(D)
        base = starts[:: 1 << shift]
        arrays["base"] = base.astype(itype)
        arrays["local"] = (starts - base[np.arange(n + 1) >> shift]).astype(local_t)
    elif layout == "runs":
        breaks = _run_breaks(sizes)
        arrays["run_row"] = breaks.astype(np.int32)
        arrays["run_size"] = (sizes[breaks] if n else np.zeros(1, np.int64)).astype(size_t)
        arrays["run_start"] = starts[breaks].astype(itype)
    else:
        offset, scale, codes, bits = _affine_codes(sizes)
        rows = 1 << PLANE_SHIFT
        blocks = -(-max(n, 1) >> PLANE_SHIFT)
        padded = np.zeros(blocks * rows, np.uint64)
        padded[:n] = codes
        bit = (padded[:, None] >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)  # [rows, bits]
        weights = np.left_shift(np.uint64(1), np.arange(rows, dtype=np.uint64))  # bit j of a word = row j
        arrays["base"] = starts[: blocks * rows : rows].astype(itype)
        if bits:  # one size only: no planes at all
            arrays["planes"] = (bit.reshape(blocks, rows, bits) * weights[None, :, None]).sum(1, dtype=np.uint64)
    field_starts = np.concatenate([[0], np.cumsum(field_sizes)[:-1]]).astype(np.int32)
    return PackedTable(layout, arrays, field_starts, n, D, total, bits, shift, offset, scale)


def unpack_sizes(packed: PackedTable) -> np.ndarray:
    """The per-row sizes back from a `PackedTable` (numpy; tests and reports)."""
    a, n = packed.arrays, packed.num_rows
    g = np.arange(n)
    if packed.layout == "offsets":
        s = packed.shift
        start = a["base"][np.arange(n + 1) >> s].astype(np.int64) + a["local"]
        return np.diff(start)
    if packed.layout == "runs":
        r = np.searchsorted(a["run_row"], g, side="right") - 1
        return a["run_size"][r].astype(np.int64)
    code = np.zeros(n, np.int64)
    if packed.bits:
        words = a["planes"][g >> PLANE_SHIFT]  # [n, bits]
        bit = (words >> (g & ((1 << PLANE_SHIFT) - 1)).astype(np.uint64)[:, None]) & np.uint64(1)
        code = (bit.astype(np.int64) << np.arange(packed.bits)).sum(1)
    return packed.size_offset + packed.size_scale * code


def unpack(packed: PackedTable) -> np.ndarray:
    """The masked `[n, D]` table back (numpy; tests)."""
    sizes = unpack_sizes(packed)
    out = np.zeros((packed.num_rows, packed.output_dim), np.float32)
    out[np.arange(packed.output_dim)[None, :] < sizes[:, None]] = packed.arrays["values"][:-1]
    return out


def packed_lookup(
    arrays: dict,
    ids,
    *,
    layout: str,
    field_starts: np.ndarray,
    output_dim: int,
    multi_field: bool,
    bits: int = 0,
    shift: int = 0,
    size_offset: int = 0,
    size_scale: int = 1,
) -> tf.Tensor:
    """Rebuild `[..., D]` (single field) or `[..., F, D]` embeddings (serving graph).

    Args:
        arrays: the `PackedTable.arrays`, as tensors or variables (`values`
            may be float16, or int8 with a float16 `scales` per row).
        ids: local ids, `[...]` for a single field or `[..., F]` for several.
        layout, field_starts, output_dim, bits, shift, size_offset, size_scale:
            from the `PackedTable`.
        multi_field: whether the last axis of `ids` indexes fields.
    """
    values = arrays["values"]
    index = arrays["run_start"] if layout == "runs" else arrays.get("base")
    itype = tf.int64 if index is not None and index.dtype == tf.int64 else tf.int32
    ids = tf.cast(ids, tf.int32)
    shape = tf.shape(ids)
    g = ids + tf.constant(field_starts, tf.int32) if multi_field else ids
    g = tf.reshape(g, [-1])
    if layout == "offsets":
        # separate gathers: measured faster than one gather of [g, g + 1] pairs
        nxt = g + 1
        start = tf.cast(tf.gather(arrays["base"], tf.bitwise.right_shift(g, shift)), itype) + tf.cast(
            tf.gather(arrays["local"], g), itype
        )
        end = tf.cast(tf.gather(arrays["base"], tf.bitwise.right_shift(nxt, shift)), itype) + tf.cast(
            tf.gather(arrays["local"], nxt), itype
        )
        size = end - start
    elif layout == "runs":
        r = tf.searchsorted(arrays["run_row"], g, side="right", out_type=tf.int32) - 1
        size = tf.cast(tf.gather(arrays["run_size"], r), itype)
        start = tf.cast(tf.gather(arrays["run_start"], r), itype) + tf.cast(g - tf.gather(arrays["run_row"], r), itype) * size
    elif layout == "planes":
        local = tf.bitwise.bitwise_and(g, (1 << PLANE_SHIFT) - 1)
        block = tf.bitwise.right_shift(g, PLANE_SHIFT)
        start = tf.cast(tf.gather(arrays["base"], block), itype)
        local_i = tf.cast(local, itype)
        before = size = None
        if bits:
            words = tf.gather(arrays["planes"], block)  # [N, bits] uint64
            shift64 = tf.cast(local, tf.uint64)[:, None]
            below = tf.bitwise.left_shift(tf.ones_like(shift64), shift64) - 1  # rows before, in this block
            weight = tf.constant(1 << np.arange(bits), itype)
            count = tf.cast(tf.raw_ops.PopulationCount(x=tf.bitwise.bitwise_and(words, below)), itype)
            before = tf.reduce_sum(count * weight, axis=1)  # sum of the codes before the row
            mine = tf.cast(tf.bitwise.bitwise_and(tf.bitwise.right_shift(words, shift64), 1), itype)
            size = tf.reduce_sum(mine * weight, axis=1)
            if size_scale != 1:
                before, size = before * size_scale, size * size_scale
        if size_offset:
            start += local_i * size_offset
            size = size + size_offset if size is not None else tf.fill(tf.shape(g), tf.constant(size_offset, itype))
        if before is not None:
            start += before
        if size is None:
            size = tf.zeros_like(start)
    else:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}.")
    # column j of row g reads values[start + j] if j < size, else the zero slot:
    # idx = min(start + CT[size], zero) with CT[s, j] = j for j < s, else zero
    # (one row gather and two elementwise ops; measured faster than a where)
    zero = int(values.shape[0]) - 1
    np_itype = np.int64 if itype == tf.int64 else np.int32
    j = np.arange(output_dim)
    ct = np.where(j[None, :] < np.arange(output_dim + 1)[:, None], j[None, :], zero).astype(np_itype)
    idx = tf.minimum(start[:, None] + tf.gather(tf.constant(ct), tf.cast(size, tf.int32)), zero)
    out = tf.gather_nd(values, idx[..., None])  # gather_nd: faster than gather for scalar slices
    if out.dtype != tf.float32:  # float16 or int8 storage (keras_embdim.quantize)
        out = tf.cast(out, tf.float32)
    if "scales" in arrays:  # int8: one float16 scale per row
        out = out * tf.cast(tf.gather(arrays["scales"], g), tf.float32)[:, None]
    return tf.reshape(out, tf.concat([shape, [output_dim]], 0))


def prefix_lookup_reference(table: np.ndarray, sizes: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Numpy reference of the per-value masked lookup (a second implementation)."""
    table = np.asarray(table)
    D = table.shape[1]
    ids = np.asarray(ids)
    mask = np.arange(D) < np.asarray(sizes)[ids][..., None]
    return table[ids] * mask
