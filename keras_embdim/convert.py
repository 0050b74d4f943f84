"""`make_searchable`: turn a trained model's plain Embeddings into searchable ones."""

from __future__ import annotations

from typing import Any, Sequence

from keras_embdim._compat import keras


def make_searchable(model: Any, *, layer_class: type | None = None, layers: Sequence[str] | None = None):
    """Clone `model`, replacing each `keras.layers.Embedding` by a searchable layer.

    This is the warm-start path for an already-trained model (like tfmot's
    `prune_low_magnitude(model)`): the clone has the same architecture and
    weights, with `layer_class` (default `PrunableEmbedding`) in place of every
    plain Embedding (or of the ones named in `layers`), all dimensions kept. Keras
    keys weight files by layer class, so `load_weights` of a plain model's file
    into a model of other classes cannot work; this does.

    Works for functional and sequential models (`keras.models.clone_model`).

    Example:

    ```python
    searchable = ked.make_searchable(trained_model)
    searchable.compile(...)
    searchable.fit(train, callbacks=[ked.SingleShotPruner(0.1)])
    ```
    """
    if layer_class is None:
        from keras_embdim.layers import PrunableEmbedding as layer_class
    wanted = set(layers) if layers is not None else None
    replaced = []

    def clone(layer):
        if type(layer) is keras.layers.Embedding and (wanted is None or layer.name in wanted):
            cfg = layer.get_config()
            for key in ("lora_rank", "lora_alpha", "quantization_config", "input_length", "sparse"):
                cfg.pop(key, None)
            replaced.append(layer.name)
            return layer_class.from_config(cfg)
        return layer.__class__.from_config(layer.get_config())

    new = keras.models.clone_model(model, clone_function=clone)
    if wanted is not None and wanted - set(replaced):
        raise ValueError(f"layers={sorted(wanted)}: no plain Embedding named {sorted(wanted - set(replaced))}.")
    if not replaced:
        raise ValueError(f"model '{model.name}' has no keras.layers.Embedding to make searchable.")
    for layer in new.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return new
