"""A small model zoo for examples, tests and benchmarks: MLP, DeepFM and DCN over fields.

Each model takes one named int input per field (what a serving request
carries), stacks them to `[batch, F]` and embeds them with any embedding:
"prunable" (`PrunableEmbedding`, multi-field), "plain"
(`keras.layers.Embedding` over a shared id space, the baseline) or a callable
`(vocab_sizes, dim, field_names) -> layer` returning a multi-field layer.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import tensorflow as tf

from keras_embdim._compat import cross_layer, keras, register_serializable
from keras_embdim.layers import FieldOffsets, PrunableEmbedding, StackFields


@register_serializable(package="keras_embdim")
class FMInteraction(keras.layers.Layer):
    """Second-order factorization-machine term of `[batch, F, D]` embeddings -> `[batch, 1]`."""

    def call(self, emb):
        s = tf.reduce_sum(emb, axis=1)
        return 0.5 * tf.reduce_sum(tf.square(s) - tf.reduce_sum(tf.square(emb), axis=1), axis=1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1)


@register_serializable(package="keras_embdim")
class SumFields(keras.layers.Layer):
    """Sum over the field axis of `[batch, F, 1]` first-order weights -> `[batch, 1]`."""

    def call(self, x):
        return tf.reduce_sum(x, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


EmbeddingFactory = Callable[[Sequence[int], int, Sequence[str]], keras.layers.Layer]


def _embedded_fields(vocab_sizes, field_names, dim, embedding):
    """Named int inputs per field -> stacked `[batch, F]` ids -> `[batch, F, dim]`."""
    field_names = list(field_names or [f"field_{i}" for i in range(len(vocab_sizes))])
    inputs = {n: keras.Input(shape=(), dtype="int32", name=n) for n in field_names}
    ids = StackFields(name="stack_fields")([inputs[n] for n in field_names])
    return inputs, ids, _embed(ids, vocab_sizes, dim, field_names, embedding)


def _embed(ids, vocab_sizes, dim, field_names, embedding, name="embedding"):
    if embedding == "prunable":
        return PrunableEmbedding(list(vocab_sizes), dim, field_names=list(field_names), name=name)(ids)
    if embedding == "plain":
        shared = FieldOffsets(vocab_sizes, name=f"{name}_offsets")(ids)
        return keras.layers.Embedding(int(sum(vocab_sizes)), dim, name=name)(shared)
    if callable(embedding):
        return embedding(list(vocab_sizes), dim, list(field_names))(ids)
    raise ValueError(f"`embedding` must be 'prunable', 'plain' or a callable; received {embedding!r}.")


def _mlp(x, hidden, dropout, name):
    for i, units in enumerate(hidden):
        x = keras.layers.Dense(units, activation="relu", name=f"{name}_{i}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout)(x)
    return x


def build_mlp(
    vocab_sizes: Sequence[int],
    field_names: Sequence[str] | None = None,
    *,
    embedding_dim: int = 16,
    hidden: Sequence[int] = (128, 64),
    dropout: float = 0.0,
    embedding: str | EmbeddingFactory = "prunable",
    sequences: Mapping[str, tuple[int, int | None]] | None = None,
    average_fields: bool = False,
    name: str = "mlp",
) -> keras.Model:
    """MLP over the field embeddings (concatenated, or averaged over the fields), sigmoid output "ctr".

    Args:
        vocab_sizes, field_names: one vocabulary size (and name) per field.
        embedding_dim: D of every embedding.
        hidden: units of the MLP's layers.
        dropout: dropout after each MLP layer.
        embedding: "prunable", "plain" or a factory (module docstring).
        sequences: bags of ids beside the fields, `{name: (vocabulary size,
            length or None)}`: an int input `[batch, length]` each (0 pads),
            embedded by a single-field layer `{name}_embedding` with
            `mask_zero=True` ("prunable": `PrunableEmbedding`, "plain":
            `keras.layers.Embedding`) and averaged over its ids
            (`GlobalAveragePooling1D` `{name}_pool`, padding masked), then
            concatenated after the fields (a watch history, a title's tokens).
        average_fields: the MLP takes the fields' embeddings averaged over the
            fields (`GlobalAveragePooling1D` "fields_mean", `[batch, D]`: a bag of
            features) instead of concatenated (`[batch, F * D]`).

    Example:

    >>> import keras_embdim as ked
    >>> m = ked.models.build_mlp([10, 20], ["a", "b"], embedding_dim=4, hidden=(8,))
    >>> sorted(m.input_names if hasattr(m, "input_names") else [t.name for t in m.inputs])
    ['a', 'b']
    >>> m = ked.models.build_mlp([10, 20], ["a", "b"], embedding_dim=4, hidden=(8,), sequences={"history": (50, 5)})
    >>> m.get_layer("history_embedding").mask_zero, tuple(m.get_layer("history_pool").output.shape)
    (True, (None, 4))
    >>> m = ked.models.build_mlp([10, 20], ["a", "b"], embedding_dim=4, hidden=(8,), average_fields=True)
    >>> tuple(m.get_layer("fields_mean").output.shape)
    (None, 4)
    """
    if not isinstance(average_fields, bool):
        raise ValueError(f"`average_fields` must be True or False; received {average_fields!r}.")
    inputs, ids, emb = _embedded_fields(vocab_sizes, field_names, embedding_dim, embedding)
    if average_fields:
        x = keras.layers.GlobalAveragePooling1D(name="fields_mean")(emb)
    else:
        x = keras.layers.Flatten(name="flatten")(emb)
    if sequences:
        pooled = [x]
        for seq, spec in sequences.items():
            if (not isinstance(spec, (tuple, list)) or len(spec) != 2 or not isinstance(spec[0], int) or spec[0] < 1
                    or not (spec[1] is None or isinstance(spec[1], int) and spec[1] >= 1)):
                raise ValueError(f"`sequences` must map each name to (vocabulary size >= 1, length >= 1 or None); "
                                 f"received {seq!r}: {spec!r}.")
            vocab, length = spec
            if seq in inputs:
                raise ValueError(f"`sequences` names an input that is also a field; received {seq!r}.")
            inputs[seq] = keras.Input(shape=(length,), dtype="int32", name=seq)
            if embedding == "prunable":
                layer = PrunableEmbedding(vocab, embedding_dim, mask_zero=True, name=f"{seq}_embedding")
            elif embedding == "plain":
                layer = keras.layers.Embedding(vocab, embedding_dim, mask_zero=True, name=f"{seq}_embedding")
            else:
                raise ValueError(f"`sequences` need embedding='prunable' or 'plain'; received {embedding!r}.")
            pooled.append(keras.layers.GlobalAveragePooling1D(name=f"{seq}_pool")(layer(inputs[seq])))
        x = keras.layers.Concatenate(name="features")(pooled)
    x = _mlp(x, hidden, dropout, "mlp")
    out = keras.layers.Dense(1, activation="sigmoid", name="ctr")(x)
    return keras.Model(inputs, out, name=name)


def build_deepfm(
    vocab_sizes: Sequence[int],
    field_names: Sequence[str] | None = None,
    *,
    embedding_dim: int = 16,
    hidden: Sequence[int] = (128, 64),
    dropout: float = 0.0,
    embedding: str | EmbeddingFactory = "prunable",
    name: str = "deepfm",
) -> keras.Model:
    """DeepFM (Guo et al. 2017): first-order weights + FM term + MLP, sharing the embeddings.

    The first-order weights are a plain `Embedding(sum(n_f), 1)`: they are not
    searched (one number per value).
    """
    inputs, ids, emb = _embedded_fields(vocab_sizes, field_names, embedding_dim, embedding)
    shared = FieldOffsets(vocab_sizes, name="first_order_offsets")(ids)
    first = SumFields(name="first_order_sum")(
        keras.layers.Embedding(int(sum(vocab_sizes)), 1, embeddings_initializer="zeros", name="first_order")(shared)
    )
    fm = FMInteraction(name="fm")(emb)
    deep = _mlp(keras.layers.Flatten(name="flatten")(emb), hidden, dropout, "deep")
    deep = keras.layers.Dense(1, name="deep_logit")(deep)
    logit = keras.layers.Add(name="logit")([first, fm, deep])
    out = keras.layers.Activation("sigmoid", name="ctr")(logit)
    return keras.Model(inputs, out, name=name)


def build_dcn(
    vocab_sizes: Sequence[int],
    field_names: Sequence[str] | None = None,
    *,
    embedding_dim: int = 16,
    cross_layers: int = 2,
    projection_dim: int | None = None,
    hidden: Sequence[int] = (128, 64),
    structure: str = "stacked",
    dropout: float = 0.0,
    embedding: str | EmbeddingFactory = "prunable",
    name: str = "dcn",
) -> keras.Model:
    """DCN-v2 (Wang et al. 2021): cross layers over the concatenated field embeddings `x0`,
    then the MLP (`structure="stacked"`) or the MLP beside them on `x0` (`"parallel"`, their
    outputs concatenated), sigmoid output named "ctr".

    The cross layers (`cross_1`, ...) are keras-rs' `FeatureCross` under Keras 3 and TFRS'
    `tfrs.layers.dcn.Cross` under Keras 2 (extras `keras-rs` / `tfrs`); `projection_dim`
    makes them low-rank. An export computes the cross stack on the kept columns only
    (docs/guides/deployment.md).

    Example:

    >>> import keras_embdim as ked
    >>> m = ked.models.build_dcn([10, 20], ["a", "b"], embedding_dim=4, hidden=(8,))
    >>> [l.name for l in m.layers if l.name.startswith("cross")]
    ['cross_1', 'cross_2']
    """
    if structure not in ("stacked", "parallel"):
        raise ValueError(f"`structure` must be 'stacked' or 'parallel'; received structure={structure!r}.")
    if not isinstance(cross_layers, int) or cross_layers < 1:
        raise ValueError(f"`cross_layers` must be an int >= 1; received cross_layers={cross_layers!r}.")
    inputs, ids, emb = _embedded_fields(vocab_sizes, field_names, embedding_dim, embedding)
    x0 = keras.layers.Flatten(name="flatten")(emb)
    x = x0
    for i in range(cross_layers):
        x = cross_layer(projection_dim=projection_dim, name=f"cross_{i + 1}")(x0, x)
    if structure == "stacked":
        x = _mlp(x, hidden, dropout, "deep")
    else:
        x = keras.layers.Concatenate(name="cross_and_deep")([x, _mlp(x0, hidden, dropout, "deep")])
    out = keras.layers.Dense(1, activation="sigmoid", name="ctr")(x)
    return keras.Model(inputs, out, name=name)


def compile_ctr(model: keras.Model, learning_rate: float = 1e-3) -> keras.Model:
    """Adam + binary cross-entropy + AUC, the setting used in tests and benchmarks."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc")],
    )
    return model
