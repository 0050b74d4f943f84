"""Choosing which field-dimensions to keep under a parameter budget.

Pure numpy, shared by every per-field method that ends with a global ranking
(SingleShotPruner, and the final ranking of HardMaskEmbedding's scores).
"""

from __future__ import annotations

import numpy as np


def budget_params(budget: float, full_params: int) -> int:
    return int(np.floor(budget * full_params + 1e-9))


def min_params(costs_per_group, dims_per_group: int, min_dim: int) -> int:
    return int(np.sum(np.asarray(costs_per_group, dtype=np.int64)) * min(min_dim, dims_per_group))


def select_under_budget(
    scores: np.ndarray,
    costs: np.ndarray,
    target_params: int,
    *,
    min_dim: int = 1,
    ranking: str = "score",
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Keep the best field-dimensions until the kept parameters reach a target.

    Args:
        scores: `[G, D]` importance of column `j` of group (field) `g`; larger is
            more important. NaN counts as least important.
        costs: `[G]` parameters one column of group `g` costs (its vocabulary).
        target_params: the budget in parameters.
        min_dim: every group keeps at least its `min_dim` best columns (these
            are kept first, whatever they cost).
        ranking: "score" ranks by score alone (the SSEDS paper); "cost" ranks by
            score per parameter (favours cheap columns).
        valid: optional boolean `[G, D]`: cells that exist (layers of different
            widths are padded to the widest); invalid cells are never kept.

    Returns:
        boolean keep array `[G, D]`. The kept parameters never exceed
        `target_params` (unless the `min_dim` floor alone does, which is an
        error) and fall short of it by less than the cost of one column that
        was not kept: within one field-dimension of the budget.
    """
    scores = np.asarray(scores, dtype=np.float64)
    costs = np.asarray(costs, dtype=np.int64)
    if scores.ndim != 2 or costs.shape != (scores.shape[0],):
        raise ValueError(f"scores must be [G, D] and costs [G]; got {scores.shape}, {costs.shape}.")
    if ranking not in ("score", "cost"):
        raise ValueError(f"`ranking` must be 'score' or 'cost'; received {ranking!r}.")
    G, D = scores.shape
    valid = np.ones((G, D), bool) if valid is None else np.asarray(valid, bool)
    # NaN scores rank below every real score, invalid cells below those.
    scores = np.where(np.isnan(scores), -np.inf, scores)
    keep = np.zeros((G, D), dtype=bool)
    widths = valid.sum(1)
    order = np.argsort(np.where(valid, -scores, np.inf), axis=1, kind="stable")
    for g in range(G):
        floor = min(int(min_dim), int(widths[g]))
        keep[g, order[g, :floor]] = True
    used = int((keep.sum(1) * costs).sum())
    if used > target_params:
        raise ValueError(
            f"the budget of {target_params} parameters is smaller than what min_dim={min_dim} "
            f"alone keeps ({used} parameters); raise `budget` to at least "
            f"{used / max(1, int(costs.sum()) * D):.4f} or lower `min_dim`."
        )
    key = scores / np.maximum(costs, 1)[:, None] if ranking == "cost" else scores
    flat = np.argsort(np.where(valid, -key, np.inf), axis=None, kind="stable")
    for idx in flat:
        g, j = divmod(int(idx), D)
        if keep[g, j] or not valid[g, j]:
            continue
        c = int(costs[g])
        if used + c <= target_params:
            keep[g, j] = True
            used += c
            if used == target_params:
                break
    return keep
