"""Every difference between Keras 3 and Keras 2 (`tf_keras`) lives here.

`keras_embdim` follows TensorFlow's own switch: with `TF_USE_LEGACY_KERAS=1`
(the mode TensorFlow Recommenders needs) `tf.keras` is `tf_keras` and so is
`keras_embdim`'s `keras`; otherwise it is Keras 3 on the TensorFlow backend.
No other module imports `keras` or `tf_keras` directly.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tensorflow as tf

USE_LEGACY_KERAS: bool = os.environ.get("TF_USE_LEGACY_KERAS", "").lower() in (
    "1",
    "true",
    "yes",
)

if USE_LEGACY_KERAS:
    import tf_keras as keras  # noqa: F401

    KERAS_3 = False
else:
    import keras  # noqa: F401

    KERAS_3 = True
    if keras.backend.backend() != "tensorflow":
        raise ImportError(
            "keras_embdim needs the TensorFlow backend of Keras 3 (it exports "
            "TF SavedModels); got KERAS_BACKEND="
            f"{keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow."
        )

KERAS_VERSION: str = keras.__version__ if hasattr(keras, "__version__") else ""

register_serializable = keras.saving.register_keras_serializable


def tf_variable(variable: Any) -> tf.Variable:
    """The `tf.Variable` behind a Keras variable (Keras 3 wraps one)."""
    if KERAS_3 and not isinstance(variable, tf.Variable):
        return variable.value
    return variable


def variable_path(variable: Any) -> str:
    """A name that identifies the variable within its model."""
    if KERAS_3:
        return variable.path
    return variable.name.split(":")[0]


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


def input_structure(model: Any) -> Any:
    """The nested structure of symbolic inputs of a functional model, or None."""
    if KERAS_3:
        struct = getattr(model, "_inputs_struct", None)
    else:
        struct = getattr(model, "_nested_inputs", None)
    if struct is None:
        try:
            struct = model.inputs
        except (AttributeError, ValueError):
            return None
        if struct is not None and len(struct) == 1:
            struct = struct[0]
    return struct


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


def compute_loss(model: Any, x: Any, y: Any, y_pred: Any, sample_weight: Any = None):
    """The model's compiled training loss on one batch (regularizers included).

    A TensorFlow Recommenders model computes its own loss from the whole batch
    (`compute_loss(inputs, training)`); `y_pred` is then recomputed inside it.
    """
    if _takes_whole_batch(model):
        batch = x if y is None else ((x, y) if sample_weight is None else (x, y, sample_weight))
        return model.compute_loss(batch, training=True)
    if KERAS_3:
        return model.compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
        )
    return model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight)


def _takes_whole_batch(model: Any) -> bool:
    """`compute_loss(inputs, training)` (tfrs.Model), not Keras' `(x, y, y_pred, ...)`."""
    import inspect

    try:
        params = inspect.signature(model.compute_loss).parameters
    except (TypeError, ValueError):
        return False
    return "inputs" in params and "y_pred" not in params


def optimizer_slots(optimizer: Any, variable: Any) -> list:
    """Optimizer state variables (momenta, velocities, ...) of one model variable.

    Both Keras versions name a slot after the variable it belongs to and give it
    the variable's shape; that is what identifies them here.
    """
    if optimizer is None:
        return []
    target_shape = tuple(variable.shape)
    if KERAS_3:
        key = variable.path.replace("/", "_")
    else:
        key = variable._shared_name if hasattr(variable, "_shared_name") else variable.name
        key = key.split(":")[0]
    slots = []
    for slot in getattr(optimizer, "variables", []) or []:
        if callable(slot):  # Keras 2 legacy optimizers expose variables()
            break
        if tuple(slot.shape) != target_shape or slot is variable:
            continue
        name = variable_path(slot) if KERAS_3 else slot.name
        if key in name:
            slots.append(slot)
    return slots


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



def set_embedding_variable(layer: Any, variable: Any) -> None:
    """Keras 3's Embedding reads `_embeddings` (behind a property); Keras 2 `embeddings`."""
    if KERAS_3:
        layer._embeddings = variable
    else:
        layer.embeddings = variable


def get_embedding_variable(layer: Any) -> Any:
    """The table variable itself (Keras 3's `embeddings` property may wrap it)."""
    return layer._embeddings if KERAS_3 else layer.embeddings


def store_len(store: Any) -> int:
    """Number of entries in a `save_own_variables` store (h5 group or dict)."""
    return len(list(store.keys()))


EMBEDDING_UNSUPPORTED_KWARGS = (
    ("lora_rank", None),
    ("lora_alpha", None),
    ("quantization_config", None),
    ("sparse", False),
)


def set_trainable(layer: Any, variable: Any, trainable: bool) -> None:
    """Make one weight of a layer (non-)trainable after build."""
    if KERAS_3:
        variable.trainable = trainable
        return
    # tf.Variable.trainable is read-only: move it between the layer's lists.
    src, dst = (
        (layer._non_trainable_weights, layer._trainable_weights)
        if trainable
        else (layer._trainable_weights, layer._non_trainable_weights)
    )
    # a variable can be listed twice (tf_keras also tracks variables held in
    # containers assigned to layer attributes): move every occurrence
    hits = [i for i, v in enumerate(src) if v is variable]
    for i in reversed(hits):
        src.pop(i)
    if hits and not any(v is variable for v in dst):
        dst.append(variable)
