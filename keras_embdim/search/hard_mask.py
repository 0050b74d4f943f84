"""HAM's hard auxiliary mask, apart from Keras."""

from __future__ import annotations

import tensorflow as tf


def hard_mask(logits: tf.Tensor, temperature: tf.Tensor, learn: bool = True) -> tf.Tensor:
    """`1[sigmoid(a / t) > 0.5] = 1[a > 0]`, exactly 0/1, with the gradient of `sigmoid(a / t)`.

    The straight-through estimator of HAM: the forward pass is the discrete
    candidate, the backward pass uses the derivative of the smooth surrogate at
    temperature `t`, which sharpens as `t` is annealed. (A custom gradient, not
    `hard - s + stop_gradient(s)`, which is 0.99999994 rather than 1 in float32.)
    With `learn=False` the gradient is zero (not None: the scores stay in the
    graph, so Keras does not warn that they get no gradient, and Adam, whose
    moments stay zero, does not move them): the search paused for a warm-up
    (`HardMaskSearch(warmup_epochs=...)`).

    Example:

    >>> import tensorflow as tf
    >>> hard_mask(tf.constant([0.3, -0.1]), tf.constant(1.0)).numpy().tolist()
    [1.0, 0.0]
    """
    temperature = tf.cast(temperature, logits.dtype)

    @tf.custom_gradient
    def fn(a):
        def grad(upstream):
            if not learn:
                return tf.zeros_like(upstream)
            s = tf.sigmoid(a / temperature)
            return upstream * s * (1.0 - s) / temperature

        return tf.cast(a > 0, a.dtype), grad

    return fn(logits)
