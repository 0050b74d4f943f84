"""Budgets: how many parameters a budget keeps, and which field-dimensions to keep.

Pure numpy, shared by every per-field method that ends with a global ranking
(SingleShotPruner, and the final ranking of HardMaskEmbedding's scores), and
`ByteBudget`, a budget in bytes for any search callback.
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
    max_columns: int | None = None,
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
        max_columns: optional cap on the kept field-dimensions (columns) of all
            groups together, the `min_dim` floor included: the width of the
            concatenated embeddings a model's first Dense layer multiplies.
            The best columns are kept while both the parameters and the
            columns fit.

    Returns:
        boolean keep array `[G, D]`. The kept parameters never exceed
        `target_params` (unless the `min_dim` floor alone does, which is an
        error) and, when the column cap is not what stopped the ranking,
        fall short of it by less than the cost of one column that was not
        kept: within one field-dimension of the budget. The kept columns
        never exceed `max_columns`.

    Example:

    >>> scores = np.array([[0.9, 0.8, 0.1], [0.7, 0.6, 0.5]])
    >>> select_under_budget(scores, np.array([10, 1000]), 2020, min_dim=1).astype(int).tolist()
    [[1, 1, 0], [1, 1, 0]]
    >>> select_under_budget(scores, np.array([10, 1000]), 2020, min_dim=1, max_columns=3).astype(int).tolist()
    [[1, 1, 0], [1, 0, 0]]
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
    columns = int(keep.sum())
    if max_columns is not None and columns > max_columns:
        raise ValueError(
            f"the cap of {max_columns} columns is smaller than what min_dim={min_dim} alone keeps "
            f"({columns} columns); raise the column cap (`width_budget`) to at least "
            f"{columns / max(1, int(valid.sum())):.4f} or lower `min_dim`."
        )
    if used > target_params:
        raise ValueError(
            f"the budget of {target_params} parameters is smaller than what min_dim={min_dim} "
            f"alone keeps ({used} parameters); raise `budget` to at least "
            f"{used / max(1, int(costs.sum()) * D):.4f} or lower `min_dim`."
        )
    key = scores / np.maximum(costs, 1)[:, None] if ranking == "cost" else scores
    flat = np.argsort(np.where(valid, -key, np.inf), axis=None, kind="stable")
    for idx in flat:
        if max_columns is not None and columns >= max_columns:
            break
        g, j = divmod(int(idx), D)
        if keep[g, j] or not valid[g, j]:
            continue
        c = int(costs[g])
        if used + c <= target_params:
            keep[g, j] = True
            used += c
            columns += 1
            if used == target_params:
                break
    return keep


class ByteBudget:
    """A budget in bytes of embedding tables, for any search callback's `budget=`.

    The search keeps at most `nbytes / bytes_per_param` embedding parameters
    (of all its layers together): `bytes_per_param` is 4 for float32 exports,
    2 for `table_dtype="float16"`. Per-field exports then hold exactly those
    bytes; per-value exports add their index (at most 10%, docs/reference/methods.md).

    Args:
        nbytes: bytes of the kept tables, a positive integer.
        bytes_per_param: 4 (float32), 2 (float16) or 1 (int8, whose per-row
            scales come on top).

    Example:

    >>> import keras_embdim as ked
    >>> cb = ked.SingleShotPruner(budget=ked.ByteBudget(2_000_000))
    """

    def __init__(self, nbytes: int, bytes_per_param: int = 4):
        if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)) or nbytes <= 0:
            raise ValueError(
                f"ByteBudget: `nbytes` must be a positive integer number of bytes; received nbytes={nbytes!r}.")
        if bytes_per_param not in (1, 2, 4):
            raise ValueError(
                f"ByteBudget: `bytes_per_param` must be 1, 2 or 4; received bytes_per_param={bytes_per_param!r}.")
        self.nbytes = int(nbytes)
        self.bytes_per_param = int(bytes_per_param)

    def params(self) -> int:
        return self.nbytes // self.bytes_per_param

    def fraction(self, full_params: int) -> float:
        """The kept fraction of `full_params` this budget allows (capped at 1)."""
        return min(1.0, self.params() / full_params) if full_params else 1.0

    def __repr__(self) -> str:
        return f"ByteBudget({self.nbytes:,} B at {self.bytes_per_param} B per parameter)"
