"""PME's pruning step, apart from Keras: keep the most important table entries over all tables."""

from __future__ import annotations

import numpy as np

from keras_embdim import rows as row_ops

# rows per step: each of the step's ~10 temporaries (keys, masks, ranks) holds 2^15 x D entries, a few MB
# at D = 16 (at 2^18 rows they were ~200 MB together, a third of a 1e7-row table)
CHUNK_ROWS = 1 << 15


def _rows(imp, start: int, stop: int) -> np.ndarray:
    """Rows `[start, stop)` of an importance array or variable (a resource gather of those rows)."""
    if isinstance(imp, np.ndarray):
        return imp[start:stop]
    return row_ops.read_rows(imp, start, min(stop, int(imp.shape[0])))


def _floor_mask(imp: np.ndarray, k: int) -> np.ndarray:
    """Each row's `k` most important entries (`[rows, D]` bool)."""
    m = np.zeros(imp.shape, bool)
    if k:
        np.put_along_axis(m, np.argpartition(-imp, k - 1, axis=1)[:, :k], True, axis=1)
    return m


def _keys(imp: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """uint32 keys ordered as the importances (NaN as -1); entries in `floor` get 0, below all."""
    x = np.nan_to_num(np.asarray(imp, np.float32), nan=-1.0) + np.float32(0.0)  # -0.0 -> +0.0: equal keys
    bits = x.view(np.uint32)
    keys = np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31))
    keys[floor] = 0
    return keys


def select_entries(importances: list, target: int, min_size: int = 0, *,
                   chunk_rows: int = CHUNK_ROWS) -> list[np.ndarray]:
    """Keep the `target` most important entries over all tables; rows keep >= `min_size`.

    Args:
        importances: per table, `[rows, D]` importance of every entry (NaN ranks last): a numpy
            array or a variable, read `chunk_rows` rows at a time either way.
        target: entries to keep over all tables.
        min_size: every row first keeps its `min_size` most important entries.
        chunk_rows: rows read at a time.

    Returns:
        per table, the number of surviving entries of each row (its capacity).

    The `target`-th largest importance is found by a radix selection on the
    floats' ordered bit patterns (a histogram of their high 16 bits, then of
    the low 16 bits within the bin that holds it), ties broken in row order;
    every pass reads the tables `chunk_rows` rows at a time, so besides the
    importances themselves no temporary spans a table (a 1e7-row table has
    1.6e8 entries: a sort or partition copy of them was 1.3 GB).

    Example:

    >>> [c.tolist() for c in select_entries([np.array([[3., 1.], [2., 0.]])], target=2)]
    [[1, 1]]
    """
    k = min_size

    def chunked():
        for imp in importances:
            for a in range(0, imp.shape[0], chunk_rows):
                part = _rows(imp, a, a + chunk_rows)
                floor = _floor_mask(part, min(k, imp.shape[1]))
                yield part, floor, _keys(part, floor)

    floor_total = sum(int(f.sum()) for _, f, _ in chunked()) if k else 0
    if floor_total > target:
        raise ValueError(
            f"the budget of {target} entries is smaller than min_dim={min_size} per value alone ({floor_total})."
        )
    rest = target - floor_total
    kth, missing = np.uint32(0xFFFFFFFF), 0  # nothing above the floor is kept
    if rest > 0:
        # high 16 bits: the bin holding the rest-th largest key, and how many keys lie above it
        high = np.zeros(1 << 16, np.int64)
        for _, _, keys in chunked():
            high += np.bincount((keys >> 16).ravel(), minlength=1 << 16)
        above = np.cumsum(high[::-1])[::-1]  # keys in bins >= b
        b = int(np.flatnonzero(above >= rest)[-1])
        need = rest - (int(above[b + 1]) if b + 1 < high.size else 0)
        low = np.zeros(1 << 16, np.int64)
        for _, _, keys in chunked():
            inside = keys[(keys >> 16) == b]
            low += np.bincount((inside & 0xFFFF).ravel(), minlength=1 << 16)
        above_low = np.cumsum(low[::-1])[::-1]
        c = int(np.flatnonzero(above_low >= need)[-1])
        kth = np.uint32((b << 16) | c)
        missing = need - (int(above_low[c + 1]) if c + 1 < low.size else 0)  # ties at kth to keep
    counts = []
    stream = chunked()
    for imp in importances:
        out = np.empty(imp.shape[0], np.int32)
        for a in range(0, imp.shape[0], chunk_rows):
            _, floor, keys = next(stream)
            chosen = (keys > kth) | floor
            if missing:
                tie = keys == kth
                rank = np.cumsum(tie.ravel()).reshape(tie.shape)  # 1-based, in row order
                chosen |= tie & (rank <= missing)
                missing -= min(missing, int(tie.sum()))
            out[a : a + chunk_rows] = chosen.sum(axis=1)
        counts.append(out)
    return counts
