"""Every difference between Keras 3 and Keras 2 (`tf_keras`) lives here, and only those.

`keras_embdim` follows TensorFlow's own switch: with `TF_USE_LEGACY_KERAS=1`
(the mode TensorFlow Recommenders needs) `tf.keras` is `tf_keras` and so is
`keras_embdim`'s `keras`; otherwise it is Keras 3 on the TensorFlow backend.
No other module imports `keras` or `tf_keras` directly.
"""

from __future__ import annotations

import inspect
import os
import weakref
from typing import Any, Callable

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


# `add_weight` keywords for a float variable that a layer's call reads at its own dtype (float32)
# even under a mixed-precision policy, where Keras casts a layer's float variables to its compute
# dtype (float16 / bfloat16) when its call reads them: the search state (masks, logits,
# temperatures, the twins and their counts), whose precision decides which dimensions stay.
NO_AUTOCAST: dict = {"autocast": False} if KERAS_3 else {"experimental_autocast": False}


def layer_classes(*names: str) -> tuple:
    """The `keras.layers` classes of these names that this Keras version has."""
    return tuple(getattr(keras.layers, n) for n in names if n in dir(keras.layers))


# Backend ops that a functional model records as calls of their own (Keras 3: `keras.ops.reshape(x,
# ...)` on a symbolic tensor; tf_keras: `tf.reshape(x, ...)`, a `TFOpLambda` by its TF symbol) and
# that only move, repeat or drop entries of their tensor inputs
_MOVING_OPS_3 = ("Reshape", "Concatenate", "Transpose", "ExpandDims", "Squeeze", "Stack", "GetItem", "Tile",
                 "Repeat")
_MOVING_SYMBOLS_2 = {"reshape", "concat", "transpose", "expand_dims", "squeeze", "stack", "identity", "tile",
                     "repeat", "__operators__.getitem", "compat.v1.transpose", "compat.v1.squeeze",
                     "compat.v1.expand_dims", "compat.v1.concat"}


def is_moving_op(operation: Any) -> bool:
    """Whether a call of a functional graph is one of those ops (a reshape, concatenation,
    transpose, stack, slice, ... written with `keras.ops` or `tf.*` on symbolic tensors)
    rather than a layer. They may touch the batch axis, which their own layer
    counterparts (`Reshape`, `Permute`, ...) never do: whoever passes them checks that
    the examples of a batch stay apart."""
    if KERAS_3:
        try:
            from keras.src.ops import numpy as ops_numpy
        except ImportError:  # a Keras whose ops live elsewhere: none is passed
            return False
        return type(operation) in tuple(getattr(ops_numpy, n) for n in _MOVING_OPS_3 if hasattr(ops_numpy, n))
    return type(operation).__name__ in ("TFOpLambda", "SlicingOpLambda") and getattr(
        operation, "symbol", None) in _MOVING_SYMBOLS_2


# Backend ops recorded as calls (as above) that are affine in each tensor input when the other operands are
# constants: `x * 0.5`, `x + b`, `-x`, `keras.ops.sum(x, axis=1)` / `tf.reduce_mean(x, axis=1)`
_ARITHMETIC_OPS_3 = ("Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Negative", "Sum", "Mean")
_ARITHMETIC_SYMBOLS_2 = {"math.add", "__operators__.add", "math.subtract", "math.multiply", "math.truediv",
                         "math.divide", "math.negative", "math.reduce_sum", "math.reduce_mean", "math.scalar_mul",
                         "compat.v1.math.scalar_mul", "compat.v1.reduce_sum", "compat.v1.reduce_mean"}


def is_arithmetic_op(operation: Any) -> bool:
    """Whether a call of a functional graph is one of those ops (an addition, product,
    division, negation, sum or mean written with `keras.ops` or `tf.*`, or as an operator, on
    symbolic tensors). Affine only when the other operands are constants (a product of two
    tensors is not) and examples stay apart (a sum over the batch axis mixes them): whoever
    treats them as affine checks both."""
    if KERAS_3:
        try:
            from keras.src.ops import numpy as ops_numpy
        except ImportError:  # a Keras whose ops live elsewhere: none is passed
            return False
        return type(operation) in tuple(getattr(ops_numpy, n) for n in _ARITHMETIC_OPS_3 if hasattr(ops_numpy, n))
    return type(operation).__name__ == "TFOpLambda" and getattr(operation, "symbol", None) in _ARITHMETIC_SYMBOLS_2


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


def compute_loss(model: Any, x: Any, y: Any, y_pred: Any, sample_weight: Any = None):
    """The model's compiled training loss on one batch (regularizers included).

    A TensorFlow Recommenders model computes its own loss from the whole batch
    (`compute_loss(inputs, training)`); `y_pred` is then recomputed inside it.
    """
    from keras_embdim import _tfrs

    if _tfrs.takes_whole_batch(model):
        batch = x if y is None else ((x, y) if sample_weight is None else (x, y, sample_weight))
        return model.compute_loss(batch, training=True)
    if KERAS_3:
        return model.compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
        )
    return model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight)


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


def optimizer_slot(optimizer: Any, attr: str, variable: Any) -> Any:
    """The slot variable of `variable` in the optimizer's slot list `attr` (e.g. `_momentums`)."""
    slots = getattr(optimizer, attr)
    if KERAS_3:
        return slots[optimizer._get_variable_index(variable)]
    return slots[optimizer._index_dict[optimizer._var_key(variable)]]


def optimizer_learning_rate(optimizer: Any, learning_rate: Any) -> Any:
    """The step's learning rate: Keras 3 passes it to `update_step`, tf_keras's optimizer holds it."""
    return learning_rate if KERAS_3 else optimizer.learning_rate


def optimizer_update(parent: Any, gradient: Any, variable: Any, learning_rate: Any) -> Any:
    """`parent.update_step(...)` with this Keras version's arguments (`parent`: a `super()`)."""
    if KERAS_3:
        return parent.update_step(gradient, variable, learning_rate)
    return parent.update_step(gradient, variable)


def set_embedding_variable(layer: Any, variable: Any) -> None:
    """Keras 3's Embedding reads `_embeddings` (behind a property); Keras 2 `embeddings`."""
    if KERAS_3:
        layer._embeddings = variable
    else:
        layer.embeddings = variable


def get_embedding_variable(layer: Any) -> Any:
    """The table variable itself (Keras 3's `embeddings` property may wrap it)."""
    return layer._embeddings if KERAS_3 else layer.embeddings


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


_WEIGHT_RANK: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # layer -> {id(weight): place}


def stable_weight_order(layer: Any, weights: list) -> list:
    """`weights` (a layer's `weights`) in an order that does not change when a weight's
    trainability does. tf_keras lists a layer's trainable weights before its non-trainable ones,
    so a search that freezes a weight mid-`fit` (HAM's mask logits, AMTL's twins) reordered
    `model.get_weights()`, and `EarlyStopping(restore_best_weights=True)`'s `set_weights` of an
    earlier epoch's list failed on a shape (or, shapes alike, assigned one variable's values to
    another). Each weight keeps the place it had when first listed. Keras 3 lists weights in the
    order they were made already."""
    if KERAS_3 or not weights:
        return weights
    rank = _WEIGHT_RANK.setdefault(layer, {})
    for w in weights:
        rank.setdefault(id(w), len(rank))
    return sorted(weights, key=lambda w: rank[id(w)])


# ------------------------------------------------------------ functional graphs
# The exporter runs a functional model node by node so that it can replace a
# searched embedding and the Dense layer it feeds by their folded form
# (`keras_embdim.export.fold`). Both Keras versions keep a graph network's
# calls in `_nodes_by_depth`; these helpers hide how their nodes differ.


class GraphNode:
    """One layer call of a functional model: `layer(*args, **kwargs) -> outputs`.

    `renamed` (id() of a tensor the Keras node `raw` records -> the tensor standing for it
    here) is set on a copy of a call (a sub-model called twice, inlined once per call:
    `keras_embdim.export.fold`), whose tensors and identity are its own while its arguments
    are the recorded node's; `node_arguments` reads them through it."""

    __slots__ = ("layer", "inputs", "outputs", "raw", "renamed")

    def __init__(self, layer, inputs, outputs, raw, renamed=None):
        self.layer = layer
        self.inputs = inputs  # flat list of symbolic input tensors
        self.outputs = outputs  # flat list of symbolic output tensors
        self.raw = raw
        self.renamed = renamed


def graph_network(model: Any) -> Any | None:
    """The functional graph behind `model` (itself, a Sequential's), or None (subclassed)."""
    if KERAS_3:
        if hasattr(model, "_nodes_by_depth") and hasattr(model, "_run_through_graph"):
            return model
        inner = getattr(model, "_functional", None)
        return inner if inner is not None and hasattr(inner, "_nodes_by_depth") else None
    return model if getattr(model, "_is_graph_network", False) else None


def graph_nodes(net: Any) -> list[GraphNode]:
    """The layer calls of a graph network in execution order (inputs excluded)."""
    out = []
    for depth in sorted(net._nodes_by_depth, reverse=True):
        for node in net._nodes_by_depth[depth]:
            if node.is_input:
                continue
            if KERAS_3:
                if not node.operation:
                    continue
                out.append(GraphNode(node.operation, list(node.input_tensors), list(node.outputs), node))
            else:
                outputs = tf.nest.flatten(node.outputs)
                out.append(GraphNode(node.layer, list(node.keras_inputs), outputs, node))
    return out


def producing_layer(tensor: Any) -> Any | None:
    """The layer whose call produced a symbolic tensor (None for a model input)."""
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None
    return history.operation if KERAS_3 else history.layer


def graph_inputs(net: Any) -> list:
    return list(net.inputs)


def graph_outputs(net: Any) -> list:
    return list(net.outputs)


def node_arguments(node: GraphNode, values: dict) -> tuple[tuple, dict]:
    """The call arguments of `node` with its symbolic inputs replaced by `values[id(tensor)]`."""
    if node.renamed is not None:  # a copy: its recorded tensors stand for its own
        values = {k: values[id(t)] for k, t in node.renamed.items() if id(t) in values}
    if KERAS_3:
        return node.raw.arguments.fill_in(values)
    raw = node.raw  # as tf_keras' own Node.map_arguments, from our value dict
    flat = list(raw._flat_arguments)
    for kt_id, index in raw._keras_inputs_ids_and_indices:
        flat[index] = values[int(kt_id)]
    args, kwargs = tf.nest.pack_sequence_as((raw.call_args, list(raw.call_kwargs.values())), flat)
    return tuple(args), dict(zip(raw.call_kwargs.keys(), kwargs))


def node_argument_indices(node: GraphNode) -> tuple[tuple, dict]:
    """The call arguments of `node` with each symbolic input replaced by its index in
    `node.inputs`: which input is passed where, without values."""
    return node_arguments(node, {id(t): i for i, t in enumerate(node.inputs)})


def call_mask(node: GraphNode, values: dict, implicit: Callable[[], Any]) -> Any:
    """The mask `node`'s layer call gets: its `mask` argument as recorded (Keras 3 records
    the mask a producing layer computes as an input of the call, looked up in `values`),
    else, where the layer's call takes a mask, `implicit()` (Keras 2 passes masks
    implicitly, from the producing layer's `compute_mask`); None without."""
    _, kwargs = node_argument_indices(node)
    mask = kwargs.get("mask")
    if isinstance(mask, int):
        return values[id(node.inputs[mask])]
    if mask is not None or "mask" not in inspect.signature(node.layer.call).parameters:
        return mask
    return implicit()


def call_has_mask(node: GraphNode) -> bool:
    """Whether `node`'s layer call gets a mask: recorded as its `mask` argument (Keras 3) or
    carried by an input tensor (Keras 2 passes it implicitly; Keras 3 marks it there too)."""
    _, kwargs = node_argument_indices(node)
    return kwargs.get("mask") is not None or any(getattr(t, "_keras_mask", None) is not None for t in node.inputs)


def call_for_inference(layer: Any, args: tuple, kwargs: dict) -> Any:
    """`layer(*args, **kwargs)` in inference mode (`training=False` where the layer takes it)."""
    kwargs = dict(kwargs)
    if KERAS_3:
        if "training" in getattr(layer, "_call_context_args", ()):
            kwargs["training"] = False
    elif getattr(layer, "_expects_training_arg", False):
        kwargs["training"] = False
    return layer(*args, **kwargs)


def flat_graph_inputs(net: Any, inputs: Any) -> list:
    """`inputs` in the model's own structure as the flat list matching `graph_inputs(net)`,
    without the dtype conversion the model's call would apply (the exporter casts
    where a consumer needs it)."""
    if KERAS_3:
        struct = net._inputs_struct
        if isinstance(inputs, dict) and isinstance(struct, dict):
            inputs = {k: inputs[k] for k in struct}  # same keys: flattened in the same order
        flat = keras.tree.flatten(inputs)
        if len(flat) == len(net.inputs):
            return flat
        return list(net._standardize_inputs(inputs))
    return list(net._flatten_to_reference_inputs(inputs))


def pack_graph_outputs(net: Any, flat: list) -> Any:
    """The model's output structure around the flat list of output values."""
    if KERAS_3:
        out = keras.tree.pack_sequence_as(net._outputs_struct, flat)
        # as Functional.call: a one-element list of outputs is returned unwrapped
        return out[0] if isinstance(out, (list, tuple)) and len(out) == 1 else out
    return tf.nest.pack_sequence_as(net._nested_outputs, flat)


def flatten(structure: Any) -> list:
    return keras.tree.flatten(structure) if KERAS_3 else tf.nest.flatten(structure)


def export_flattens_inputs(model: Any) -> bool:
    """Whether Keras' own `model.export()` endpoint `serve` takes a graph network's inputs flat:
    tf_keras' does (`model.inputs`: a list of several, in their flattened order, or the one
    tensor) whatever structure the model was built with; Keras 3's takes that structure."""
    return not KERAS_3 and graph_network(model) is model


def keras_export(model: Any, path: str) -> None:
    """Keras' own `model.export(path)` (a baseline SavedModel), quietly in Keras 3 (tf_keras' has no `verbose`)."""
    model.export(path, verbose=False) if KERAS_3 else model.export(path)


def cross_layer(*, projection_dim: int | None = None, diag_scale: float = 0.0, pre_activation: Any = None,
                **kwargs: Any) -> Any:
    """A DCN-v2 cross layer of the Keras in use: keras-rs' `FeatureCross` under Keras 3, TFRS'
    `tfrs.layers.dcn.Cross` under Keras 2 (TFRS runs on tf_keras only); `kwargs` go to the layer
    (`name`, initializers, regularizers). Raises ImportError naming the package to install."""
    package = "keras_rs" if KERAS_3 else "tensorflow_recommenders"
    try:
        module = __import__(package)
    except ImportError as e:
        extra = "keras-rs" if KERAS_3 else "tfrs"
        raise ImportError(f"a DCN cross layer needs {package} under Keras {'3' if KERAS_3 else '2'}: "
                          f'pip install "keras-embdim[{extra}]"') from e
    if KERAS_3:
        return module.layers.FeatureCross(projection_dim=projection_dim, diag_scale=diag_scale,
                                          pre_activation=pre_activation, **kwargs)
    return module.layers.dcn.Cross(projection_dim=projection_dim, diag_scale=diag_scale, preactivation=pre_activation,
                                   **kwargs)
