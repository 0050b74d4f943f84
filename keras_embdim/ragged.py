"""Per-value compaction: each value keeps its own number of leading columns.

Layout of one field (n rows, value i keeps its first d_i columns):

- `values`: float32 `[sum_i d_i + 1]`, the kept prefixes one after another (one
  trailing zero so that the buffer is never empty);
- `alphabet`: uint8, the distinct sizes the field uses (at most D + 1);
- `codes`: each row's index into `alphabet`, a bit stream with the fewest bits
  per row that hold the alphabet (0 to 5 for D = 16): a field whose values all
  have one size stores no per-row data, a field of sizes {0, 3} one bit per
  row; a code is read through a two-byte window, so it may straddle bytes;
- `block_offsets`: int32 `[ceil(n / BLOCK) + 1]`, where block b's values start
  (absent when the code width is 0: the offset of row i is then `i * size`).

A lookup of id i reads its block's offset, decodes the BLOCK codes of the
block, sums the sizes before i, and gathers `D` values from there, zeroing the
columns at or past d_i. Bytes: `4 sum d_i + bits n / 8 + 4 n / BLOCK + small`.
Only standard TensorFlow ops are used, so a SavedModel built on it serves
without keras_embdim. Why this layout: docs/architecture.md.
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
    alphabet: np.ndarray  # uint8
    codes: np.ndarray  # uint8, bit-packed
    block_offsets: np.ndarray  # int32
    num_rows: int
    output_dim: int
    bits: int

    @property
    def arrays(self) -> tuple:
        return (self.values, self.alphabet, self.codes, self.block_offsets)

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays))


def pack_field(table: np.ndarray, sizes: np.ndarray) -> RaggedField:
    """Compact one field: `table` `[n, D]`, `sizes` `[n]` ints in `[0, D]`."""
    table = np.asarray(table, dtype=np.float32)
    sizes = np.asarray(sizes, dtype=np.int64)
    n, D = table.shape
    if sizes.shape != (n,) or sizes.min(initial=0) < 0 or sizes.max(initial=0) > D:
        raise ValueError(f"sizes must be {n} integers in [0, {D}].")
    keep = np.arange(D)[None, :] < sizes[:, None]
    values = np.concatenate([table[keep], np.zeros(1, np.float32)])
    alphabet = np.unique(sizes) if n else np.zeros(1, np.int64)
    bits = int(np.ceil(np.log2(len(alphabet)))) if len(alphabet) > 1 else 0
    if bits == 0:  # one size: offsets are id * size, no per-row data at all
        codes = np.zeros(0, np.uint8)
        block_offsets = np.zeros(0, np.int32)
    else:
        code = np.searchsorted(alphabet, sizes).astype(np.uint8)
        # bit stream, least significant bit first; one spare byte for the window
        stream = ((code[:, None] >> np.arange(bits, dtype=np.uint8)) & 1).astype(np.uint8).reshape(-1)
        codes = np.concatenate([np.packbits(stream, bitorder="little"), np.zeros(1, np.uint8)])
        starts = np.concatenate([[0], np.cumsum(sizes)])
        block_offsets = starts[::BLOCK].astype(np.int32)
    return RaggedField(values, alphabet.astype(np.uint8), codes, block_offsets, n, D, bits)


def unpack_sizes(field: RaggedField) -> np.ndarray:
    """The d_i back from a `RaggedField` (numpy; tests and reports)."""
    if field.bits == 0:
        return np.full(field.num_rows, int(field.alphabet[0]), np.int64)
    pos = np.arange(field.num_rows) * field.bits
    word = field.codes[pos // 8].astype(np.int64) | (field.codes[pos // 8 + 1].astype(np.int64) << 8)
    code = (word >> (pos % 8)) & ((1 << field.bits) - 1)
    return field.alphabet[code].astype(np.int64)


def _sizes_at(alphabet, codes, rows, bits: int) -> tf.Tensor:
    pos = rows * bits
    lo = tf.cast(tf.gather(codes, pos // 8), tf.int32)
    hi = tf.cast(tf.gather(codes, pos // 8 + 1), tf.int32)
    word = tf.bitwise.bitwise_or(lo, tf.bitwise.left_shift(hi, 8))
    code = tf.bitwise.bitwise_and(tf.bitwise.right_shift(word, pos % 8), (1 << bits) - 1)
    return tf.cast(tf.gather(alphabet, code), tf.int32)


def ragged_lookup(values, alphabet, codes, block_offsets, ids, *, num_rows: int, output_dim: int, bits: int):
    """Rebuild `[..., D]` embeddings of `ids` from a packed field (serving graph)."""
    ids = tf.cast(ids, tf.int32)
    shape = tf.shape(ids)
    flat = tf.reshape(ids, [-1])
    if bits == 0:
        size = tf.fill(tf.shape(flat), tf.cast(alphabet[0], tf.int32))
        offset = flat * size
    else:
        block = flat // BLOCK
        row0 = block * BLOCK
        rows = tf.minimum(row0[:, None] + tf.range(BLOCK)[None, :], num_rows - 1)
        block_sizes = _sizes_at(alphabet, codes, rows, bits)
        before = tf.range(BLOCK)[None, :] < (flat - row0)[:, None]
        offset = tf.gather(block_offsets, block) + tf.reduce_sum(tf.where(before, block_sizes, 0), axis=1)
        size = _sizes_at(alphabet, codes, flat, bits)
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
