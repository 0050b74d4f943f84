"""Serve an export the way TF Serving loads it, with TensorFlow only.

Run as a script (never imported by keras_embdim): it makes `import keras_embdim`
fail first, then loads the SavedModel with the `serve` tag through both
`tf.saved_model.load` (TF2) and the TF1 session loader, runs the
`serving_default` signature on the inputs of an .npz file and compares with the
expected outputs of another .npz file (and the `serve` endpoint, Keras' `model.export()`'s,
on the same inputs placed in the structure it takes); runs the export's signatures of TF
Serving's Regress / Classify APIs (`dimensions.json`'s `serving_apis`) on the same rows sent
as serialized `tf.train.Example`s, with TF Serving's checks of their outputs; replays the
export's TF Serving warmup requests as TF Serving does when it loads a model. Prints one JSON
line; exit code 1 if a difference exceeds --atol.

    python serve_check.py EXPORT_DIR inputs.npz expected.npz [--atol 1e-5]
"""

import argparse
import json
import sys

sys.modules["keras_embdim"] = None  # any import of keras_embdim now fails


def _max_abs_diff(got, expected) -> float:
    """In float64: a bfloat16 / float16 output's difference in its own dtype would be rounded."""
    import numpy as np

    return float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(expected, np.float64))))


def _replay_warmup(export_dir: str) -> dict:
    """Run the export's TF Serving warmup requests as TF Serving does when it loads the model
    (`saved_model_warmup.cc`, `predict_util.cc`): each TFRecord parsed as a
    `tensorflow.serving.PredictionLog` with TF Serving's own protos, the signature it names
    (empty: serving_default) looked up, the request's inputs exactly the signature's, one
    `Session.run` of them in a session of the `serve` graph; any failure fails the load (here:
    raises). Without the `tensorflow-serving-api` package the records are not replayed, and
    the report says so."""
    import os

    import tensorflow as tf

    path = os.path.join(export_dir, "assets.extra", "tf_serving_warmup_requests")
    if not os.path.exists(path):
        return {"warmup_records": 0}
    try:
        from tensorflow_serving.apis import prediction_log_pb2
    except ImportError:
        return {"warmup_records": None, "warmup_not_replayed": "tensorflow-serving-api is not installed"}
    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]
    if len(records) > 1000:
        raise SystemExit(f"{len(records)} warmup records: TF Serving refuses more than 1000")
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], export_dir)
        for log in records:
            request = log.predict_log.request
            name = request.model_spec.signature_name or "serving_default"
            sd = meta.signature_def[name]
            if set(request.inputs) != set(sd.inputs):
                raise SystemExit(f"warmup request inputs {sorted(request.inputs)} != signature {name!r} inputs "
                                 f"{sorted(sd.inputs)}")
            for k, v in request.inputs.items():  # Session::Run refuses another dtype (Python's feed would cast)
                if v.dtype != sd.inputs[k].dtype:
                    raise SystemExit(f"warmup request input {k!r} is {tf.as_dtype(v.dtype).name}, signature {name!r} "
                                     f"takes {tf.as_dtype(sd.inputs[k].dtype).name}")
            feed = {graph.get_tensor_by_name(sd.inputs[k].name): tf.make_ndarray(v) for k, v in request.inputs.items()}
            sess.run({k: graph.get_tensor_by_name(v.name) for k, v in sd.outputs.items()}, feed_dict=feed)
    return {"warmup_records": len(records)}


def _export_report(export_dir: str) -> dict:
    """The `export` section of the export's `dimensions.json` ({} for a SavedModel without one)."""
    import os

    path = os.path.join(export_dir, "dimensions.json")
    if not os.path.exists(path):
        return {}
    with open(path) as fh:
        return json.load(fh)["export"]


def _serve_endpoint(loaded, export_dir: str, inputs: dict, expected: dict) -> dict:
    """Keras' `serve` endpoint (`model.export()`'s, which ours mirror): the inputs placed by their
    names in the structure its input signature has, its outputs (the model's structure, flattened)
    compared with `expected` under the signature output names `dimensions.json` gives them
    (`serve_outputs`). An export without the endpoint or the names reports None."""
    import tensorflow as tf

    serve, names = getattr(loaded, "serve", None), _export_report(export_dir).get("serve_outputs")
    if serve is None or not names:
        return {"serve_max_abs_diff": None}
    (struct,), _ = serve.concrete_functions[0].structured_input_signature
    out = serve(tf.nest.map_structure(lambda s: tf.constant(inputs[s.name], s.dtype), struct))
    got = dict(zip(names, [t.numpy() for t in tf.nest.flatten(out)]))
    return {"serve_max_abs_diff": max(_max_abs_diff(got[k], expected[k]) for k in expected)}


def _examples(inputs: dict) -> list:
    """Each row of `inputs` as the serialized `tf.train.Example` a Regress / Classify client sends
    (TF Serving serializes the request's examples into the signature's string input): a feature
    per input, int64 for integers, float for floats, bytes for strings."""
    import numpy as np
    import tensorflow as tf

    rows = len(next(iter(inputs.values())))
    out = []
    for i in range(rows):
        feature = {}
        for name, value in inputs.items():
            v = np.asarray(value[i]).reshape(-1)
            if v.dtype.kind in "iu":
                feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=v.astype(np.int64)))
            elif v.dtype.kind == "f":
                feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=v.astype(np.float32)))
            else:
                feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[x.encode() if isinstance(x, str) else bytes(x) for x in v.tolist()]))
        out.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return out


# TF Serving's method names and the keys its Regress / Classify handlers look up
_API_METHODS = {"regress": ("tensorflow/serving/regress", "outputs"),
                "classify": ("tensorflow/serving/classify", "scores")}


def _serving_apis(sess, meta, export_dir: str, inputs: dict, expected: dict) -> dict:
    """The Regress / Classify API signatures `dimensions.json` lists, run as TF Serving runs such a
    request (`regressor.cc`, `classifier.cc`): the signature's method name, its one string input
    `inputs` and its output key checked, the rows' serialized examples fed in one `Session.run`,
    the output checked (float32; `[batch]` or `[batch, 1]` for Regress, `[batch, classes]` for
    Classify) and compared with the expected output it serves. None: the export lists none."""
    import numpy as np
    import tensorflow as tf

    apis = _export_report(export_dir).get("serving_apis") or []
    if not apis:
        return {"api_max_abs_diff": None, "api_signatures": []}
    examples = np.array(_examples(inputs), object)
    worst = 0.0
    for api in apis:
        method, key = _API_METHODS[api["method"]]
        if api["name"] not in meta.signature_def:
            raise SystemExit(f"dimensions.json lists signature {api['name']!r}; the SavedModel has no such signature")
        sd = meta.signature_def[api["name"]]
        if sd.method_name != method or list(sd.inputs) != ["inputs"] or list(sd.outputs) != [key] or (
                sd.inputs["inputs"].dtype != tf.string.as_datatype_enum):
            raise SystemExit(f"signature {api['name']!r} is not a {api['method']} signature TF Serving accepts: {sd}")
        got = sess.run(sess.graph.get_tensor_by_name(sd.outputs[key].name),
                       {sess.graph.get_tensor_by_name(sd.inputs["inputs"].name): examples})
        n = len(examples)
        ok = got.dtype == np.float32 and got.shape[0] == n and (
            (got.ndim == 1 or (got.ndim == 2 and got.shape[1] == 1)) if api["method"] == "regress" else got.ndim == 2)
        if not ok:
            raise SystemExit(f"signature {api['name']!r} returned {got.dtype} {list(got.shape)}, which TF Serving's "
                             f"{api['method']} handler refuses")
        if api["output"] in expected:  # every API signature runs and is checked; compared where expected
            worst = max(worst, _max_abs_diff(got, np.asarray(expected[api["output"]]).reshape(got.shape)))
    return {"api_max_abs_diff": worst, "api_signatures": [api["name"] for api in apis]}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("export_dir")
    p.add_argument("inputs")
    p.add_argument("expected")
    p.add_argument("--atol", type=float, default=1e-5)
    args = p.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    try:
        import keras_embdim  # noqa: F401

        raise SystemExit("keras_embdim is importable: the check would not prove anything")
    except ImportError:
        pass

    inputs = dict(np.load(args.inputs, allow_pickle=False))
    expected = dict(np.load(args.expected, allow_pickle=False))
    report = {"keras_embdim_importable": False}

    # TF2 loader
    loaded = tf.saved_model.load(args.export_dir, tags=["serve"])
    sig = loaded.signatures["serving_default"]
    specs = sig.structured_input_signature[1]
    out2 = sig(**{k: tf.constant(v, dtype=specs[k].dtype) for k, v in inputs.items()})
    report["tf2_max_abs_diff"] = max(_max_abs_diff(out2[k].numpy(), expected[k]) for k in expected)
    report.update(_serve_endpoint(loaded, args.export_dir, inputs, expected))

    # TF1 session loader, as TF Serving does
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], args.export_dir)
        sd = meta.signature_def["serving_default"]
        feed = {graph.get_tensor_by_name(sd.inputs[k].name): v for k, v in inputs.items()}
        fetch = {k: graph.get_tensor_by_name(sd.outputs[k].name) for k in expected}
        out1 = sess.run(fetch, feed_dict=feed)
        report.update(_serving_apis(sess, meta, args.export_dir, inputs, expected))
    report["tf1_max_abs_diff"] = max(_max_abs_diff(out1[k], expected[k]) for k in expected)
    report.update(_replay_warmup(args.export_dir))
    report["signature_inputs"] = sorted(sd.inputs.keys())
    report["signature_outputs"] = sorted(sd.outputs.keys())
    print(json.dumps(report))
    ok = all(report[k] <= args.atol for k in ("tf2_max_abs_diff", "tf1_max_abs_diff", "serve_max_abs_diff",
                                              "api_max_abs_diff") if report[k] is not None)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
