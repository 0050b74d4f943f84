"""The math of the adaptively-masked twins layer (AMTL), apart from Keras.

`TwinsMaskLayer` is the Keras glue; this module holds what can be checked by
hand: the frequency features a value's size is a function of, the twin
branches and their frequency-weighted mix, the straight-through prefix mask,
and the final landing of all values' sizes on a parameter budget.

Notation: D is the embedding width, sizes are `min_dim, ..., D` (K = D -
min_dim + 1 candidates), a value's logits are `z in R^K`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

#: number of frequency features per value (before the field one-hot)
NUM_FREQUENCY_FEATURES = 2


def frequency_features(counts: tf.Tensor, field_max: tf.Tensor, field_mean: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """`(q, s)`: the mixing weight and the frequency features of values.

    Args:
        counts: occurrence counts `c` of the values (any shape).
        field_max: the largest count in each value's field (same shape).
        field_mean: the mean count per value of each value's field (same shape).

    Returns:
        q: `log(1 + c) / log(1 + max_f)` in [0, 1], the value's normalised
            occurrence count (the rank-like weight that mixes the twins);
        s: `[..., 2]` = `[q, tanh((log(1 + c) - log(1 + mean_f)) / 2)]`, the
            count relative to the field's largest and to its average.
    """
    lc = tf.math.log1p(tf.maximum(counts, 0.0))
    q = tf.math.divide_no_nan(lc, tf.math.log1p(tf.maximum(field_max, 0.0)))
    q = tf.clip_by_value(q, 0.0, 1.0)
    rel = tf.tanh((lc - tf.math.log1p(tf.maximum(field_mean, 0.0))) / 2.0)
    return q, tf.stack([q, rel], axis=-1)


def mlp_logits(x: tf.Tensor, w1, b1, w2, b2) -> tf.Tensor:
    """One twin branch: `relu(x W1 + b1) W2 + b2` over the last axis."""
    h = tf.nn.relu(tf.tensordot(x, w1, axes=[[-1], [0]]) + b1)
    return tf.tensordot(h, w2, axes=[[-1], [0]]) + b2


def twins_logits(x: tf.Tensor, q: tf.Tensor, high: Sequence, low: Sequence) -> tf.Tensor:
    """`q * h(x) + (1 - q) * l(x)`: frequent values are sized by `h`, rare by `l`."""
    q = tf.expand_dims(q, -1)
    return q * mlp_logits(x, *high) + (1.0 - q) * mlp_logits(x, *low)


def size_table(min_dim: int, output_dim: int) -> np.ndarray:
    """The candidate sizes `[min_dim, ..., D]`."""
    return np.arange(min_dim, output_dim + 1, dtype=np.int32)


def prefix_matrix(min_dim: int, output_dim: int) -> np.ndarray:
    """`L[k, j] = 1` if `j < size_k`: row k is the prefix mask of candidate k."""
    sizes = size_table(min_dim, output_dim)
    return (np.arange(output_dim)[None, :] < sizes[:, None]).astype(np.float32)


def biased_logits(z: tf.Tensor, size_bias, min_dim: int, output_dim: int) -> tf.Tensor:
    """`z_k - bias * size_k / D`: the budget's price on each candidate size."""
    sizes = tf.constant(size_table(min_dim, output_dim), z.dtype) / float(output_dim)
    return z - tf.cast(size_bias, z.dtype) * sizes


def straight_through_mask(z: tf.Tensor, temperature, min_dim: int, output_dim: int) -> tuple[tf.Tensor, tf.Tensor]:
    """The prefix mask of `argmax z`, exactly 0/1, with the gradient of the softmax.

    `p = softmax(z / T)`; forward `M = L[argmax z]`; backward through `p L`
    (the straight-through form `t = p + stop_gradient(onehot - p)` of AMTL,
    written so that the forward value is exactly the hard mask: `soft -
    stop_gradient(soft)` is exactly 0 in floating point).

    Returns:
        (mask `[..., D]`, chosen size `[...]` as float with the same gradient
        path, i.e. forward `size_k*`, backward `d(p . sizes)`).
    """
    L = tf.constant(prefix_matrix(min_dim, output_dim), z.dtype)
    sizes = tf.constant(size_table(min_dim, output_dim), z.dtype)
    p = tf.nn.softmax(z / tf.cast(temperature, z.dtype), axis=-1)
    k = tf.argmax(z, axis=-1, output_type=tf.int32)
    hard = tf.gather(L, k)
    soft = tf.tensordot(p, L, axes=[[-1], [0]])
    mask = hard + (soft - tf.stop_gradient(soft))
    soft_size = tf.reduce_sum(p * sizes, axis=-1)
    size = tf.gather(sizes, k) + (soft_size - tf.stop_gradient(soft_size))
    return mask, size


# ------------------------------------------------------------- budget landing
def land_on_budget(
    blocks: Sequence[dict],
    target: int,
    iterations: int = 80,
) -> tuple[list[np.ndarray], float]:
    """Sizes for groups of identical values that keep at most `target` params.

    Every value of a group has the same logits (the twins see only its field and
    count), so the search runs over groups. One price `bias` per parameter is
    found by bisection so that the sizes `argmax_k(z_k - bias * size_k)` keep
    the most parameters not above `target` (the Lagrangian relaxation of
    "maximise the sum of chosen logits under the budget"), over all blocks
    (layers) at once. Values whose size changes at that price are then
    promoted, highest `order` (frequency) first, while the target allows. The
    result is never above the target and within one value's size step of it.

    Args:
        blocks: one dict per layer with `z` `[G, K]` logits per group,
            `multiplicity` `[G]` values per group, `order` `[G]` promotion
            priority, `min_dim` and `output_dim`.
        target: the budget in parameters.

    Returns:
        (sizes, bias): per block, the sizes of each group's values concatenated
        in group order (`multiplicity[g]` entries for group g), and the price.
    """
    prepared = []
    floor = 0
    for b in blocks:
        z = np.asarray(b["z"], np.float64)
        m = np.asarray(b["multiplicity"], np.int64)
        sizes = size_table(int(b["min_dim"]), int(b["output_dim"])).astype(np.float64)
        prepared.append((z, m, sizes, np.asarray(b["order"], np.float64)))
        floor += int(m.sum()) * int(b["min_dim"])
    if floor > target:
        raise ValueError(f"the budget of {target:,} parameters is below min_dim per value ({floor:,}).")

    def choose(bias):
        return [s[np.argmax(z - bias * s[None, :], axis=1)].astype(np.int64) for z, m, s, _ in prepared]

    def total(chosen):
        return int(sum((m * c).sum() for (z, m, s, _), c in zip(prepared, chosen)))

    span = max((float(np.ptp(z, axis=1).max(initial=0.0)) for z, *_ in prepared), default=0.0)
    hi = span + 1.0  # a price above the largest logit gap per unit of size: every value takes min_dim
    lo = -hi  # every value takes D
    if total(choose(lo)) <= target:
        chosen = choose(lo)
        return [np.repeat(c, m).astype(np.int32) for (z, m, s, _), c in zip(prepared, chosen)], lo
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if total(choose(mid)) > target:
            lo = mid
        else:
            hi = mid
    under, over = choose(hi), choose(lo)
    room = target - total(under)
    per_value = [[np.full(int(c), int(u), np.int32) for c, u in zip(m, un)] for (z, m, s, _), un in zip(prepared, under)]
    # promote, most frequent groups first, over all blocks
    cand = [
        (-order[g], bi, g)
        for bi, ((z, m, s, order), un, ov) in enumerate(zip(prepared, under, over))
        for g in np.flatnonzero(ov > un)
    ]
    for _, bi, g in sorted(cand):
        step = int(over[bi][g] - under[bi][g])
        if room < step:
            continue
        n = min(int(prepared[bi][1][g]), room // step)
        per_value[bi][g][:n] = over[bi][g]
        room -= n * step
    out = [np.concatenate(p) if p else np.zeros(0, np.int32) for p in per_value]
    return out, hi
