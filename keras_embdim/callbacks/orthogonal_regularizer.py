"""`OrthogonalRegularizer`: HAM's orthogonal regularity of embedding columns, as a callback."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import tensorflow as tf

from keras_embdim import _utils
from keras_embdim._compat import keras
from keras_embdim.search.orthogonality import orthogonality_penalty
from keras_embdim.searchable import find_searchable_layers
from keras_embdim.validation import check_names, check_number, is_parameter_server


class OrthogonalRegularizer(keras.callbacks.Callback):
    """Penalise correlated embedding columns, `strength * ||E_hat^T E_hat - I||_F^2`.

    `E_hat` has unit-norm columns, per field (docs/reference/methods.md, HAM):
    decorrelated columns carry distinct information, so removing one hurts
    less. Every searchable embedding layer (or those named in `layers`) adds
    the penalty computed on the rows its current batch looks up, per field,
    kept columns only: `O(rows * D^2)` per step, never `O(vocabulary^2)`.
    For one plain `Embedding`, use `OrthogonalEmbeddingRegularizer` as its
    `embeddings_regularizer` instead.

    Args:
        strength: beta, >= 0. The default 1e-5 is the planted-ranks choice
            (docs/reference/methods.md, "orthogonal regularity"): beside the paced
            HAM search, 1e-3 cost 0.0009-0.0012 AUC where fields are alike, 1e-5
            0.0001-0.0005, and 1e-5 gained more where they differ.
        schedule: optional `epoch -> strength`, called at every epoch's start.
        layers: names of the layers to regularise (default all searchable layers).

    Example:

    ```python
    model.fit(train, epochs=3, callbacks=[ked.HardMaskSearch(0.1), ked.OrthogonalRegularizer()])
    ```
    """

    def __init__(
        self,
        strength: float = 1e-5,
        *,
        schedule: Callable[[int], float] | None = None,
        layers: Sequence[str] | None = None,
    ):
        super().__init__()
        self.strength = check_number("strength", strength, low=0)
        if schedule is not None and not callable(schedule):
            raise ValueError(f"`schedule` must be a callable epoch -> strength; received {schedule!r}.")
        self.schedule = schedule
        self.layer_names = check_names("layers", layers)
        self._strength_var: tf.Variable | None = None
        self._layers: list = []
        self._on_parameter_server = False  # set by set_model

    def _penalty(self, layer, rows, mask):
        return tf.cast(self._strength_var, rows.dtype) * orthogonality_penalty(rows, mask)

    def set_model(self, model):
        self._on_parameter_server = is_parameter_server(model.distribute_strategy)
        super().set_model(model)

    def on_train_begin(self, logs=None):
        self._layers = find_searchable_layers(self.model, self.layer_names)
        if not self._layers:
            raise ValueError(
                f"OrthogonalRegularizer: model '{self.model.name}' has no searchable embedding layer; "
                "use ked.OrthogonalEmbeddingRegularizer as embeddings_regularizer= on a plain Embedding instead."
            )
        if self._strength_var is None:
            # under ParameterServerStrategy the workers' steps read it: a variable of the strategy (on a
            # parameter server), which the schedule assigns at epoch boundaries; elsewhere a plain one
            self._strength_var = (tf.Variable(float(self.strength), trainable=False, name="orthogonal_strength")
                                  if self._on_parameter_server else
                                  _utils.plain_variable(self.strength, name="orthogonal_strength"))
        for layer in self._layers:
            layer.add_penalty(self._penalty)
        _utils.force_retrace(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        if self.schedule is not None and self._strength_var is not None:
            value = float(self.schedule(epoch))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"OrthogonalRegularizer: schedule({epoch}) returned {value!r}; need a finite number >= 0.")
            self._strength_var.assign(value)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._strength_var is not None:
            logs["embdim_orthogonal_strength"] = float(self._strength_var.numpy())

    def on_train_end(self, logs=None):
        for layer in self._layers:
            layer.remove_penalty(self._penalty)
