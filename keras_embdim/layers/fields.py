"""Small helper layers for models built from named categorical fields."""

from __future__ import annotations

import collections.abc
from typing import Sequence

import tensorflow as tf

from keras_embdim._compat import keras, register_serializable
from keras_embdim.fields import as_int_ids, stack_columns
from keras_embdim.validation import check_choice


def saturate_cast(x: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """`x` in `dtype`; a wider integer is clipped to `dtype`'s range first (no wrap-around)."""
    if x.dtype == dtype:
        return x
    if x.dtype.is_integer and dtype.is_integer and x.dtype.size > dtype.size:
        x = tf.clip_by_value(x, tf.constant(dtype.min, x.dtype), tf.constant(dtype.max, x.dtype))
    return tf.cast(x, dtype)


def field_columns(inputs: Sequence, layer_name: str | None = None) -> list[tf.Tensor]:
    """Per-field id tensors as `StackFields` stacks them: `[batch, 1]` squeezed to `[batch]`."""
    cols = []
    for x in inputs:
        x = as_int_ids(x, layer_name)
        if x.shape.rank == 2 and x.shape[-1] == 1:
            x = tf.squeeze(x, -1)
        cols.append(x)
    return cols


@register_serializable(package="keras_embdim")
class StackFields(keras.layers.Layer):
    """Stacks per-field id tensors `[batch]` (or `[batch, 1]`) into `[batch, F]`.

    Lets a model take one named input per field (what a TF Serving request
    carries) and feed a multi-field embedding layer.

    Example:

    >>> import numpy as np, keras_embdim as ked
    >>> ked.layers.StackFields()([np.array([1, 2]), np.array([3, 4])]).numpy().tolist()
    [[1, 3], [2, 4]]

    Args:
        dtype_ids: `"int32"` or `"int64"`, the dtype of the stacked ids; wider
            ids are clipped to its range, float ids are cast (as
            `keras.layers.Embedding` does).
    """

    def __init__(self, dtype_ids: str = "int32", **kwargs):
        super().__init__(**kwargs)
        try:
            dtype_ids = tf.as_dtype(dtype_ids).name  # tf.int64 or np.int64 as "int64"
        except TypeError:
            pass  # not a dtype: refused below, as given
        self.dtype_ids = check_choice("dtype_ids", dtype_ids, ("int32", "int64"))

    def call(self, inputs: Sequence[tf.Tensor]):
        if not isinstance(inputs, collections.abc.Sequence) or isinstance(inputs, (str, bytes)) or not inputs:
            said = "an empty list" if isinstance(inputs, (list, tuple)) else f"a value of type {type(inputs).__name__}"
            raise ValueError(f"layer '{self.name}' stacks a list of per-field id tensors, at least one; received "
                             f"{said}.")
        # stacked first (mixed dtypes at int64), then cast once: int64 ids (a served request) cost
        # one saturating cast, not one per field, and an id beyond the int32 range cannot wrap into it
        return saturate_cast(stack_columns(field_columns(inputs, self.name)), tf.as_dtype(self.dtype_ids))

    def compute_output_shape(self, input_shapes):
        first = tuple(input_shapes[0])
        if len(first) == 2 and first[-1] == 1:
            first = first[:-1]
        return (*first, len(input_shapes))

    def get_config(self):
        return {**super().get_config(), "dtype_ids": self.dtype_ids}


@register_serializable(package="keras_embdim")
class FieldOffsets(keras.layers.Layer):
    """Adds each field's row offset to `[..., F]` local ids (a shared-vocabulary id)."""

    def __init__(self, vocab_sizes: Sequence[int], **kwargs):
        super().__init__(**kwargs)
        self.vocab_sizes = [int(n) for n in vocab_sizes]
        offsets, total = [], 0
        for n in self.vocab_sizes:
            offsets.append(total)
            total += n
        self._offsets = offsets

    def call(self, ids):
        ids = tf.convert_to_tensor(ids)
        return ids + tf.constant(self._offsets, ids.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "vocab_sizes": self.vocab_sizes}
