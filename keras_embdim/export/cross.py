"""DCN cross layers computed on the kept columns only (folding through a cross stack).

A cross layer (DCN-v2: `keras_rs.layers.FeatureCross`, TFRS'
`tfrs.layers.dcn.Cross`) computes

    x_{l+1} = x0 * (act(x_l @ W + b) + diag_scale * x_l) + x_l      (W = U @ V when low-rank)

over `d` input columns, with a `[d, d]` (or `[d, r]` and `[r, d]`) kernel. When
a searched layer feeds `x0` through data-moving layers only, a removed column
`j` is an exact zero in `x0` and in `x_0 = x0`, and stays one in every `x_l`:
`x0[j] * (...) + x_l[j] = 0`. So the whole stack can run on the kept columns
`c` alone, with `W[c][:, c]` (`U[c]`, `V[:, c]`) and `b[c]`: a removed
column's row of W multiplies a zero and its output column is a zero. The
cost of a cross layer falls from `d^2` to `k^2` multiply-adds per example
(`k` kept columns), and its kernel ships only those rows and columns.

`act` (the layer's pre-activation) must act on each column alone, which is
checked by probing it (`elementwise`), not assumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from keras_embdim import _utils

#: (top-level package, class name) of the cross layers folded through
CROSS_LAYERS = (("keras_rs", "FeatureCross"), ("tensorflow_recommenders", "Cross"))


def is_cross(layer: Any) -> bool:
    """Whether `layer` is one of `CROSS_LAYERS` (exact types: a subclass may compute otherwise),
    found without importing their packages."""
    kind = type(layer)
    return (kind.__module__.split(".")[0], kind.__name__) in CROSS_LAYERS


@dataclass
class CrossSpec:
    """A cross layer's weights and options, read from the layer.

    `down` is U `[d, r]` of a low-rank layer (None for a full-rank one), `up` is
    V `[r, d]` (or W `[d, d]`), `bias` `[d]` or None.
    """

    down: np.ndarray | None
    up: np.ndarray
    bias: np.ndarray | None
    diag_scale: float
    activation: Callable | None

    @property
    def input_dim(self) -> int:
        return int(self.up.shape[1])


def cross_spec(layer: Any) -> CrossSpec:
    """The weights of a built cross layer (`is_cross`).

    Both layers keep W (or U and V) in inner `Dense` layers: the one with `d` units holds W
    or V, its bias and the pre-activation; a low-rank layer's other one (no bias) holds U.
    Raises ValueError when the layer is not built or holds another arrangement."""
    config = layer.get_config()
    denses = [sub for sub in _utils.flatten_layers(layer)[1:] if type(sub).__name__ == "Dense"]
    if not denses or not all(d.built for d in denses):
        raise ValueError(f"cross layer '{layer.name}' is not built")
    kernels = [_utils.to_numpy(d.kernel) for d in denses]
    if config.get("projection_dim") is None:
        if len(denses) != 1 or kernels[0].shape[0] != kernels[0].shape[1]:
            raise ValueError(f"cross layer '{layer.name}' (full rank) holds {len(denses)} Dense layers, expected one "
                             "with a square kernel")
        down, main = None, denses[0]
    else:
        r = int(config["projection_dim"])
        ups = [d for d, k in zip(denses, kernels) if k.shape[0] == r]
        downs = [d for d, k in zip(denses, kernels) if k.shape[1] == r and d.bias is None]
        if len(denses) != 2 or len(ups) != 1 or len(downs) != 1 or ups[0] is downs[0]:
            raise ValueError(f"cross layer '{layer.name}' (low rank) holds {len(denses)} Dense layers, expected U "
                             f"[d, {r}] without bias and V [{r}, d]")
        main, down = ups[0], _utils.to_numpy(downs[0].kernel)
    up = _utils.to_numpy(main.kernel)
    if up.shape[1] != (down.shape[0] if down is not None else up.shape[0]):
        raise ValueError(f"cross layer '{layer.name}' has kernels of shapes that do not chain")
    return CrossSpec(down=down, up=up, bias=_utils.to_numpy(main.bias) if main.bias is not None else None,
                     diag_scale=float(config.get("diag_scale") or 0.0), activation=main.activation)


def elementwise(activation: Callable | None, seed: int = 0) -> bool:
    """Whether `activation` acts on each column alone: applied to a random matrix, its result on
    a random subset of the columns is the subset of its result (softmax, for one, is not)."""
    if activation is None:
        return True
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3, 11)).astype(np.float32) * 3
    cols = np.sort(rng.choice(11, 5, replace=False))
    whole = _utils.to_numpy(activation(tf.constant(x)))[:, cols]
    part = _utils.to_numpy(activation(tf.constant(x[:, cols])))
    return whole.shape == part.shape and bool(np.allclose(whole, part, rtol=1e-6, atol=1e-7, equal_nan=True))


def reduced_weights(spec: CrossSpec, cols: np.ndarray) -> list[np.ndarray]:
    """The weights of the cross computed on the columns `cols` (`cols[i]`: the layer's input
    column of reduced entry i; -1 for an entry that is always zero, e.g. a lookup's padding
    column: its rows and columns are zeros). `[U[c], V[:, c]]` (low rank) or `[W[c][:, c]]`,
    then `b[c]` when the layer has a bias.

    Example:

    >>> spec = CrossSpec(None, np.arange(9.0).reshape(3, 3), np.array([1.0, 2.0, 3.0]), 0.0, None)
    >>> [w.tolist() for w in reduced_weights(spec, np.array([2, -1, 0]))]
    [[[8.0, 0.0, 6.0], [0.0, 0.0, 0.0], [2.0, 0.0, 0.0]], [3.0, 0.0, 1.0]]
    """
    cols = np.asarray(cols, np.int64)
    real = cols >= 0
    take = np.where(real, cols, 0)

    def rows(a):  # a[cols] with zero rows for padding entries
        return np.where(real.reshape(-1, *[1] * (a.ndim - 1)), a[take], 0).astype(a.dtype)

    if spec.down is not None:
        out = [rows(spec.down), rows(spec.up.T).T.copy()]
    else:
        out = [rows(rows(spec.up).T).T.copy()]
    if spec.bias is not None:
        out.append(rows(spec.bias))
    return out


def cross(x0: tf.Tensor, x: tf.Tensor, weights: list, spec: CrossSpec, dtype: tf.DType) -> tf.Tensor:
    """`x0 * (act(x @ W + b) + diag_scale * x) + x` on reduced inputs `[batch, k]`, with
    `weights` from `reduced_weights` (variables or arrays), computed in `dtype` as the
    layer computes."""
    w = [tf.cast(v, dtype) for v in weights]
    if spec.down is not None:
        prod = _utils.matmul(_utils.matmul(x, w[0]), w[1])
        rest = w[2:]
    else:
        prod = _utils.matmul(x, w[0])
        rest = w[1:]
    if rest:
        prod = tf.nn.bias_add(prod, rest[0])
    if spec.activation is not None:
        prod = spec.activation(prod)
    prod = tf.cast(prod, dtype)
    if spec.diag_scale:
        prod = prod + spec.diag_scale * x
    return x0 * prod + x
