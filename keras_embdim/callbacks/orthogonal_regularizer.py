"""`OrthogonalRegularizer`: HAM's orthogonal regularity of embedding columns."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import tensorflow as tf

from keras_embdim import _compat
from keras_embdim._compat import keras, register_serializable
from keras_embdim.mask import find_searchable_layers
from keras_embdim.orthogonality import orthogonality_penalty


@register_serializable(package="keras_embdim")
class OrthogonalRegularizer(keras.callbacks.Callback, keras.regularizers.Regularizer):
    """Penalise correlated embedding columns, `strength * ||E_hat^T E_hat - I||_F^2`.

    `E_hat` has unit-norm columns, per field (methods.md §HAM): decorrelated
    columns carry distinct information, so removing one hurts less.

    Two uses of one object:

    - as a callback, `callbacks=[ked.OrthogonalRegularizer(1e-3)]`: every
      searchable embedding layer (or those named in `layers`) adds the penalty
      computed on the rows its current batch looks up, per field, kept columns
      only. `schedule(epoch) -> strength` may change the strength each epoch.
    - as `embeddings_regularizer=ked.OrthogonalRegularizer(1e-3)` on one layer
      (any Embedding): the penalty on `sample_rows` rows drawn from the table
      each step, the table treated as one field.

    Both cost `O(rows * D^2)` per step with rows = batch or sample, never
    `O(vocabulary^2)`.

    Args:
        strength: beta, >= 0.
        schedule: optional `epoch -> strength` (callback use).
        layers: names of the layers to regularise (callback use; default all).
        sample_rows: rows sampled per step (regularizer use).
    """

    def __init__(
        self,
        strength: float = 1e-3,
        *,
        schedule: Callable[[int], float] | None = None,
        layers: Sequence[str] | None = None,
        sample_rows: int = 1024,
    ):
        keras.callbacks.Callback.__init__(self)
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength) or strength < 0:
            raise ValueError(f"`strength` must be a finite number >= 0; received strength={strength!r}.")
        if schedule is not None and not callable(schedule):
            raise ValueError(f"`schedule` must be a callable epoch -> strength; received {schedule!r}.")
        if isinstance(sample_rows, bool) or not isinstance(sample_rows, int) or sample_rows < 2:
            raise ValueError(f"`sample_rows` must be an integer >= 2; received {sample_rows!r}.")
        self.strength = float(strength)
        self.schedule = schedule
        self.layer_names = list(layers) if layers is not None else None
        self.sample_rows = sample_rows
        self._strength_var: tf.Variable | None = None
        self._layers: list = []

    # ----------------------------------------------------------- callback
    def _penalty(self, layer, rows, mask):
        return tf.cast(self._strength_var, rows.dtype) * orthogonality_penalty(rows, mask)

    def on_train_begin(self, logs=None):
        self._layers = find_searchable_layers(self.model, self.layer_names)
        if not self._layers:
            raise ValueError(
                f"OrthogonalRegularizer: model '{self.model.name}' has no searchable embedding layer; "
                "use it as embeddings_regularizer= on a plain Embedding instead."
            )
        if self._strength_var is None:
            self._strength_var = tf.Variable(self.strength, trainable=False, dtype=tf.float32)
        for layer in self._layers:
            layer.add_penalty(self._penalty)
        _compat.force_retrace(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        if self.schedule is not None and self._strength_var is not None:
            value = float(self.schedule(epoch))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"OrthogonalRegularizer: schedule({epoch}) returned {value!r}; need >= 0.")
            self._strength_var.assign(value)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._strength_var is not None:
            logs["embdim_orthogonal_strength"] = float(self._strength_var.numpy())

    def on_train_end(self, logs=None):
        for layer in self._layers:
            layer.remove_penalty(self._penalty)

    # -------------------------------------------------------- regularizer
    def __call__(self, table):
        table = tf.convert_to_tensor(table)
        n = tf.shape(table)[0]
        idx = tf.random.uniform([self.sample_rows], 0, n, dtype=tf.int32)
        return self.strength * orthogonality_penalty(tf.gather(table, idx))

    def get_config(self) -> dict:
        return {"strength": self.strength, "sample_rows": self.sample_rows}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)
