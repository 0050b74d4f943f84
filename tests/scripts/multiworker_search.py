"""One worker of a MultiWorkerMirroredStrategy cluster on loopback; run by tests/test_multiworker.py.

    TF_CONFIG='{"cluster": {"worker": [...]}, "task": {"type": "worker", "index": i}}' \\
        TF_USE_LEGACY_KERAS=1 python multiworker_search.py OUT_DIR [METHOD ...]

Every worker builds the same model in the strategy's scope and runs the search
callback in `fit` (each worker searches from the all-reduced gradients). The
chief (index 0) alone also gets a `DimensionExporter`, which runs after the
last step, while the other worker may already have finished: it must create
no mirrored variable and start no collective. Every worker then saves the model (`.keras`; saving is a
collective), and the chief loads its copy outside the strategy and exports that copy: the
single-process export of the same weights. Each worker writes
`OUT_DIR/worker_<index>.json`.
"""

import json
import os
import sys

import numpy as np
import tensorflow as tf

import keras_embdim as ked
from keras_embdim import keras

BUDGET = 0.25


def embedding(method):
    """The method's layer (the registry in keras_embdim.methods), as build_mlp's factory."""
    return lambda v, d, n: ked.get_method(method).embedding(v, d, n)


def search(method):
    extra = {"warmup_steps": 8, "scoring_steps": 4} if method == "sseds" else {}  # SSEDS: score early
    return ked.get_method(method).search(BUDGET, verbose=0, **extra)


def main(out_dir, methods):
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    chief = task["index"] == 0
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    d = ked.data.make_synthetic_ctr(num_rows=12_000, num_fields=5, max_vocab=300, seed=3)
    x, y = d.train
    sample = d.inputs(d.test[0][:256])
    out = {"replicas": strategy.num_replicas_in_sync}
    for method in methods:
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = ked.models.compile_ctr(ked.models.build_mlp(
                d.vocab_sizes, d.field_names, embedding_dim=8, hidden=(16,), embedding=embedding(method)))
        callbacks = [search(method)]
        path = os.path.join(out_dir, method, "export")
        if chief:
            callbacks.append(ked.DimensionExporter(path, sample_inputs=sample, verbose=0))
        train = tf.data.Dataset.from_tensor_slices((d.inputs(x), y)).batch(400)  # the global batch
        hist = model.fit(train, epochs=2, verbose=0, callbacks=callbacks)
        layer = ked.find_searchable_layers(model)[0]
        mask = layer.dimension_mask()
        rec = {
            "kept_dims": mask.kept_dims.tolist(),
            "kept_params": int(mask.kept_params),
            "full_params": int(mask.full_params),
            "value_sizes": [s.tolist() for s in mask.value_sizes] if mask.value_sizes is not None else None,
            "loss": [float(v) for v in hist.history["loss"]],
        }
        # saving reads sync-on-read variables (the metrics) with a collective: every worker saves,
        # the others to their own folder (TensorFlow's multi-worker saving pattern)
        saved = os.path.join(out_dir, method if chief else f"{method}_worker_{task['index']}", "model.keras")
        os.makedirs(os.path.dirname(saved), exist_ok=True)
        model.save(saved)
        if chief:
            export = callbacks[-1].result
            single = keras.models.load_model(saved)  # outside the strategy: one process, one device
            again = ked.export_compact(single, os.path.join(out_dir, method, "single"), sample_inputs=sample,
                                       verbose=0)
            rec.update({
                "export": export.path,
                "export_max_abs_diff": export.max_abs_diff,
                "export_bytes": export.embedding_bytes,
                "single_export": again.path,
                "single_export_bytes": again.embedding_bytes,
                "pred": np.asarray(model(sample, training=False)).reshape(-1).tolist(),
            })
        out[method] = rec
    with open(os.path.join(out_dir, f"worker_{task['index']}.json"), "w") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or ["sseds", "ham", "pme", "amtl"])
