"""Chunked reads and writes of embedding-table rows, without whole-table copies.

Pruning zeroes removed entries of tables and optimizer slots; the exporter
reads kept entries. Both go through these helpers, a bounded number of rows at
a time, so that a ten-million-row table is never copied whole (a whole-table
numpy copy per variable made PME's landing the peak of training at 1e6 rows).
Distributed (mirrored) variables are handled too: their slices cannot be
assigned, so rows are scattered.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import tensorflow as tf

from keras_embdim import _compat

CHUNK_ROWS = 1 << 16  # rows per step: 4 MB of a 16-wide float32 table


def chunks(start: int, stop: int, size: int | None = None) -> Iterator[tuple[int, int]]:
    """`(a, b)` row ranges of at most `size` (default `CHUNK_ROWS`) rows covering `[start, stop)`."""
    size = int(size or CHUNK_ROWS)
    for a in range(int(start), int(stop), size):
        yield a, min(a + size, int(stop))


def read_rows(variable, start: int, stop: int, columns: np.ndarray | None = None) -> np.ndarray:
    """Rows `[start, stop)` of a table variable (optionally only `columns`), as numpy.

    A resource gather of those rows: the rest of the table is not read.
    """
    rows = tf.gather(_compat.tf_variable(variable), tf.range(int(start), int(stop)))
    if columns is not None:
        rows = tf.gather(rows, np.asarray(columns, np.int32), axis=1)
    return rows.numpy()


def assign_rows(variable, start: int, stop: int, rows) -> None:
    """`variable[start:stop] = rows`, as a row scatter.

    Not a sliced assign: `v[a:b]` reads the whole variable (a `ReadVariableOp`
    whose tensor shares the buffer) and the strided-slice assign that follows
    then copies the whole buffer before writing its rows (a dense update of a
    shared buffer). Chunk by chunk that was one table copy per chunk: pruning
    a 1e7-row table and its optimizer slots took minutes
    (docs/guides/scaling.md). A scatter writes only its rows (and works for
    mirrored variables, whose slices cannot be assigned).
    """
    v = _compat.tf_variable(variable)
    v.scatter_update(tf.IndexedSlices(tf.convert_to_tensor(rows, v.dtype), tf.range(int(start), int(stop))))


def scale_rows(variable, start: int, stop: int, keep) -> None:
    """`variable[start:stop] *= keep` (`keep` broadcasts against `[rows, D]`), chunk by chunk."""
    v = _compat.tf_variable(variable)
    for a, b in chunks(start, stop, 1 << 18):
        assign_rows(v, a, b, tf.gather(v, tf.range(a, b)) * tf.cast(keep, v.dtype))


def zero_beyond_sizes(variable, sizes: np.ndarray) -> None:
    """Zero the entries of row g beyond its first `sizes[g]` columns, chunk by chunk."""
    sizes = np.asarray(sizes).astype(np.int32)
    v = _compat.tf_variable(variable)
    cols = tf.range(int(v.shape[1]), dtype=tf.int32)
    for a, b in chunks(0, sizes.shape[0], 1 << 18):
        keep = cols[None, :] < tf.constant(sizes[a:b, None])
        assign_rows(v, a, b, tf.gather(v, tf.range(a, b)) * tf.cast(keep, v.dtype))
