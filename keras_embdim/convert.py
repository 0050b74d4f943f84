"""`make_searchable`: turn a trained model's plain Embeddings into searchable ones."""

from __future__ import annotations

from typing import Any, Sequence

from keras_embdim._compat import keras
from keras_embdim.validation import check_model


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
    check_model(model)
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
        return type(layer).from_config(layer.get_config())

    new = keras.models.clone_model(model, clone_function=clone)
    if wanted is not None and wanted - set(replaced):
        raise ValueError(f"layers={sorted(wanted)}: no plain Embedding named {sorted(wanted - set(replaced))}.")
    if not replaced:
        raise ValueError(f"model '{model.name}' has no keras.layers.Embedding to make searchable.")
    for layer in new.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return new


def _per_layer(value: Any, name: str, arg: str, names: list[str]):
    if isinstance(value, dict):
        unknown = set(value) - set(names)
        if unknown:
            raise ValueError(f"`{arg}` names layers {sorted(unknown)} that are not wrapped; wrapped: {names}.")
        return value.get(name)
    return value


def add_twins(
    model: Any,
    *,
    layers: Sequence[str] | None = None,
    field_vocab_sizes: Any = None,
    frequencies: Any = None,
    **layer_kwargs: Any,
):
    """Clone `model` with a `TwinsMaskLayer` behind each of its plain Embeddings.

    The AMTL warm start: the clone predicts exactly what `model` predicts (every
    value starts at full size) and keeps its weights; train it with
    `TwinsMaskSearch(budget, twins_epochs=1)` so that the twins learn sizes for
    the trained tables before tables and twins train together.

    Args:
        model: a functional or sequential model.
        layers: names of the Embeddings to wrap (default: every
            `keras.layers.Embedding` wider than 1, so DeepFM's first-order
            weights stay as they are).
        field_vocab_sizes: for an Embedding over several fields with offset
            ids, the fields' vocabulary sizes (a list, or a dict by layer name).
        frequencies: known counts per value (array, or a dict by layer name).
        **layer_kwargs: passed to every `TwinsMaskLayer`.

    Example:

    ```python
    masked = ked.add_twins(trained, field_vocab_sizes=data.vocab_sizes)
    masked.compile(...)
    masked.fit(train, epochs=2, callbacks=[ked.TwinsMaskSearch(0.4, twins_epochs=1)])
    ```
    """
    from keras_embdim.layers import TwinsMaskLayer

    check_model(model)
    wanted = set(layers) if layers is not None else None
    candidates = [
        l.name
        for l in model.layers
        if type(l) is keras.layers.Embedding and (l.name in wanted if wanted is not None else l.output_dim > 1)
    ]
    if wanted is not None and wanted - set(candidates):
        raise ValueError(f"layers={sorted(wanted)}: no plain Embedding named {sorted(wanted - set(candidates))}.")
    if not candidates:
        raise ValueError(f"model '{model.name}' has no keras.layers.Embedding to put a TwinsMaskLayer behind.")
    for arg, value in (("field_vocab_sizes", field_vocab_sizes), ("frequencies", frequencies)):
        _per_layer(value, "", arg, candidates)  # validates dict keys

    def clone(layer):
        if layer.name in candidates:
            cfg = layer.get_config()
            inner = keras.layers.Embedding.from_config(cfg)
            return TwinsMaskLayer(
                inner,
                field_vocab_sizes=_per_layer(field_vocab_sizes, layer.name, "field_vocab_sizes", candidates),
                frequencies=_per_layer(frequencies, layer.name, "frequencies", candidates),
                name=f"{layer.name}_twins",
                **layer_kwargs,
            )
        return type(layer).from_config(layer.get_config())

    new = keras.models.clone_model(model, clone_function=clone)
    for layer in new.layers:
        if isinstance(layer, TwinsMaskLayer):
            layer.embedding.set_weights(model.get_layer(layer.name[: -len("_twins")]).get_weights())
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return new


def _is_dataframe(value: Any) -> bool:
    """A pandas DataFrame (pandas is loaded if the value can be one)."""
    import sys

    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(value, pd.DataFrame)


def _dims_from_report(report: Any, layer_names: list[str]) -> dict[str, list[int]]:
    """Per layer, kept dims per field from a report (DataFrame, records, dimensions.json)."""
    import json
    import os

    if isinstance(report, (str, os.PathLike)):
        path = os.fspath(report)
        if os.path.isdir(path):
            from keras_embdim.export import writer

            if not os.path.exists(os.path.join(path, "dimensions.json")) and writer.versions(path):
                path = os.path.join(path, str(writer.versions(path)[-1]))  # a model base path: its latest version
            path = os.path.join(path, "dimensions.json")
        with open(path) as fh:
            doc = json.load(fh)
        records = [{"layer": name, **f} for name, fields in doc["layers"].items() for f in fields]
    elif _is_dataframe(report):  # dimension_report's DataFrame
        records = report.to_dict("records")
    else:
        records = list(report)
    out: dict[str, list[int]] = {}
    for rec in records:
        # per value: the field's own size that keeps its parameters, rounded
        if rec.get("granularity") == "value":
            dims = int(round(rec["params_after"] / rec["vocab"]))
        else:
            dims = int(rec["kept_dims"])
        out.setdefault(rec["layer"], []).append(dims)
    missing = [n for n in layer_names if n not in out]
    if missing:
        raise ValueError(f"report: no fields for the searchable layers {missing}; it describes {sorted(out)}.")
    return out


def rebuild_mixed(model: Any, report: Any = None):
    """A natively mixed-dimension clone of `model`, to retrain from scratch.

    Every searchable layer becomes a `MixedDimensionEmbedding`: field f gets a
    table of its own `[n_f, d_f]` (fresh weights), with `d_f` from `report`
    (the papers' "retrain the slim model with the searched dims"). Per-value
    sizes become per-field dims that keep each field's parameters
    (`round(params_after / n_f)`). The other layers are cloned with fresh
    weights too; compile and train the result as the original.

    Args:
        model: a functional or sequential model with searchable layers.
        report: `dimension_report(model)`, its records, an export's
            `dimensions.json` (or its folder); default: the model's own masks.

    Example:

    ```python
    report = ked.dimension_report(searched_model)
    slim = ked.rebuild_mixed(searched_model, report)
    slim.compile(...); slim.fit(train, epochs=3)
    ```
    """
    from keras_embdim.layers.mixed_dimension_embedding import MixedDimensionEmbedding
    from keras_embdim.searchable import find_searchable_layers
    from keras_embdim.report import dimension_records

    layers = find_searchable_layers(model)
    if not layers:
        raise ValueError(f"model '{model.name}' has no searchable layer to rebuild.")
    names = [l.name for l in layers]
    dims = _dims_from_report(dimension_records(layers) if report is None else report, names)
    by_name = {l.name: l for l in layers}

    def clone(layer):
        if layer.name in by_name:
            m = layer.dimension_mask()
            if len(dims[layer.name]) != m.num_fields:
                raise ValueError(
                    f"report: layer '{layer.name}' has {m.num_fields} fields, the report {len(dims[layer.name])}."
                )
            multi = layer.multi_field
            return MixedDimensionEmbedding(
                list(m.vocab_sizes) if multi else m.vocab_sizes[0], dims[layer.name], m.output_dim,
                field_names=list(m.field_names), name=layer.name,
            )
        return type(layer).from_config(layer.get_config())

    return keras.models.clone_model(model, clone_function=clone)
