"""Column scores from the joint Fisher information of a field's gates (SSEDS `score="fisher_joint"`).

The diagonal Fisher score (`score="fisher"`) estimates the loss a column's
removal costs with every other column kept, one column at a time. A field
whose information is spread over several columns then looks unimportant column
by column although removing all of them costs a lot, and the global ranking
starves wide fields in favour of narrow ones (measured on planted ranks:
docs/results/planted.md).

With `p[x, j] = dl_x/dalpha[f, j]` (example `x`'s own gradient of the gate of
column `j` of field `f`), removing a set `S` of the field's columns changes
the loss by about `sum_x (sum_{j in S} p[x, j])^2 / 2N` at a trained model
(second order, the empirical Fisher): the quadratic form `1_S' M 1_S` of
`M = P'P / 2N`, cross terms included. `nested_removal_scores` removes columns
one at a time, each time the one whose removal raises that estimate least
(backward elimination), which orders the columns from the most to the least
needed and gives the estimated cost of cutting the field to its first `k`
columns in that order, for every `k`. A column's score is what it saves:
the drop of that cost when it is kept, made non-increasing along the order
(pool adjacent violators: the slopes of the lower convex hull of the cost
curve), so a global ranking of all fields' scores keeps a prefix of each
field's order and, at every budget, spends each column where it saves most.

Pure numpy: the probe (`keras_embdim.search.probes.GateProbe`) accumulates
`P'P`; the callback ranks the scores.
"""

from __future__ import annotations

import numpy as np


def elimination_order(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Backward elimination on one field's `[D, D]` quadratic form.

    Returns:
        `(order, cost)`: `order[p]` is the column kept at position `p` (the
        most needed first); `cost[k]` (`k = 0..D`) is `1_S' m 1_S` for `S` the
        columns not among the first `k` of `order` (`cost[D] = 0`).

    Example:

    >>> order, cost = elimination_order(np.diag([1.0, 4.0, 0.5]))
    >>> order.tolist(), cost.tolist()
    ([1, 0, 2], [5.5, 1.5, 0.5, 0.0])
    """
    m = np.asarray(m, np.float64)
    d = m.shape[0]
    removed = np.zeros(d, bool)
    s = np.zeros(d)  # indicator of the removed columns
    sms = 0.0
    cost = np.zeros(d + 1)
    gone = []
    for step in range(d):
        ms = m @ s
        trial = sms + 2.0 * ms + np.diag(m)  # (s + e_j)' m (s + e_j) for every j
        trial[removed] = np.inf
        j = int(np.argmin(trial))  # lowest index on ties: deterministic
        removed[j] = True
        s[j] = 1.0
        sms = float(trial[j])
        gone.append(j)
        cost[d - 1 - step] = sms
    return np.asarray(gone[::-1], np.int64), cost


def _non_increasing(values: np.ndarray) -> np.ndarray:
    """Pool adjacent violators: the closest non-increasing sequence (equal weights)."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in np.asarray(values, np.float64):
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            mean_b, n_b = blocks.pop()
            mean_a, n_a = blocks.pop()
            blocks.append([(mean_a * n_a + mean_b * n_b) / (n_a + n_b), n_a + n_b])
    return np.concatenate([np.full(int(n), mean) for mean, n in blocks])


def nested_removal_scores(pair_sum: np.ndarray, examples: float) -> np.ndarray:
    """`[F, D]` column scores from the accumulated `sum_x p_x p_x'` of each field (`[F, D, D]`).

    Within a field the scores strictly decrease along the elimination order
    (ties of the pooled slopes broken by that order), so any budget keeps a
    prefix of it.

    Example:

    >>> pair = np.zeros((1, 3, 3)); pair[0] = [[2.0, 2.0, 0.0], [2.0, 2.0, 0.0], [0.0, 0.0, 8.0]]
    >>> s = nested_removal_scores(pair, 1.0)
    >>> [int(j) for j in np.argsort(-s[0])]
    [2, 1, 0]
    """
    pair_sum = np.asarray(pair_sum, np.float64)
    if pair_sum.ndim != 3 or pair_sum.shape[1] != pair_sum.shape[2]:
        raise ValueError(f"`pair_sum` must be [F, D, D]; got shape {pair_sum.shape}.")
    F, D, _ = pair_sum.shape
    scores = np.zeros((F, D))
    for f in range(F):
        m = 0.5 * (pair_sum[f] + pair_sum[f].T) / (2.0 * max(float(examples), 1.0))
        order, cost = elimination_order(m)
        saved = _non_increasing(cost[:-1] - cost[1:])  # what the column at position p saves
        scale = max(float(np.max(np.abs(saved))), 1e-30)
        scores[f, order] = saved - 1e-9 * scale * np.arange(D)  # strict: a prefix at any budget
    return scores
