"""Row-sparse ("lazy") optimizers: a step updates only the table rows its batch looked up.

Keras' Adam, Adagrad and SGD update every row of an embedding table on every
step, even though the gradient of a lookup (`tf.gather`) touches only the
rows of the batch: Adam decays both moments of every row, Keras 3 turns the
sparse gradient into a dense one. A training step then costs O(vocabulary):
measured in the project brief, Adam 5.7 ms at 1e4 rows against 171 ms at
4e6, batch 1024. These subclasses keep the optimizer's update for dense
gradients and, for a sparse gradient (`tf.IndexedSlices`, what every
embedding lookup produces), update only the rows present in the batch, with
the moments of those rows only. That is the "lazy" semantics of TensorFlow
Addons' `LazyAdam` and of sparse Adagrad: a row's moments decay only on the
steps that see it, so a rare id keeps its momentum between its occurrences
(dense Adam would have decayed it by `beta ** gap`). Frequent rows, which see
nearly every step, behave as under dense Adam.

After each update the table is taken out of TensorFlow's "copy-on-read"
mode (which a scatter turns on, and in which every whole-table read copies the
table), so that a layer reading its table whole each step, as Keras 3's own
`keras.layers.Embedding` does, does not copy it each step (`_update_rows`).

Duplicated ids in a batch are summed first (as a dense gradient would), so a
row is updated once per step. Searched tables stay consistent: a removed
column receives exact-zero gradients, so its entries and slots stay zero, and
per-value prefixes hold. Works in both Keras versions and under
`MirroredStrategy`; weight decay (when set) stays dense, as Keras applies it.

`catch_up=True` (Adam, and SGD with momentum) gives back dense semantics at
the same row-sparse cost: each row remembers the step that last updated it
(one float per row), and when it is next looked up the updates dense Adam
would have made in between (zero gradients: decayed moments, still moving
the row) are applied first, in closed form. For Adam the sum of the skipped
steps' `alpha_u * beta_1^j / beta_2^(j/2)` is exact over the last 32
skipped steps (their bias corrections included) and a geometric series
beyond (where `beta_1^32 < 0.035`); `epsilon` is taken as scaled with the
decayed velocity, which differs from dense Adam only for rows whose velocity
is within a few `epsilon`. For SGD with momentum the catch-up is exact. (The
last step is stored as a float32, exact up to 2^24 = 16.7M steps; beyond, a
gap may be off by one step per 2^24.) The catch-up happens when the row's
gradient is applied, after that step's forward pass used the row, so a
trained model follows dense Adam closely but not exactly.
Adagrad needs none: a zero gradient changes neither its accumulator nor
the row, so sparse Adagrad is dense Adagrad.

`row_sparse(optimizer)` gives the lazy counterpart of an Adam, Adagrad or SGD
with the same configuration.

Example:

>>> import keras_embdim as ked
>>> opt = ked.row_sparse(ked.keras.optimizers.Adam(1e-3))
>>> type(opt).__name__, float(opt.learning_rate)
('LazyAdam', 0.001)
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from keras_embdim import _compat, _utils
from keras_embdim._compat import keras, register_serializable


def _rows(gradient: tf.IndexedSlices, dtype) -> tuple[tf.Tensor, tf.Tensor]:
    """`(values, rows)` with one entry per distinct row (duplicates summed)."""
    rows, position = tf.unique(tf.cast(gradient.indices, tf.int64))
    values = tf.math.unsorted_segment_sum(tf.cast(gradient.values, dtype), position, tf.shape(rows)[0])
    return values, rows


def _sparse_step(optimizer, gradient, variable, learning_rate):
    """`(lr, values, rows)` of a sparse step: the learning rate in the variable's dtype and the
    gradient's rows, duplicates summed."""
    dtype = variable.dtype
    lr = tf.cast(_compat.optimizer_learning_rate(optimizer, learning_rate), dtype)
    return (lr, *_rows(gradient, dtype))


CATCH_UP_WINDOW = 32  # skipped steps summed one by one (bias corrections included); a geometric tail beyond


class _CatchUp:
    """A row-sparse optimizer that can remember each row's last update (`catch_up=True`).

    `build` adds one `[rows]` float slot per variable, `_last_steps`, aligned
    with the optimizer's other slot lists.
    """

    catch_up: bool = False
    _last_steps: list | None = None

    def build(self, var_list):
        super().build(var_list)
        if not self.catch_up or self._last_steps is not None:
            return
        self._last_steps = [
            self.add_variable(shape=tuple(v.shape)[:1], initializer="zeros", dtype="float32",
                              name=_compat.variable_path(v).replace("/", "_") + "_last_step")
            for v in var_list
        ]

    def _skipped(self, variable, rows: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
        """Steps since each row's last update, minus one (>= 0), as the variable's dtype; marks the rows
        updated at `step`."""
        last = _compat.optimizer_slot(self, "_last_steps", variable)
        seen = tf.cast(_utils.gather_rows(last, rows), step.dtype)
        _scatter(last, rows, tf.fill(tf.shape(rows), tf.cast(step, last.dtype)))
        return tf.maximum(step - seen - 1, 0)

    def get_config(self):
        return {**super().get_config(), "catch_up": self.catch_up}


def _adam_catch_up(skipped, step, lr, b1, b2):
    """`sum_{j=1..k} alpha_{t-k-1+j} * b1^j / b2^(j/2)` for `k = skipped` (per row): dense Adam's
    movement over k zero-gradient steps, per unit of `m / (sqrt(v) + eps)` at the last update."""
    j = tf.range(1, CATCH_UP_WINDOW + 1, dtype=skipped.dtype)[None, :]
    u = (step - skipped - 1)[:, None] + j  # the skipped steps, one by one
    alpha = lr * tf.sqrt(1 - tf.pow(b2, u)) / (1 - tf.pow(b1, u))
    ratio = b1 / tf.sqrt(b2)
    window = tf.reduce_sum(tf.where(j <= skipped[:, None], alpha * tf.pow(ratio, j), 0.0), axis=1)
    alpha_t = lr * tf.sqrt(1 - tf.pow(b2, step)) / (1 - tf.pow(b1, step))
    beyond = tf.maximum(skipped - CATCH_UP_WINDOW, 0)
    tail = alpha_t * tf.pow(ratio, CATCH_UP_WINDOW + 1.0) * (1 - tf.pow(ratio, beyond)) / (1 - ratio)
    return window + tail


def _scatter(variable, rows, values) -> None:
    """Write `values` into the `rows` of an optimizer slot (read by row gathers only)."""
    _compat.tf_variable(variable).scatter_update(tf.IndexedSlices(values, rows))


def _update_rows(variable, rows, delta) -> None:
    """`variable[rows] -= delta`, leaving the variable cheap to read whole.

    A scatter puts a TensorFlow resource variable in "copy-on-read" mode for
    good: from then on every dense read copies the whole variable. Keras 3's
    own `keras.layers.Embedding` reads its table densely in every forward pass
    (`ops.take` of the variable's value), so after the first row-sparse step
    each step copied the whole table (measured: 646 ms per step at 1e7 rows
    against 16.5 at 1e4; 14.3 against 19.3 with this, docs/results/row_sparse.md
    and docs/guides/scaling.md). `DisableCopyOnRead` turns the mode off after
    the update; TensorFlow still copies before a later scatter if a dense read
    of the table is alive then, so values are never shared wrongly.
    """
    v = _compat.tf_variable(variable)
    v.scatter_sub(tf.IndexedSlices(delta, rows))
    tf.raw_ops.DisableCopyOnRead(resource=v.handle)


@register_serializable(package="keras_embdim")
class LazyAdam(_CatchUp, keras.optimizers.Adam):
    """Adam whose sparse updates touch only the rows of the batch (see the module docstring).

    Args:
        catch_up: apply, when a row is next looked up, the updates dense Adam
            would have made to it in the steps that skipped it (dense
            semantics at row-sparse cost; one extra float per row). Not with
            `amsgrad`.
        **kwargs: `keras.optimizers.Adam`'s arguments.
    """

    def __init__(self, *args, catch_up: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.catch_up = bool(catch_up)
        if self.catch_up and self.amsgrad:
            raise ValueError("LazyAdam: `catch_up=True` does not combine with amsgrad=True (its running maximum "
                             "of the velocity has no closed form over skipped steps); received both.")

    def update_step(self, gradient, variable, learning_rate=None):
        if not isinstance(gradient, tf.IndexedSlices):
            return _compat.optimizer_update(super(), gradient, variable, learning_rate)
        dtype = variable.dtype
        lr, values, rows = _sparse_step(self, gradient, variable, learning_rate)
        step = tf.cast(self.iterations + 1, dtype)
        b1, b2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        alpha = lr * tf.sqrt(1 - tf.pow(b2, step)) / (1 - tf.pow(b1, step))
        epsilon = tf.cast(self.epsilon, dtype)
        if getattr(self, "adaptive_epsilon", False):  # tf_keras's option
            epsilon = epsilon * tf.sqrt(1 - tf.pow(b2, step))
        m = _compat.optimizer_slot(self, "_momentums", variable)
        v = _compat.optimizer_slot(self, "_velocities", variable)
        m_rows, v_rows = _utils.gather_rows(m, rows), _utils.gather_rows(v, rows)
        moved = 0.0
        if self.catch_up:  # the skipped steps' updates, then their decay of the moments
            skipped = self._skipped(variable, rows, step)
            moved = _adam_catch_up(skipped, step, lr, b1, b2)[:, None] * m_rows / (tf.sqrt(v_rows) + epsilon)
            m_rows = m_rows * tf.pow(b1, skipped)[:, None]
            v_rows = v_rows * tf.pow(b2, skipped)[:, None]
        m_rows = b1 * m_rows + (1 - b1) * values
        v_rows = b2 * v_rows + (1 - b2) * tf.square(values)
        _scatter(m, rows, m_rows)
        _scatter(v, rows, v_rows)
        if self.amsgrad:
            v_hat = _compat.optimizer_slot(self, "_velocity_hats", variable)
            v_rows = tf.maximum(_utils.gather_rows(v_hat, rows), v_rows)
            _scatter(v_hat, rows, v_rows)
        _update_rows(variable, rows, moved + alpha * m_rows / (tf.sqrt(v_rows) + epsilon))


@register_serializable(package="keras_embdim")
class LazyAdagrad(keras.optimizers.Adagrad):
    """Adagrad whose sparse updates touch only the rows of the batch (sparse Adagrad).

    Takes `keras.optimizers.Adagrad`'s arguments.
    """

    def update_step(self, gradient, variable, learning_rate=None):
        if not isinstance(gradient, tf.IndexedSlices):
            return _compat.optimizer_update(super(), gradient, variable, learning_rate)
        dtype = variable.dtype
        lr, values, rows = _sparse_step(self, gradient, variable, learning_rate)
        acc = _compat.optimizer_slot(self, "_accumulators", variable)
        acc_rows = _utils.gather_rows(acc, rows) + tf.square(values)
        _scatter(acc, rows, acc_rows)
        _update_rows(variable, rows, lr * values / tf.sqrt(acc_rows + tf.cast(self.epsilon, dtype)))


@register_serializable(package="keras_embdim")
class LazySGD(_CatchUp, keras.optimizers.SGD):
    """SGD (with optional momentum) whose sparse updates touch only the rows of the batch.

    Args:
        catch_up: with momentum: apply, when a row is next looked up, the
            momentum steps dense SGD would have made to it in between (exact).
        **kwargs: `keras.optimizers.SGD`'s arguments.
    """

    def __init__(self, *args, catch_up: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.catch_up = bool(catch_up)

    def update_step(self, gradient, variable, learning_rate=None):
        if not isinstance(gradient, tf.IndexedSlices):
            return _compat.optimizer_update(super(), gradient, variable, learning_rate)
        dtype = variable.dtype
        lr, values, rows = _sparse_step(self, gradient, variable, learning_rate)
        if self.momentum == 0:
            _update_rows(variable, rows, lr * values)
            return
        momentum = tf.cast(self.momentum, dtype)
        m = _compat.optimizer_slot(self, "momentums", variable)
        m_rows = _utils.gather_rows(m, rows)
        moved = 0.0
        if self.catch_up:  # k zero-gradient steps: m -> momentum^j m, the row moves by each (x momentum: nesterov)
            skipped = self._skipped(variable, rows, tf.cast(self.iterations + 1, dtype))
            series = momentum * (1 - tf.pow(momentum, skipped)) / (1 - momentum)
            moved = (series * momentum if self.nesterov else series)[:, None] * m_rows
            m_rows = m_rows * tf.pow(momentum, skipped)[:, None]
        m_rows = momentum * m_rows - lr * values
        _scatter(m, rows, m_rows)
        step = momentum * m_rows - lr * values if self.nesterov else m_rows
        _update_rows(variable, rows, -(moved + step))


_LAZY = {"Adam": LazyAdam, "Adagrad": LazyAdagrad, "SGD": LazySGD}


def row_sparse(optimizer: Any, catch_up: bool = False):
    """The row-sparse counterpart of a Keras `Adam`, `Adagrad` or `SGD`, same configuration.

    An optimizer that is already row-sparse is returned as it is.

    Args:
        optimizer: a `keras.optimizers.Adam`, `Adagrad` or `SGD`.
        catch_up: Adam and SGD: see `LazyAdam` (Adagrad needs no catch-up).

    Example:

    ```python
    model.compile(optimizer=ked.row_sparse(keras.optimizers.Adam(1e-3)), loss="binary_crossentropy")
    ```
    """
    if isinstance(optimizer, tuple(_LAZY.values())):
        return optimizer
    kind = type(optimizer).__name__
    if kind not in _LAZY or not isinstance(optimizer, getattr(keras.optimizers, kind)):
        raise ValueError(
            f"`optimizer` must be a keras.optimizers.Adam, Adagrad or SGD (of the Keras keras_embdim runs on) "
            f"to make it row-sparse; received {type(optimizer).__module__}.{kind}."
        )
    config = optimizer.get_config()
    if kind != "Adagrad":
        config["catch_up"] = bool(catch_up)
    return _LAZY[kind].from_config(config)
