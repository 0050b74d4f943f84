"""`MixedDimensionEmbedding`: per-field tables of their own width, for retraining from scratch."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from keras_embdim._compat import keras, register_serializable
from keras_embdim.fields import FieldLayout


@register_serializable(package="keras_embdim")
class MixedDimensionEmbedding(keras.layers.Layer):
    """Field f has its own `[n_f, d_f]` table; outputs are zero-padded to `output_dim`.

    The natively mixed-dimension model the papers retrain after a search: no
    mask, no full table, `sum_f n_f d_f` parameters. The output has the shape
    of the searched layer's (`[..., F, D]`, or `[..., D]` for one field), so
    the layers after it are unchanged; a field's `d_f` columns come first and
    the rest are exact zeros. Built by `keras_embdim.rebuild_mixed`.

    Args:
        input_dims: vocabulary size of each field (an int for one field).
        dims: kept dims of each field, in `[0, output_dim]`.
        output_dim: width of the output (the searched layer's D).
        field_names: names for reports.
        embeddings_initializer: as for `keras.layers.Embedding`.

    Example:

    >>> import numpy as np, keras_embdim as ked
    >>> layer = ked.layers.MixedDimensionEmbedding([100, 20], [4, 1], 8)
    >>> tuple(layer(np.array([[3, 7]])).shape)
    (1, 2, 8)
    >>> int(layer.count_params())
    420
    """

    def __init__(
        self,
        input_dims: int | Sequence[int],
        dims: int | Sequence[int],
        output_dim: int,
        *,
        field_names: Sequence[str] | None = None,
        embeddings_initializer="uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._multi = not isinstance(input_dims, (int, np.integer))
        self.input_dims = [int(v) for v in (input_dims if self._multi else [input_dims])]
        dims = list(dims) if isinstance(dims, (list, tuple, np.ndarray)) else [dims]
        if isinstance(output_dim, bool) or not isinstance(output_dim, (int, np.integer)) or output_dim < 1:
            raise ValueError(f"`output_dim` must be a positive integer; received {output_dim!r}.")
        self.output_dim = int(output_dim)
        if len(dims) != len(self.input_dims) or any(not 0 <= int(d) <= self.output_dim for d in dims):
            raise ValueError(
                f"`dims` must be {len(self.input_dims)} integers in [0, {self.output_dim}] (one per field); "
                f"received {dims!r}."
            )
        if any(n < 1 for n in self.input_dims):
            raise ValueError(f"`input_dims` must be positive vocabulary sizes; received {input_dims!r}.")
        self.dims = [int(d) for d in dims]
        self.field_names = list(field_names) if field_names is not None else [f"field_{f}" for f in range(len(dims))]
        self.layout = FieldLayout(self.input_dims, self.field_names, multi_field=self._multi)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.tables: list = []

    def build(self, input_shape=None):
        self.tables = [
            self.add_weight(name=f"table_{f}", shape=(n, d), initializer=self.embeddings_initializer)
            if d else None
            for f, (n, d) in enumerate(zip(self.input_dims, self.dims))
        ]
        self.built = True

    def call(self, inputs):
        ids = self.layout.checked(inputs, self.name)

        def one(f, field_ids):
            table = self.tables[f]
            if table is None:
                return tf.zeros(tf.concat([tf.shape(field_ids), [self.output_dim]], 0), self.compute_dtype)
            rows = tf.cast(tf.gather(tf.convert_to_tensor(table), field_ids), self.compute_dtype)
            pad = self.output_dim - self.dims[f]
            return tf.pad(rows, [[0, 0]] * (len(rows.shape) - 1) + [[0, pad]]) if pad else rows

        if not self._multi:
            return one(0, ids)
        return tf.stack([one(f, ids[..., f]) for f in range(len(self.dims))], axis=-2)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            input_dims=self.input_dims if self._multi else self.input_dims[0],
            dims=self.dims,
            output_dim=self.output_dim,
            field_names=self.field_names,
            embeddings_initializer=keras.initializers.serialize(self.embeddings_initializer),
        )
        return config
