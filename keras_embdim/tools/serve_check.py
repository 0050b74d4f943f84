"""Serve an export the way TF Serving loads it, with TensorFlow only.

Run as a script (never imported by keras_embdim): it makes `import keras_embdim`
fail first, then loads the SavedModel with the `serve` tag through both
`tf.saved_model.load` (TF2) and the TF1 session loader, runs the
`serving_default` signature on the inputs of an .npz file and compares with the
expected outputs of another .npz file (and the `serve` endpoint, Keras' `model.export()`'s,
on the same inputs placed in the structure it takes); replays the export's TF Serving warmup
requests as TF Serving does when it loads a model. Prints one JSON line; exit code 1 if a
difference exceeds --atol.

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


def _serve_endpoint(loaded, export_dir: str, inputs: dict, expected: dict) -> dict:
    """Keras' `serve` endpoint (`model.export()`'s, which ours mirror): the inputs placed by their
    names in the structure its input signature has, its outputs (the model's structure, flattened)
    compared with `expected` under the signature output names `dimensions.json` gives them
    (`serve_outputs`). An export without the endpoint or the names reports None."""
    import os

    import tensorflow as tf

    serve, names, report = getattr(loaded, "serve", None), None, os.path.join(export_dir, "dimensions.json")
    if os.path.exists(report):
        with open(report) as fh:
            names = json.load(fh)["export"].get("serve_outputs")
    if serve is None or not names:
        return {"serve_max_abs_diff": None}
    (struct,), _ = serve.concrete_functions[0].structured_input_signature
    out = serve(tf.nest.map_structure(lambda s: tf.constant(inputs[s.name], s.dtype), struct))
    got = dict(zip(names, [t.numpy() for t in tf.nest.flatten(out)]))
    return {"serve_max_abs_diff": max(_max_abs_diff(got[k], expected[k]) for k in expected)}


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
    report["tf1_max_abs_diff"] = max(_max_abs_diff(out1[k], expected[k]) for k in expected)
    report.update(_replay_warmup(args.export_dir))
    report["signature_inputs"] = sorted(sd.inputs.keys())
    report["signature_outputs"] = sorted(sd.outputs.keys())
    print(json.dumps(report))
    ok = all(report[k] <= args.atol for k in ("tf2_max_abs_diff", "tf1_max_abs_diff", "serve_max_abs_diff")
             if report[k] is not None)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
