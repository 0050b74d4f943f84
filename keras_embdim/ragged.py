"""Per-value compaction: each value keeps its own number of leading columns.

Layout of one field (n rows, value i keeps its first d_i columns):

- `values`: float32 `[sum_i d_i (+1)]`, the kept prefixes one after another
  (one trailing zero so that the buffer is never empty);
- `sizes`: the d_i, packed two per byte (4 bits) when they fit in 16 values
  (stored as d_i - `size_base`, `size_base` = 1 when no value has size 0),
  else one per byte;
- `block_offsets`: int32 `[ceil(n / BLOCK) + 1]`, where block b's values start.

A lookup of id i reads its block's offset, decodes the BLOCK sizes of the
block, sums those before i, and gathers `D` values from there, zeroing the
columns at or past d_i. Bytes: `4 sum d_i + n / 2 + 4 n / BLOCK + 8`, about
0.56 bytes per row on top of the kept values (with BLOCK = 64). Only standard
TensorFlow ops are used, so a SavedModel built on it serves without
keras_embdim.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

BLOCK = 64


@dataclass
class RaggedField:
    """Numpy arrays of one field's per-value compact table."""

    values: np.ndarray
    sizes: np.ndarray  # uint8, packed (4-bit) or not (8-bit)
    block_offsets: np.ndarray
    num_rows: int
    output_dim: int
    size_bits: int
    size_base: int

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + self.sizes.nbytes + self.block_offsets.nbytes)


def pack_field(table: np.ndarray, sizes: np.ndarray) -> RaggedField:
    """Compact one field: `table` `[n, D]`, `sizes` `[n]` ints in `[0, D]`."""
    table = np.asarray(table, dtype=np.float32)
    sizes = np.asarray(sizes, dtype=np.int64)
    n, D = table.shape
    if sizes.shape != (n,) or sizes.min(initial=0) < 0 or sizes.max(initial=0) > D:
        raise ValueError(f"sizes must be {n} integers in [0, {D}].")
    keep = np.arange(D)[None, :] < sizes[:, None]
    values = np.concatenate([table[keep], np.zeros(1, np.float32)])
    starts = np.concatenate([[0], np.cumsum(sizes)])
    block_offsets = starts[::BLOCK].astype(np.int32)
    if len(block_offsets) < (n + BLOCK - 1) // BLOCK + 1:
        block_offsets = np.concatenate([block_offsets, [starts[-1]]]).astype(np.int32)
    base = 1 if n and sizes.min() >= 1 else 0
    stored = sizes - base
    if stored.max(initial=0) < 16:
        padded = np.concatenate([stored, np.zeros(n % 2, np.int64)]).astype(np.uint8)
        packed = (padded[0::2] | (padded[1::2] << 4)).astype(np.uint8)
        bits = 4
    else:
        packed, bits = stored.astype(np.uint8), 8
    if len(packed) == 0:
        packed = np.zeros(1, np.uint8)
    return RaggedField(values, packed, block_offsets, n, D, bits, base)


def unpack_sizes(field: RaggedField) -> np.ndarray:
    """The d_i back from a `RaggedField` (numpy; tests and reports)."""
    if field.size_bits == 4:
        nib = np.stack([field.sizes & 15, field.sizes >> 4], axis=1).reshape(-1)
        stored = nib[: field.num_rows]
    else:
        stored = field.sizes[: field.num_rows]
    return stored.astype(np.int64) + field.size_base


def _sizes_at(sizes: tf.Tensor, rows: tf.Tensor, bits: int, base: int) -> tf.Tensor:
    if bits == 4:
        byte = tf.cast(tf.gather(sizes, rows // 2), tf.int32)
        stored = tf.bitwise.bitwise_and(tf.bitwise.right_shift(byte, 4 * (rows % 2)), 15)
    else:
        stored = tf.cast(tf.gather(sizes, rows), tf.int32)
    return stored + base


def ragged_lookup(values, sizes, block_offsets, ids, *, num_rows: int, output_dim: int, size_bits: int, size_base: int):
    """Rebuild `[..., D]` embeddings of `ids` from a packed field (serving graph).

    Args:
        values, sizes, block_offsets: the field's tensors or variables.
        ids: int ids in `[0, num_rows)`, any shape.
    """
    ids = tf.cast(ids, tf.int32)
    shape = tf.shape(ids)
    flat = tf.reshape(ids, [-1])
    block = flat // BLOCK
    row0 = block * BLOCK
    rows = row0[:, None] + tf.range(BLOCK)[None, :]
    rows = tf.minimum(rows, num_rows - 1)
    block_sizes = _sizes_at(sizes, rows, size_bits, size_base)
    before = tf.range(BLOCK)[None, :] < (flat - row0)[:, None]
    offset = tf.gather(block_offsets, block) + tf.reduce_sum(tf.where(before, block_sizes, 0), axis=1)
    size = _sizes_at(sizes, flat, size_bits, size_base)
    cols = tf.range(output_dim)[None, :]
    valid = cols < size[:, None]
    idx = tf.where(valid, offset[:, None] + cols, 0)
    out = tf.where(valid, tf.gather(values, idx), tf.zeros([], values.dtype))
    return tf.reshape(out, tf.concat([shape, [output_dim]], 0))


def prefix_lookup_reference(table: np.ndarray, sizes: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Numpy reference of the per-value masked lookup (a second implementation)."""
    table = np.asarray(table)
    D = table.shape[1]
    ids = np.asarray(ids)
    mask = np.arange(D) < np.asarray(sizes)[ids][..., None]
    return table[ids] * mask
