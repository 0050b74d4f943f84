"""The signatures of TF Serving's Regress and Classify APIs, on the `serving_tf_example` graph.

TF Serving answers three APIs: Predict (any signature), and Regress and
Classify, which take serialized `tf.train.Example`s and accept only a
signature whose `method_name` is `tensorflow/serving/regress` (one string
input `inputs`, one float32 output `outputs` of shape `[batch]` or
`[batch, 1]`) or `tensorflow/serving/classify` (input `inputs`, a float32
`scores` output `[batch, classes]`). `tf.saved_model.save` writes every
signature with the Predict method and has no way to ask for another (TF
issues 34968 and 38081; Keras' `model.export()` has none either), so with
`example_signature=True` the exporter adds them to the saved graph itself:
each is a `SignatureDef` naming tensors `serving_tf_example` already has
(its examples placeholder, one of its outputs), so no graph is added or
traced twice, and the SavedModel's fingerprint is written again for the
changed `saved_model.pb`.

Which outputs get one (`plan`): every float32 output of shape `[batch]` or
`[batch, 1]` is served by the Regress API, every float32 output of shape
`[batch, classes]` (a static `classes` >= 2) by the Classify API as its
scores (no class labels). A one-column output is not turned into two
classification scores: whether it is a probability is not the exporter's
to guess. A model with one output gets `regression` or `classification`;
a model with several outputs gets `regression_<output>` /
`classification_<output>` for each output that qualifies.

`tf.saved_model.load` does not list these signatures (it rebuilds
signatures from the saved functions, and these add none); TF Serving and
the TF1 loader read them from the `MetaGraphDef`. `run` runs them as TF
Serving does and applies its checks of the outputs.

Example:

>>> [(a.name, a.method, a.output) for a in plan({"ctr": tf.TensorSpec([None, 1], tf.float32)})]
[('regression', 'regress', 'ctr')]
>>> [(a.name, a.method) for a in plan({"click": tf.TensorSpec([None], tf.float32),
...                                    "topic": tf.TensorSpec([None, 5], tf.float32)})]
[('regression_click', 'regress'), ('classification_topic', 'classify')]
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

# tensorflow/python/saved_model/signature_constants.py (TF Serving's kRegressMethodName, ...)
METHOD_NAMES = {"regress": "tensorflow/serving/regress", "classify": "tensorflow/serving/classify"}
INPUTS = "inputs"  # REGRESS_INPUTS, CLASSIFY_INPUTS
OUTPUT_KEYS = {"regress": "outputs", "classify": "scores"}  # REGRESS_OUTPUTS, CLASSIFY_OUTPUT_SCORES
SIGNATURE_PREFIX = {"regress": "regression", "classify": "classification"}


@dataclass(frozen=True)
class ApiSignature:
    """A signature of the Regress (`method="regress"`) or Classify (`"classify"`) API serving one
    output of `serving_tf_example` (its name there: `output`)."""

    name: str
    method: str
    output: str

    def to_json(self) -> dict:
        return asdict(self)


def method_of(spec: tf.TensorSpec) -> str | None:
    """The API that can serve an output of this spec (`"regress"`, `"classify"`), or None.

    >>> method_of(tf.TensorSpec([None, 3], tf.float32)), method_of(tf.TensorSpec([None, 1], tf.float16))
    ('classify', None)
    """
    shape = spec.shape
    if spec.dtype != tf.float32 or shape.rank not in (1, 2):
        return None
    if shape.rank == 1 or shape[1] == 1:
        return "regress"
    return "classify" if shape[1] is not None and shape[1] >= 2 else None


def plan(outputs: dict) -> list[ApiSignature]:
    """The API signatures of an example signature whose outputs are `outputs` (signature output
    name -> `tf.TensorSpec`), in output name order (see the module docstring for the names)."""
    out = []
    for key in sorted(outputs):
        method = method_of(outputs[key])
        if method is not None:
            prefix = SIGNATURE_PREFIX[method]
            out.append(ApiSignature(prefix if len(outputs) == 1 else f"{prefix}_{key}", method, key))
    return out


def signature_def(example: meta_graph_pb2.SignatureDef, api: ApiSignature,
                  examples_input: str) -> meta_graph_pb2.SignatureDef:
    """The `SignatureDef` of `api`: `example`'s (the `serving_tf_example` SignatureDef) examples
    input and its output `api.output`, under the keys and method name TF Serving requires."""
    out = meta_graph_pb2.SignatureDef(method_name=METHOD_NAMES[api.method])
    out.inputs[INPUTS].CopyFrom(example.inputs[examples_input])
    out.outputs[OUTPUT_KEYS[api.method]].CopyFrom(example.outputs[api.output])
    return out


def add_to_saved_model(saved_dir: str, example_signature: str, examples_input: str,
                       apis: list[ApiSignature]) -> None:
    """Add the `apis` signatures to the SavedModel in `saved_dir` (built on its signature
    `example_signature`, whose string input is `examples_input`) and write its fingerprint again."""
    if not apis:
        return
    from tensorflow.python.saved_model import fingerprinting_utils

    path = os.path.join(saved_dir, "saved_model.pb")
    saved = saved_model_pb2.SavedModel()
    with open(path, "rb") as fh:
        saved.ParseFromString(fh.read())
    for meta in saved.meta_graphs:
        defs = meta.signature_def
        taken = [a.name for a in apis if a.name in defs]
        if taken:
            raise ValueError(f"the SavedModel already has signatures {taken}.")
        for api in apis:
            defs[api.name].CopyFrom(signature_def(defs[example_signature], api, examples_input))
    with open(path, "wb") as fh:
        fh.write(saved.SerializeToString())
    fingerprinting_utils.write_fingerprint(saved_dir)  # its checksum is the changed saved_model.pb's


def check_output(api: ApiSignature, value: np.ndarray, examples: int) -> np.ndarray:
    """TF Serving's checks of a Regress / Classify output (`PostProcessRegressionResult`,
    `PostProcessClassificationResult`): float32, `[examples]` or `[examples, 1]` values for
    Regress (returned as `[examples]`, one regression per example), `[examples, classes]` scores
    for Classify. Raises ValueError with TF Serving's complaint."""
    value = np.asarray(value)
    if value.dtype != np.float32:
        raise ValueError(f"signature {api.name!r}: TF Serving expects a float32 output, got {value.dtype}.")
    if api.method == "regress":
        if not (value.ndim == 1 or (value.ndim == 2 and value.shape[1] == 1)) or value.shape[0] != examples:
            raise ValueError(f"signature {api.name!r}: TF Serving expects an output of shape [{examples}] or "
                             f"[{examples}, 1], got {list(value.shape)}.")
        return value.reshape(examples)
    if value.ndim != 2 or value.shape[0] != examples:
        raise ValueError(f"signature {api.name!r}: TF Serving expects scores of shape [{examples}, classes], got "
                         f"{list(value.shape)}.")
    return value


def run(saved_dir: str, apis: list[ApiSignature], examples: np.ndarray) -> dict:
    """Each API signature run as TF Serving runs a Regress / Classify request: the SavedModel loaded
    with the TF1 session loader (`serve` tag), the signature checked as TF Serving checks it (its
    method name, one `inputs` input of strings, its output key), the serialized examples fed to
    `inputs` in one `Session.run`, the output checked by `check_output`. Returns signature name ->
    output (`[examples]` regressions, `[examples, classes]` scores)."""
    # the loader of `tf.compat.v1.saved_model.load`, without its deprecation warning
    from tensorflow.python.saved_model import loader_impl

    out = {}
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as sess:
        meta = loader_impl.SavedModelLoader(saved_dir).load(sess, ["serve"])
        for api in apis:
            sd = meta.signature_def[api.name]
            key = OUTPUT_KEYS[api.method]
            if (sd.method_name != METHOD_NAMES[api.method] or list(sd.inputs) != [INPUTS]
                    or sd.inputs[INPUTS].dtype != tf.string.as_datatype_enum or list(sd.outputs) != [key]):
                raise ValueError(f"signature {api.name!r} is not a {api.method} signature TF Serving accepts: {sd}")
            value = sess.run(graph.get_tensor_by_name(sd.outputs[key].name),
                             {graph.get_tensor_by_name(sd.inputs[INPUTS].name): np.asarray(examples, object)})
            out[api.name] = check_output(api, value, len(examples))
    return out
