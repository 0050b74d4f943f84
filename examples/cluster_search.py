"""Search embedding dims on a tf.distribute cluster (MultiWorkerMirroredStrategy), export on the chief.

One machine, workers on loopback ports (this script starts them):

    python examples/cluster_search.py --local-workers 2 --export-dir /tmp/ctr

A real cluster: run the same script on every machine with its own TF_CONFIG
(nothing else changes), e.g. on the first of two machines:

    TF_CONFIG='{"cluster": {"worker": ["host1:2222", "host2:2222"]},
                "task": {"type": "worker", "index": 0}}' \\
        python examples/cluster_search.py --export-dir /shared/models/ctr

Every worker trains on its shard of the data and runs `SingleShotPruner`;
the workers all-reduce gradients and, when the search ends, the gate scores,
so they all keep the same dims. The chief (index 0) exports the compacted
SavedModel (TF Serving's versioned layout) after the last step; every worker
saves the Keras model (a collective), the others into a scratch folder.

Multi-worker `fit` needs tf_keras (Keras 3.15 fails on dict inputs under this
strategy: docs/guides/distribution.md), so the script sets
TF_USE_LEGACY_KERAS=1 before TensorFlow is imported (`pip install
keras_embdim[tfrs]` installs tf_keras).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def launch_local(n: int, argv: list[str]) -> int:
    """Start `n` copies of this script as the workers of a loopback cluster; wait for all."""
    workers = [f"localhost:{p}" for p in free_ports(n)]
    procs = []
    for i in range(n):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                                      "task": {"type": "worker", "index": i}})}
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv], env=env))
    codes = [p.wait() for p in procs]
    return max(codes, key=abs)


def worker(args) -> dict:
    import tensorflow as tf

    import keras_embdim as ked

    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {"type": "worker", "index": 0})
    chief = task.get("type") == "chief" or (task.get("type") == "worker" and task.get("index") == 0)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    data = ked.data.make_synthetic_ctr(num_rows=args.rows, num_fields=args.fields, max_vocab=args.max_vocab,
                                       seed=0)
    x, y = data.train
    train = tf.data.Dataset.from_tensor_slices((data.inputs(x), y)).shuffle(len(y), seed=0).batch(args.batch_size)
    with strategy.scope():
        model = ked.models.build_mlp(data.vocab_sizes, data.field_names, embedding_dim=16, embedding="prunable")
        model.compile(optimizer=ked.LazyAdam(1e-3), loss="binary_crossentropy",
                      metrics=[ked.keras.metrics.AUC(name="auc")])
    pruner = ked.SingleShotPruner(args.budget, verbose=int(chief))
    callbacks = [pruner]
    if chief:
        callbacks.append(ked.DimensionExporter(args.export_dir, sample_inputs=data.inputs(data.test[0][:512]),
                                               verbose=1))
    model.fit(train, epochs=args.epochs, verbose=2 if chief else 0, callbacks=callbacks)
    folder = args.export_dir if chief else tempfile.mkdtemp(prefix=f"worker_{task.get('index')}_")
    os.makedirs(folder, exist_ok=True)
    model.save(os.path.join(folder, "model.keras"))  # every worker: saving is a collective
    summary = {"worker": task.get("index"), "kept_dims": ked.find_searchable_layers(model)[0]
               .dimension_mask().kept_dims.tolist(), "kept_fraction": pruner.result.kept_fraction}
    if chief:
        summary["export"] = callbacks[-1].result.path
    print(json.dumps(summary), flush=True)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--local-workers", type=int, default=0,
                   help="start this many workers on loopback ports (one machine); 0: be one worker (TF_CONFIG)")
    p.add_argument("--export-dir", default="export/cluster_ctr", help="TF Serving base path (chief writes it)")
    p.add_argument("--budget", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--fields", type=int, default=10)
    p.add_argument("--max-vocab", type=int, default=5_000)
    p.add_argument("--batch-size", type=int, default=1024, help="global batch (split over the workers)")
    args = p.parse_args(argv)
    if args.local_workers:
        forwarded = [a for a in (argv if argv is not None else sys.argv[1:])]
        i = forwarded.index("--local-workers")
        del forwarded[i:i + 2]
        return launch_local(args.local_workers, forwarded)
    worker(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
