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
- `"codes"` (smallest for scattered sizes): `alphabet`, the distinct sizes
  (uint8); `codes`, each row's index into it in the fewest bits that hold it (0
  to 5 for D = 16), bit-packed; and `base`, int32 per block of 32 rows. A lookup
  decodes its block's codes and sums the sizes before the row:
  `bits / 8 + 1 / 8` bytes per row.

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

LAYOUTS = ("offsets", "runs", "codes")
# preference when several fit the byte limit (measured: benchmarks/twins_serving.py)
SPEED_ORDER = ("offsets", "runs", "codes")
CODES_BLOCK_SHIFT = 5  # codes: 32 rows per block offset


@dataclass
class PackedTable:
    """Numpy arrays of one layer's per-value compact table (all its fields)."""

    layout: str
    arrays: dict = field(repr=False)  # name -> np.ndarray, in a fixed order
    field_starts: np.ndarray  # int32 [F]: global row of each field's id 0
    num_rows: int
    output_dim: int
    kept: int  # sum of the sizes
    bits: int = 0  # codes layout: bits per row
    shift: int = 0  # offsets layout: log2 rows per block

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


def _code_bits(num_sizes: int) -> int:
    return int(np.ceil(np.log2(num_sizes))) if num_sizes > 1 else 0


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
    alphabet = max(1, len(np.unique(sizes)))
    bits = _code_bits(alphabet)
    padded_rows = -(-max(n, 1) >> CODES_BLOCK_SHIFT) << CODES_BLOCK_SHIFT
    return {
        "offsets": values + local * (n + 1) + isz * (-(-(n + 1) >> shift)),
        "runs": values + runs * (4 + size_b + isz),
        "codes": values + size_b * alphabet + (-(-padded_rows * bits // 8) + 1) + isz * (padded_rows >> CODES_BLOCK_SHIFT),
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
        layout: `"auto"`, `"offsets"`, `"runs"` or `"codes"`.
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
    bits = shift = 0
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
        alphabet = np.unique(sizes) if n else np.zeros(1, np.int64)
        bits = _code_bits(len(alphabet))
        padded = -(-max(n, 1) >> CODES_BLOCK_SHIFT) << CODES_BLOCK_SHIFT
        code = np.zeros(padded, np.uint8)
        code[:n] = np.searchsorted(alphabet, sizes)
        stream = ((code[:, None] >> np.arange(bits, dtype=np.uint8)) & 1).astype(np.uint8).reshape(-1)
        arrays["alphabet"] = alphabet.astype(size_t)
        # least significant bit first; one spare byte for the two-byte window
        arrays["codes"] = np.concatenate([np.packbits(stream, bitorder="little"), np.zeros(1, np.uint8)])
        arrays["base"] = starts[: padded : 1 << CODES_BLOCK_SHIFT].astype(itype)
    field_starts = np.concatenate([[0], np.cumsum(field_sizes)[:-1]]).astype(np.int32)
    return PackedTable(layout, arrays, field_starts, n, D, total, bits, shift)


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
    if packed.bits == 0:
        return np.full(n, int(a["alphabet"][0]), np.int64)
    pos = g * packed.bits
    c = a["codes"]
    word = c[pos // 8].astype(np.int64) | (c[pos // 8 + 1].astype(np.int64) << 8)
    return a["alphabet"][(word >> (pos % 8)) & ((1 << packed.bits) - 1)].astype(np.int64)


def unpack(packed: PackedTable) -> np.ndarray:
    """The masked `[n, D]` table back (numpy; tests)."""
    sizes = unpack_sizes(packed)
    out = np.zeros((packed.num_rows, packed.output_dim), np.float32)
    out[np.arange(packed.output_dim)[None, :] < sizes[:, None]] = packed.arrays["values"][:-1]
    return out


def _codes_at(codes, rows, bits: int):
    if bits == 0:  # a single size: every code is 0
        return tf.zeros_like(rows)
    pos = rows * bits
    byte = tf.bitwise.right_shift(pos, 3)
    pair = tf.cast(tf.gather(codes, tf.stack([byte, byte + 1], -1)), pos.dtype)
    word = pair[..., 0] + pair[..., 1] * 256
    return tf.bitwise.bitwise_and(tf.bitwise.right_shift(word, tf.bitwise.bitwise_and(pos, 7)), (1 << bits) - 1)


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
) -> tf.Tensor:
    """Rebuild `[..., D]` (single field) or `[..., F, D]` embeddings (serving graph).

    Args:
        arrays: the `PackedTable.arrays`, as tensors or variables.
        ids: local ids, `[...]` for a single field or `[..., F]` for several.
        layout, field_starts, output_dim, bits, shift: from the `PackedTable`.
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
    elif layout == "codes":
        block = 1 << CODES_BLOCK_SHIFT
        local = tf.bitwise.bitwise_and(g, block - 1)
        rows = (g - local)[:, None] + tf.range(block)[None, :]  # [N, block]
        sizes = tf.cast(tf.gather(arrays["alphabet"], _codes_at(arrays["codes"], rows, bits)), itype)
        j = tf.range(block)[None, :]
        start = tf.cast(tf.gather(arrays["base"], tf.bitwise.right_shift(g, CODES_BLOCK_SHIFT)), itype)
        start += tf.reduce_sum(tf.where(j < local[:, None], sizes, tf.zeros([], itype)), axis=1)
        size = tf.reduce_sum(tf.where(j == local[:, None], sizes, tf.zeros([], itype)), axis=1)
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
    return tf.reshape(out, tf.concat([shape, [output_dim]], 0))


def prefix_lookup_reference(table: np.ndarray, sizes: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Numpy reference of the per-value masked lookup (a second implementation)."""
    table = np.asarray(table)
    D = table.shape[1]
    ids = np.asarray(ids)
    mask = np.arange(D) < np.asarray(sizes)[ids][..., None]
    return table[ids] * mask
