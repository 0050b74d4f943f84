"""Small helpers that do not depend on the Keras version (those differences live in `_compat`)."""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from keras_embdim import _compat
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


def outside_strategy(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` with no `tf.distribute` strategy in scope.

    A strategy's scope is thread-local: in a fresh thread the default strategy
    applies, so the SavedModel an export writes and loads back to verify is
    built from plain variables and plain functions. Under
    MultiWorkerMirroredStrategy (tf_keras runs callbacks inside the scope) the
    verification load otherwise made its variables distributed and failed with
    "executing a graph generated from the cross-replica context in an
    in-replica context" (measured with tests/scripts/multiworker_search.py).
    """
    if not tf.distribute.has_strategy():
        return fn(*args, **kwargs)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="keras_embdim_export") as pool:
        return pool.submit(fn, *args, **kwargs).result()


def matmul(x: tf.Tensor, kernel: Any) -> tf.Tensor:
    """`x @ kernel` for `x` `[batch, k]` and a `kernel` `[k, units]` of static shape; zeros
    `[batch, units]` when `k` or `units` is 0, with no MatMul in the graph.

    An exported product can be empty: a searched layer that keeps no column gives the
    kernel rows of its inputs no row. TensorFlow's CPU kernels compute an empty MatMul
    alone, but Grappler fuses MatMul + BiasAdd (+ activation) into oneDNN's inner product,
    which aborts the process on an empty dimension (`dnnl::error`, not a Python error:
    the exporting process, or the TF Serving process running the export, dies).

    Example:

    >>> matmul(tf.ones([2, 0]), tf.zeros([0, 3])).numpy().tolist()
    [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    """
    k, units = (int(d) for d in kernel.shape)
    if not k or not units:
        return tf.zeros(tf.stack([tf.shape(x)[0], units]), x.dtype)
    return tf.matmul(x, kernel)


def gather_rows(table: Any, rows: tf.Tensor) -> tf.Tensor:
    """`tf.gather(table, rows)` that reads only those rows, for a table that may be sharded.

    A `ShardedVariable` (a `variable_partitioner` under ParameterServerStrategy)
    gathers only 1-D indices, and returns its rows in shard order, not in the
    order of the indices (`ShardedVariable.sparse_read` concatenates the
    shards' reads), so unsorted ids got other ids' rows under a loopback
    ParameterServerStrategy. Sharded tables are therefore read
    shard by shard and stitched back in the order of `rows`.
    """
    if isinstance(table, tf.__internal__.distribute.ShardedVariable):
        return _gather_sharded(table, rows)
    # the tf.Variable itself, not a tensor of it: a resource gather reads only the rows. A dense read
    # (what converting Keras 3's variable does) copies the whole table once the variable has had a
    # sparse update (TensorFlow's copy-on-read mode): O(vocabulary) per step (docs/guides/scaling.md)
    return tf.gather(_compat.tf_variable(table), rows)


def variable_parts(table: Any) -> list:
    """The `tf.Variable`s that hold `table`: its shards for a `ShardedVariable` (a
    `variable_partitioner` under ParameterServerStrategy), else the variable itself (the
    targets a `tf.GradientTape` can differentiate against)."""
    if isinstance(table, tf.__internal__.distribute.ShardedVariable):
        return list(table.variables)
    return [_compat.tf_variable(table)]


def _gather_sharded(table: Any, rows: tf.Tensor) -> tf.Tensor:
    shards = table.variables
    sizes = np.array([int(v.shape[0]) for v in shards], np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    flat = tf.reshape(tf.cast(rows, tf.int64), [-1])
    which = tf.cast(tf.searchsorted(tf.constant(starts[1:]), flat, side="right"), tf.int32)
    local = flat - tf.gather(tf.constant(starts), which)
    n = len(shards)
    positions = tf.dynamic_partition(tf.range(tf.size(flat)), which, n)
    pieces = [tf.gather(v, ids) for v, ids in zip(shards, tf.dynamic_partition(local, which, n))]
    out = tf.dynamic_stitch(positions, pieces)
    return tf.reshape(out, tf.concat([tf.shape(rows), tf.shape(out)[1:]], axis=0))


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


def optimizer_step(optimizer: Any) -> int | None:
    """The optimizer's step count (`iterations`: Adam's bias correction and every learning-rate
    schedule read it), or None without an optimizer."""
    return None if optimizer is None else int(optimizer.iterations.numpy())


def set_optimizer_step(optimizer: Any, step: int | None) -> None:
    """Set the step count back (a rewind: the optimizer continues as it was at that step)."""
    if optimizer is not None and step is not None:
        optimizer.iterations.assign(step)


def tensorboard_log_dir(value: Any) -> str | None:
    """Accept a path or a `keras.callbacks.TensorBoard` instance."""
    if value is None:
        return None
    if isinstance(value, keras.callbacks.TensorBoard):
        return os.path.join(value.log_dir, "embdim")
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ValueError(f"`log_dir` must be a non-empty path or a keras.callbacks.TensorBoard; received "
                         f"log_dir={value!r}.")
    return os.fspath(value)


def store_len(store: Any) -> int:
    """Number of entries in a `save_own_variables` store (h5 group or dict)."""
    return len(list(store.keys()))

