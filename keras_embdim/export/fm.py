"""Factorization-machine terms computed from the kept values (no padded embeddings).

`keras_embdim.models.FMInteraction` computes, over `[batch, F, D]` embeddings,

    0.5 * sum_j ((sum_f e[f, j])^2 - sum_f e[f, j]^2)

A removed column is an exact zero, so the term only needs the kept values `x`
`[batch, K]` and, for each, its column j: `s = x @ M` (`M[k, j] = 1` where kept
value k sits in column j) gives the column sums `[batch, D]`, and `sum((x*x) @ w)`
the squares (`w[k]`: how many places value k fills). The exported graph then
multiplies `[batch, K]` by a `[K, D]` 0/1 matrix instead of placing every value of
the `[batch, F, D]` tensor (one element gather per entry) for the layer to sum.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from keras_embdim import _utils


def is_fm(layer: Any) -> bool:
    """Whether `layer` is `keras_embdim.models.FMInteraction` (exact type)."""
    from keras_embdim.models import FMInteraction

    return type(layer) is FMInteraction


def fm_weights(cols: np.ndarray, output_dim: int, kept: int) -> tuple[np.ndarray, np.ndarray]:
    """`(M, w)` for `kept` values, given `cols[i]`, the kept value at flat position i of the
    layer's `[F, D]` input (-1: a removed column, zero): `M[k, j]` counts the places of value k
    in column j, `w[k]` all its places.

    Example:

    >>> m, w = fm_weights(np.array([0, -1, 2, 1]), 2, 3)   # F = 2, D = 2
    >>> m.tolist(), w.tolist()
    ([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], [1.0, 1.0, 1.0])
    """
    cols = np.asarray(cols, np.int64)
    j = np.arange(cols.shape[0]) % output_dim
    m = np.zeros((kept, output_dim), np.float32)
    np.add.at(m, (cols[cols >= 0], j[cols >= 0]), 1.0)
    return m, m.sum(axis=1)


def fm(x: tf.Tensor, m: Any, w: Any, dtype: tf.DType) -> tf.Tensor:
    """`[batch, 1]`: the FM term of the kept values `x` `[batch, K]` (`fm_weights`)."""
    x = tf.cast(x, dtype)
    s = _utils.matmul(x, tf.cast(m, dtype))  # [batch, D]: each column's sum over fields
    squares = _utils.matmul(x * x, tf.cast(w, dtype)[:, None])  # [batch, 1]
    return 0.5 * (tf.reduce_sum(s * s, axis=1, keepdims=True) - squares)
