"""`OrthogonalEmbeddingRegularizer`: HAM's orthogonal regularity on one embedding table."""

from __future__ import annotations

import tensorflow as tf

from keras_embdim._compat import keras, register_serializable
from keras_embdim.search.orthogonality import orthogonality_penalty
from keras_embdim.validation import check_int, check_number


@register_serializable(package="keras_embdim")
class OrthogonalEmbeddingRegularizer(keras.regularizers.Regularizer):
    """`strength * ||E_hat^T E_hat - I||_F^2` on `sample_rows` rows drawn from the table each step.

    For any `Embedding` (`embeddings_regularizer=`), the table treated as one
    field; `O(sample_rows * D^2)` per step. For searchable layers the
    `OrthogonalRegularizer` callback penalises the rows each batch looks up,
    per field and kept columns only.

    Args:
        strength: beta, >= 0.
        sample_rows: rows sampled per step, >= 2.

    Example:

    >>> import keras_embdim as ked
    >>> emb = ked.keras.layers.Embedding(1000, 8, embeddings_regularizer=ked.OrthogonalEmbeddingRegularizer(1e-3))
    """

    def __init__(self, strength: float = 1e-3, sample_rows: int = 1024):
        self.strength = check_number("strength", strength, low=0)
        self.sample_rows = check_int("sample_rows", sample_rows, 2)

    def __call__(self, table):
        table = tf.convert_to_tensor(table)
        idx = tf.random.uniform([self.sample_rows], 0, tf.shape(table)[0], dtype=tf.int32)
        return self.strength * orthogonality_penalty(tf.gather(table, idx))

    def get_config(self) -> dict:
        return {"strength": self.strength, "sample_rows": self.sample_rows}
