"""Orthogonal regularity of embedding columns (HAM), the math apart from Keras.

For a field with rows `X` (`[N, D]`, the rows looked up in a batch or sampled
from its table), normalise every column to unit length, `X_hat = X / ||X_col||`,
and penalise `||X_hat^T X_hat - I_keep||_F^2`: the squared cosine similarities
between different columns, plus how far each kept column's own norm term is
from 1. `I_keep` has ones only on kept columns, so removed (all-zero) columns
contribute nothing. Cost: `O(N * F * D^2)`, never `O(rows^2)`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

EPS = 1e-8


def orthogonality_penalty(rows: tf.Tensor, keep: tf.Tensor | None = None) -> tf.Tensor:
    """Sum over fields of `||X_hat^T X_hat - diag(keep)||_F^2`.

    Args:
        rows: `[..., D]` (one field) or `[..., F, D]` with `keep` given as
            `[F, D]`; all leading axes are rows (float16 / bfloat16 rows are
            computed in float32; the penalty is float32).
        keep: optional 0/1 mask `[D]` or `[F, D]`; columns with 0 are left out.
    """
    rows = tf.convert_to_tensor(rows)
    if rows.dtype in (tf.float16, tf.bfloat16):  # a mixed-precision lookup: the penalty in float32
        rows = tf.cast(rows, tf.float32)
    D = rows.shape[-1]
    if keep is not None:
        keep = tf.cast(tf.convert_to_tensor(keep), rows.dtype)
        keep = tf.reshape(keep, [-1, D])
        F = keep.shape[0]
    else:
        F = 1
        keep = tf.ones([1, D], rows.dtype)
    x = tf.reshape(rows, [-1, F, D]) * tf.stop_gradient(keep)
    norms = tf.sqrt(tf.reduce_sum(tf.square(x), axis=0) + EPS)  # [F, D]
    xh = x / norms
    gram = tf.einsum("nfd,nfe->fde", xh, xh)
    target = tf.linalg.diag(keep)  # [F, D, D]
    return tf.reduce_sum(tf.square(gram - target))


def orthogonality_penalty_numpy(rows: np.ndarray, keep: np.ndarray | None = None) -> float:
    """Reference implementation in numpy (tests)."""
    rows = np.asarray(rows, dtype=np.float64)
    D = rows.shape[-1]
    keep = np.ones((1, D)) if keep is None else np.asarray(keep, dtype=np.float64).reshape(-1, D)
    x = rows.reshape(-1, keep.shape[0], D) * keep
    total = 0.0
    for f in range(keep.shape[0]):
        xf = x[:, f, :]
        xh = xf / np.sqrt((xf**2).sum(0) + EPS)
        total += float(((xh.T @ xh - np.diag(keep[f])) ** 2).sum())
    return total


def mean_abs_column_correlation(table: np.ndarray) -> float:
    """Mean |cosine| between distinct columns of a table (diagnostic)."""
    t = np.asarray(table, dtype=np.float64)
    th = t / np.sqrt((t**2).sum(0) + EPS)
    g = th.T @ th
    off = g[~np.eye(g.shape[0], dtype=bool)]
    return float(np.abs(off).mean())
