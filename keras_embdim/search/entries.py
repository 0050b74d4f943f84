"""PME's pruning step, apart from Keras: keep the most important table entries over all tables."""

from __future__ import annotations

import numpy as np


def select_entries(importances: list[np.ndarray], target: int, min_size: int = 0) -> list[np.ndarray]:
    """Keep the `target` most important entries over all tables; rows keep >= `min_size`.

    Args:
        importances: per table, `[rows, D]` importance of every entry (NaN ranks last).
        target: entries to keep over all tables.
        min_size: every row first keeps its `min_size` most important entries.

    Returns:
        per table, the number of surviving entries of each row (its capacity).

    The global selection is a partition around the `target`-th largest
    importance, ties broken in row order: no index array of a whole table (a
    million-row table has 64M entries).

    Example:

    >>> [c.tolist() for c in select_entries([np.array([[3., 1.], [2., 0.]])], target=2)]
    [[1, 1]]
    """
    counts = []
    floor_total = 0
    marked = []
    for imp in importances:
        k = min(min_size, imp.shape[1])
        m = np.zeros(imp.shape, bool)
        if k:
            top = np.argpartition(-imp, k - 1, axis=1)[:, :k]
            np.put_along_axis(m, top, True, axis=1)
        marked.append(m)
        floor_total += int(m.sum())
    if floor_total > target:
        raise ValueError(
            f"the budget of {target} entries is smaller than min_dim={min_size} per value alone ({floor_total})."
        )
    rest = target - floor_total
    # candidates: every entry not already kept by min_size (those are -inf here)
    parts = []
    for imp, m in zip(importances, marked):
        part = np.nan_to_num(np.asarray(imp, np.float32), nan=-1.0, copy=True).ravel()
        part[m.ravel()] = -np.inf
        parts.append(part)
    flat = parts[0] if len(parts) == 1 else np.concatenate(parts)
    del parts
    chosen = np.zeros(flat.shape, bool)
    if rest > 0:
        # the rest-th largest value, then everything above it and the first of its ties
        kth = np.partition(flat, flat.size - rest)[flat.size - rest]
        np.greater(flat, kth, out=chosen)
        missing = rest - int(chosen.sum())
        if missing > 0:
            ties = np.flatnonzero(flat == kth)[:missing]
            chosen[ties] = True
    start = 0
    for imp, m in zip(importances, marked):
        c = chosen[start : start + imp.size].reshape(imp.shape) | m
        start += imp.size
        counts.append(c.sum(axis=1).astype(np.int32))
    return counts
