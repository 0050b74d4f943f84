"""The serving signatures of an export: named inputs, stable output names, id dtypes.

- Inputs keep the model's input names (cleaned to what SavedModel allows).
- Integer inputs are int64 in `serving_default` (numpy's default integer,
  what `tf.make_tensor_proto(np.array(...))` sends) and int32 in
  `serving_int32` (what `tf.make_tensor_proto([1, 2])` sends); both cast to
  the model's dtype inside, int64 -> int32 saturating, so an id beyond the
  int32 range is an invalid id, never a wrapped-around valid one. Called
  from Python, `serving_default` also takes numpy int32 arrays.
- `serving_tf_example` (with `example_signature=True`): one string input,
  `examples`, of serialized `tf.train.Example`s, one per row, a feature per
  input (`example_features`), as TFX's Keras exports take them; parsed with
  `tf.io.parse_example`, then served as `serving_default`. On its tensors,
  the signatures of TF Serving's Regress / Classify APIs
  (`keras_embdim.export.serving_apis`).
- `serve` (an endpoint, not a signature: `tf.saved_model.load(path).serve(x)`,
  `keras.layers.TFSMLayer(path, call_endpoint="serve")`), as Keras'
  `model.export()` writes it: the model's dtypes and input structure (Keras 3:
  the model's own; tf_keras: a graph network's inputs flat) in, the model's
  output structure out; it calls `serving_default`'s function (stored once).
- Outputs: a dict output keeps its keys; otherwise an output produced by a
  layer the user named keeps that name, and an output of an auto-named layer
  (`dense_1`, which changes whenever the model is rebuilt) is `output_<i>`,
  as Keras 3's `model.export()` names them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from keras_embdim import _compat, _utils
from keras_embdim.layers.fields import saturate_cast

DEFAULT_SIGNATURE = "serving_default"
INT32_SIGNATURE = "serving_int32"
EXAMPLE_SIGNATURE = "serving_tf_example"
EXAMPLES_INPUT = "examples"

_NAME_OK = re.compile(r"[^A-Za-z0-9_.\-]")


def clean_name(name: str) -> str:
    name = _NAME_OK.sub("_", name) or "inputs"
    return name if name[0].isalpha() else f"x_{name}"


def _spec_of(value: Any, name: str) -> tf.TensorSpec:
    value = tf.convert_to_tensor(value)
    return tf.TensorSpec([None, *value.shape[1:]], value.dtype, name=name)


@dataclass
class InputLayout:
    """How named serving inputs map to the model's inputs."""

    kind: str  # "dict", "list" or "single"
    names: list  # the model's names, in the model's order
    specs: dict  # clean name -> tf.TensorSpec in the model's dtypes
    flat_endpoint: bool = False  # `serve` takes the inputs flat, as tf_keras' export (`_compat.export_flattens_inputs`)

    def serving_specs(self, int_dtype: tf.DType) -> dict:
        """The specs of a signature whose integer inputs are `int_dtype`."""
        return {
            n: tf.TensorSpec(s.shape, int_dtype if s.dtype.is_integer else s.dtype, name=n) for n, s in self.specs.items()
        }

    @property
    def has_integer_inputs(self) -> bool:
        return any(s.dtype.is_integer for s in self.specs.values())

    def model_inputs(self, named: dict, cast: bool = True) -> Any:
        """Serving inputs (by clean name) in the model's structure, converted to the model's
        dtypes (`cast=False`: integers as served; `keras_embdim.export.fold.run` casts them
        where a consumer needs it)."""
        conv = {n: to_dtype(named[n], self.specs[n].dtype) if cast or not self.specs[n].dtype.is_integer
                else named[n] for n in self.specs}
        if self.kind == "dict":
            return {n: conv[clean_name(n)] for n in self.names}
        if self.kind == "list":
            return [conv[n] for n in self.names]
        return conv[self.names[0]]

    def _endpoint(self) -> tuple[str, list]:
        """`(kind, clean names in order)` of the inputs of the endpoint `serve`: the model's own
        structure, or (`flat_endpoint`) a list in `tf.nest.flatten`'s order (a dict's keys sorted),
        one tensor if there is one input."""
        if not self.flat_endpoint:
            return self.kind, [clean_name(n) for n in self.names]
        names = [clean_name(n) for n in (sorted(self.names) if self.kind == "dict" else self.names)]
        return ("list" if len(names) > 1 else "single"), names

    def model_specs(self) -> Any:
        """The specs in the structure and dtypes Keras' `model.export()` endpoint `serve` takes
        them: Keras 3's, the model's own structure (a dict by the model's input names, a list, or
        one spec); tf_keras', a graph network's inputs flat (`flat_endpoint`)."""
        kind, names = self._endpoint()
        if kind == "dict":
            return {n: self.specs[clean_name(n)] for n in self.names}
        if kind == "list":
            return [self.specs[n] for n in names]
        return self.specs[names[0]]

    def endpoint_inputs(self, named: dict) -> Any:
        """Inputs by clean name, converted to the model's dtypes, in `model_specs`' structure."""
        return tf.nest.map_structure(lambda s: to_dtype(named[s.name], s.dtype), self.model_specs())

    def named_inputs(self, inputs: Any) -> dict:
        """`model_specs`' inverse: the endpoint's inputs -> clean name -> tensor."""
        kind, names = self._endpoint()
        if kind == "dict":
            return {clean_name(n): inputs[n] for n in self.names}
        if kind == "list":
            return dict(zip(names, inputs))
        return {names[0]: inputs}


to_dtype = saturate_cast  # a wider integer is clipped first, so it cannot wrap into range


def input_layout(model: Any, input_signature: Any, sample_inputs: Any) -> InputLayout:
    """How the export's named inputs map to `model`'s inputs."""
    if input_signature is not None:
        # Its form says how the model is called: one tensor, a list, or a dict.
        if isinstance(input_signature, tf.TensorSpec):
            n = clean_name(input_signature.name or "inputs")
            return InputLayout("single", [n], {n: tf.TensorSpec(input_signature.shape, input_signature.dtype, name=n)})
        if isinstance(input_signature, (list, tuple)) and all(isinstance(s, tf.TensorSpec) for s in input_signature):
            names = [clean_name(s.name or f"input_{i}") for i, s in enumerate(input_signature)]
            return InputLayout("list", names, {n: tf.TensorSpec(s.shape, s.dtype, name=n) for n, s in zip(names, input_signature)})
        if not isinstance(input_signature, dict) or not all(
                isinstance(s, tf.TensorSpec) for s in input_signature.values()):
            raise ValueError(
                "`input_signature` must be a tf.TensorSpec (model takes one tensor), a list of them, "
                f"or a dict of name -> tf.TensorSpec (model takes a dict); received {input_signature!r}."
            )
        names = list(input_signature)
        return InputLayout("dict", names, {clean_name(n): tf.TensorSpec(s.shape, s.dtype, name=clean_name(n))
                                           for n, s in input_signature.items()})
    struct = _compat.input_structure(model)
    if struct is None:
        if sample_inputs is None:
            raise ValueError(
                f"model '{model.name}' has no symbolic inputs (subclassed?); pass "
                "`input_signature` (dict of name -> tf.TensorSpec) or `sample_inputs`."
            )
        if isinstance(sample_inputs, dict):
            names = list(sample_inputs)
            return InputLayout("dict", names, {clean_name(n): _spec_of(sample_inputs[n], clean_name(n)) for n in names})
        if isinstance(sample_inputs, (list, tuple)):
            names = [f"input_{i}" for i in range(len(sample_inputs))]
            return InputLayout("list", names, {n: _spec_of(v, n) for n, v in zip(names, sample_inputs)})
        return InputLayout("single", ["inputs"], {"inputs": _spec_of(sample_inputs, "inputs")})

    def spec(t, name):
        shape = _utils.symbolic_shape(t)
        return tf.TensorSpec([None, *shape[1:]], _utils.symbolic_dtype(t), name=name)

    flat = _compat.export_flattens_inputs(model)
    if isinstance(struct, dict):
        names = list(struct)
        return InputLayout("dict", names, {clean_name(n): spec(struct[n], clean_name(n)) for n in names}, flat)
    if isinstance(struct, (list, tuple)):
        names, seen = [], set()
        for i, t in enumerate(struct):
            n = clean_name(_utils.symbolic_name(t))
            if n in seen:
                n = f"{n}_{i}"
            seen.add(n)
            names.append(n)
        return InputLayout("list", names, {n: spec(t, n) for n, t in zip(names, struct)}, flat)
    n = clean_name(_utils.symbolic_name(struct))
    return InputLayout("single", [n], {n: spec(struct, n)}, flat)


def _snake(name: str) -> str:
    """Keras' own `to_snake_case`, which its automatic layer names start from."""
    s = re.sub("(.)([A-Z][a-z0-9]+)", r"\1_\2", name)
    s = re.sub("([a-z])([A-Z])", r"\1_\2", s).lower()
    return s if not s.startswith("_") else "private" + s


def is_auto_named(layer: Any) -> bool:
    """Whether `layer.name` is what Keras names a layer of its class when no name is given."""
    base = _snake(type(layer).__name__)
    return re.fullmatch(re.escape(base) + r"(_\d+)?", layer.name) is not None


def output_names(model: Any, outputs: Any) -> list[str]:
    """The signature's output names for `outputs` (a dict keeps its keys)."""
    if isinstance(outputs, dict):
        return [clean_name(k) for k in outputs]
    flat = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    net = _compat.graph_network(model)
    layers = [_compat.producing_layer(t) for t in _compat.graph_outputs(net)] if net is not None else []
    if len(layers) != len(flat):
        layers = [None] * len(flat)
    names, seen = [], set()
    for i, layer in enumerate(layers):
        name = f"output_{i}" if layer is None or is_auto_named(layer) else clean_name(layer.name)
        while name in seen:
            name = f"{name}_{i}"
        seen.add(name)
        names.append(name)
    return names


def named_outputs(model: Any, outputs: Any) -> dict:
    if isinstance(outputs, dict):
        return {clean_name(k): v for k, v in outputs.items()}
    flat = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    return dict(zip(output_names(model, outputs), flat))


def structured_outputs(model: Any, like: Any, named: dict) -> Any:
    """`named_outputs`' inverse: a signature's named outputs in the model's own output structure
    `like` (what the model returned: a dict keeps its keys, a list or tuple its order, else the
    one tensor), as Keras' `model.export()` endpoint `serve` returns them."""
    if isinstance(like, dict):
        return {k: named[clean_name(k)] for k in like}
    names = output_names(model, like)
    if isinstance(like, (list, tuple)):
        return type(like)(named[n] for n in names)
    return named[names[0]]


def utf8(values: Any) -> list[bytes]:
    """String values, flattened, as the bytes a `TensorProto` or a `tf.train.Feature` holds (a str
    encoded as UTF-8)."""
    return [v.encode() if isinstance(v, str) else bytes(v) for v in np.asarray(values).ravel().tolist()]


def example_features(specs: dict) -> dict:
    """The `tf.io.parse_example` features of a signature's inputs (`specs`: name ->
    `tf.TensorSpec`): an integer input is an int64 feature, a float input a float feature (float32,
    what `tf.train.Example` holds), a string input a bytes feature, each of the input's shape
    without the batch axis (fixed: a `tf.train.Example` feature has no ragged form here)."""
    out = {}
    for name, spec in specs.items():
        shape = spec.shape[1:]
        kind = (tf.int64 if spec.dtype.is_integer else tf.string if spec.dtype == tf.string
                else tf.float32 if spec.dtype.is_floating else None)
        if kind is None or not shape.is_fully_defined():
            raise ValueError(f"`example_signature=True` needs inputs a tf.train.Example feature can hold (integer, "
                             f"float or string, of a fixed shape); input {name!r} is {spec.dtype.name} of shape "
                             f"{spec.shape.as_list()}.")
        out[name] = tf.io.FixedLenFeature(shape.as_list(), kind)
    return out


def to_examples(named: dict, features: dict) -> np.ndarray:
    """Each row of `named` (input name -> array, the same rows) as a serialized
    `tf.train.Example` with the `features` of `example_features`: what a client of
    `serving_tf_example` sends (the export's verification and warmup requests send these)."""
    rows = len(next(iter(named.values())))
    out = np.empty(rows, object)
    for i in range(rows):
        feature = {}
        for name, spec in features.items():
            values = np.asarray(named[name][i]).reshape(-1)
            if spec.dtype == tf.int64:
                feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values.astype(np.int64)))
            elif spec.dtype == tf.float32:
                feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=values.astype(np.float32)))
            else:
                feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=utf8(values)))
        out[i] = tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
    return out


def synthesize_inputs(specs: dict, low: int, rows: int = 64, seed: int = 0) -> dict:
    """Valid-looking inputs for verification: integer ids below `low` (the smallest vocabulary)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, s in specs.items():
        shape = [rows if i == 0 else (d or 1) for i, d in enumerate(s.shape.as_list())]
        if s.dtype.is_integer:
            out[name] = rng.integers(0, max(1, low), size=shape).astype(s.dtype.as_numpy_dtype)
        elif s.dtype == tf.string:
            out[name] = np.full(shape, b"", dtype=object)
        elif s.dtype == tf.bool:
            out[name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            out[name] = rng.standard_normal(shape).astype(s.dtype.as_numpy_dtype)
    return out


def named_sample(layout: InputLayout, sample_inputs: Any) -> dict:
    """`sample_inputs` (a dict by input name, a list, or one array) by clean input name."""
    if isinstance(sample_inputs, dict):
        named = {clean_name(k): np.asarray(v) for k, v in sample_inputs.items()}
    elif isinstance(sample_inputs, (list, tuple)):
        named = {n: np.asarray(v) for n, v in zip(layout.specs, sample_inputs)}
    else:
        named = {next(iter(layout.specs)): np.asarray(sample_inputs)}
    missing = set(layout.specs) - set(named)
    if missing:
        raise ValueError(f"`sample_inputs` lacks inputs {sorted(missing)}: it holds {sorted(named)}, the export takes "
                         f"{sorted(layout.specs)}.")
    check_sample_rows(sample_inputs)
    kinds = {n: named[n].dtype.kind for n in layout.specs}
    wrong = {n: (named[n].dtype, layout.specs[n].dtype.name) for n in layout.specs
             if kinds[n] not in ("USO" if layout.specs[n].dtype == tf.string else "biuf")}
    if wrong:  # numbers for a string input, strings for a number input
        said = [f"{n!r} of dtype {got}, the export takes {want}" for n, (got, want) in wrong.items()]
        raise ValueError(f"`sample_inputs` must match the dtypes the export takes; received {', '.join(said)}.")
    fractional = {n: _first_fraction(named[n]) for n in layout.specs
                  if layout.specs[n].dtype.is_integer and kinds[n] == "f"}
    fractional = {n: v for n, v in fractional.items() if v is not None}
    if fractional:  # a cast would verify the export on other ids than the ones given
        said = [f"{n!r} holds {v!r}, the export takes {layout.specs[n].dtype.name}" for n, v in fractional.items()]
        raise ValueError(f"`sample_inputs` must hold whole numbers for integer inputs; received {', '.join(said)}.")
    wrong = {n: (named[n].shape, tuple(layout.specs[n].shape.as_list())) for n in layout.specs
             if not layout.specs[n].shape.is_compatible_with(named[n].shape)}
    if wrong:
        said = [f"{n!r} of shape {got}, the export takes {want}" for n, (got, want) in wrong.items()]
        raise ValueError(f"`sample_inputs` must match the shapes the export takes (None: any size); received "
                         f"{', '.join(said)}.")
    return named


def _first_fraction(values: np.ndarray) -> float | None:
    """The first value of a float array that is not a whole number (NaN and inf included), or None."""
    with np.errstate(invalid="ignore"):
        off = np.mod(values, 1) != 0
    return float(values[off].flat[0]) if off.any() else None


def sample_from(sample_inputs: Any) -> Any:
    """`sample_inputs` as arrays: a `tf.data.Dataset` gives the inputs of its first element
    (the `x` of an `(x, y)` or `(x, y, sample_weight)` element, as `fit` reads it; a batched
    dataset, so that is a batch); anything else is returned as it is."""
    if not isinstance(sample_inputs, tf.data.Dataset):
        return sample_inputs
    for element in sample_inputs.take(1):
        x = tf.nest.map_structure(lambda t: t.numpy(), element[0] if isinstance(element, tuple) else element)
        if any(np.ndim(leaf) == 0 for leaf in tf.nest.flatten(x)):
            raise ValueError("`sample_inputs` is a tf.data.Dataset of single examples (scalar inputs); batch it "
                             "(`dataset.batch(256)`) to verify the export on a batch.")
        return x
    raise ValueError("`sample_inputs` is an empty tf.data.Dataset; give it at least one batch to verify the export on.")


def check_sample_rows(sample_inputs: Any) -> None:
    """`sample_inputs` (a dict by input name, a list, or one array) holds the same number of
    rows, at least one, in every input (the first axis): a sample an export can be verified on."""
    if isinstance(sample_inputs, dict):
        arrays = {str(k): np.asarray(v) for k, v in sample_inputs.items()}
    elif isinstance(sample_inputs, (list, tuple)):
        arrays = {f"[{i}]": np.asarray(v) for i, v in enumerate(sample_inputs)}
    else:
        arrays = {"sample_inputs": np.asarray(sample_inputs)}
    rows = {n: (int(a.shape[0]) if a.ndim else None) for n, a in arrays.items()}
    if len(set(rows.values())) != 1 or None in rows.values() or 0 in rows.values():
        raise ValueError(f"`sample_inputs` must hold the same number of rows (at least one, on the first axis) in "
                         f"every input, to verify the export on; received rows {rows}.")
