"""Small helpers that do not depend on the Keras version (those differences live in `_compat`)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tensorflow as tf

from keras_embdim._compat import keras, optimizer_slots


def plain_variable(initial_value: Any, *, name: str | None = None, trainable: bool = False) -> tf.Variable:
    """A plain (not distributed) `tf.Variable`, even inside a `tf.distribute` scope.

    Export tables must not become mirrored variables: their creation would be a
    collective with workers that may have finished training (measured under
    MultiWorkerMirroredStrategy: the chief's export hung on a broadcast to a
    worker that had stopped). Constructing the resource variable class directly
    bypasses the strategy's variable creator.
    """
    from tensorflow.python.ops import resource_variable_ops

    return resource_variable_ops.ResourceVariable(initial_value, name=name, trainable=trainable)


def to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "numpy"):
        return np.asarray(value.numpy())
    return np.asarray(value)


def flatten_layers(model: Any) -> list:
    """All layers inside `model` (itself included), depth first, deduplicated.

    Works for functional, sequential, subclassed and nested models in both Keras
    versions (both expose `_flatten_layers`).
    """
    seen: set[int] = set()
    out = []
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if id(layer) not in seen:
            seen.add(id(layer))
            out.append(layer)
    return out


def symbolic_name(tensor: Any) -> str:
    name = getattr(tensor, "name", None) or "inputs"
    return name.split(":")[0]


def symbolic_dtype(tensor: Any) -> tf.DType:
    return tf.as_dtype(tensor.dtype)


def symbolic_shape(tensor: Any) -> list:
    return list(tf.TensorShape(tensor.shape).as_list())


def output_names(model: Any) -> list[str] | None:
    names = getattr(model, "output_names", None)
    if names:
        return list(names)
    return None


def force_retrace(model: Any) -> None:
    """Rebuild `model.train_function` so that a changed Python flag is traced.

    `fit` reads `model.train_function` before every step in both Keras
    versions, so the next step runs the new trace; this is done once per state
    change, never per batch.
    """
    model.train_function = None
    model.make_train_function(force=True)


def reset_optimizer_state(optimizer: Any, model_variables: list) -> None:
    """Zero every slot of the given variables (used when a model is rewound)."""
    for variable in model_variables:
        for slot in optimizer_slots(optimizer, variable):
            slot.assign(tf.zeros(slot.shape, slot.dtype))


def tensorboard_log_dir(value: Any) -> str | None:
    """Accept a path or a `keras.callbacks.TensorBoard` instance."""
    if value is None:
        return None
    if isinstance(value, keras.callbacks.TensorBoard):
        return os.path.join(value.log_dir, "embdim")
    return os.fspath(value)


def store_len(store: Any) -> int:
    """Number of entries in a `save_own_variables` store (h5 group or dict)."""
    return len(list(store.keys()))

