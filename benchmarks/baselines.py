"""Baselines the benchmarks compare the searches with (not part of the library).

- `mixed_dimension_dims`: Mixed Dimension Embeddings' popularity rule per field;
- `frequency_value_dims`: the same rule applied to each value's training count
  (the "frequency heuristic" of the low-budget benchmarks).

Both scale `lam * weight` to the budget with one bisection (`largest_scale`).
"""

from __future__ import annotations

import numpy as np


def largest_scale(dims_of, cost_of, target: float, high: float, iterations: int = 100) -> float:
    """The largest `lam` in `[0, high]` with `cost_of(dims_of(lam)) <= target` (bisection;
    the cost grows with `lam`)."""
    lo, hi = 0.0, float(high)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if cost_of(dims_of(mid)) <= target:
            lo = mid
        else:
            hi = mid
    return lo


def _check(budget: float, min_dim: int, output_dim: int) -> None:
    if not (isinstance(budget, (int, float)) and 0 < budget <= 1):
        raise ValueError(f"budget must be a fraction in (0, 1]; received {budget!r}.")
    if not 0 <= min_dim <= output_dim:
        raise ValueError(f"min_dim must be in [0, {output_dim}]; received {min_dim!r}.")


def mixed_dimension_dims(vocab_sizes, output_dim: int, budget: float, *, alpha: float = 0.3,
                         min_dim: int = 1) -> np.ndarray:
    """Per-field dims by the popularity rule of Mixed Dimension Embeddings.

    Ginart et al. (2021) give a block of popularity `p` a dimension
    proportional to `p ** alpha`. Per field, a value of field f is looked up
    once per example among `n_f` values, so `p_f = 1 / n_f` and
    `d_f = clip(round(lam * n_f ** -alpha), min_dim, output_dim)`, with `lam`
    the largest scale whose kept parameters `sum_f n_f d_f` stay within
    `budget * sum_f n_f * output_dim`; the budget that rounding leaves is then
    spent one dim at a time on the fields furthest below their ideal size (by
    ratio) that still fit. `alpha = 0.3` is a middle value of the range the
    paper sweeps.

    Returns:
        int array of dims per field; never over the budget unless even
        `min_dim` everywhere is (then every field gets `min_dim`).

    Example:

    >>> mixed_dimension_dims([100, 100], 16, 0.5, alpha=0.0).tolist()
    [8, 8]
    """
    n = np.asarray(vocab_sizes, dtype=np.float64)
    if n.ndim != 1 or n.size == 0 or np.any(n < 1):
        raise ValueError(f"vocab_sizes must be a non-empty list of positive sizes; received {vocab_sizes!r}.")
    _check(budget, min_dim, output_dim)
    target = budget * n.sum() * output_dim
    weight = n ** -float(alpha)

    def dims(lam):
        return np.clip(np.round(lam * weight), min_dim, output_dim).astype(np.int64)

    lam = largest_scale(dims, lambda d: (n * d).sum(), target, output_dim / weight.min() + 1.0)
    d = dims(lam)
    ideal = lam * weight
    while True:  # rounding leaves budget unused: one dim to the field furthest below its ideal that fits
        room = target - (n * d).sum()
        ok = (d < output_dim) & (n <= room)
        if not ok.any():
            return d
        f = int(np.argmax(np.where(ok, ideal / np.maximum(d, 0.5), -np.inf)))
        d[f] += 1


def frequency_value_dims(counts, output_dim: int, budget: float, *, alpha: float = 0.3,
                         min_dim: int = 0) -> np.ndarray:
    """Per-value dims by frequency: the MDE popularity rule applied to each value.

    Value i seen `c_i` times gets `d_i = clip(round(lam * (c_i + 1) ** alpha),
    min_dim, output_dim)` with `lam` the largest scale whose kept parameters
    `sum_i d_i` stay within `budget * len(counts) * output_dim`; the budget
    that rounding leaves goes one dim at a time to the most frequent values
    below `output_dim`. With `min_dim=0` the rarest values keep nothing.

    Example:

    >>> frequency_value_dims([100, 10, 1, 0], 4, 0.25).tolist()
    [2, 1, 1, 0]
    """
    c = np.asarray(counts, dtype=np.float64).reshape(-1)
    if c.size == 0 or np.any(c < 0):
        raise ValueError("counts must be a non-empty array of non-negative counts.")
    _check(budget, min_dim, output_dim)
    target = int(np.floor(budget * c.size * output_dim))
    weight = (c + 1.0) ** float(alpha)

    def dims(lam):
        return np.clip(np.round(lam * weight), min_dim, output_dim).astype(np.int64)

    d = dims(largest_scale(dims, lambda d: d.sum(), target, output_dim / weight.min() + 1.0))
    room = target - int(d.sum())
    if room > 0:
        order = np.argsort(-c, kind="stable")
        below = order[d[order] < output_dim][:room]
        d[below] += 1
    return d
