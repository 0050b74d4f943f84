"""Search embedding dims on a tf.distribute cluster, export on the chief.

Two strategies (`--strategy`):

- `mirrored` (default): MultiWorkerMirroredStrategy. Every worker trains on
  its shard of the data and runs `SingleShotPruner`; the workers all-reduce
  gradients and, when the search ends, the gate scores, so they all keep the
  same dims. The chief (index 0) exports the compacted SavedModel (TF
  Serving's versioned layout) after the last step; every worker saves the
  Keras model (a collective), the others into a scratch folder.
- `ps`: ParameterServerStrategy. The chief is the coordinator: it runs `fit`,
  whose steps the workers execute on tables sharded over the parameter
  servers; `SingleShotPruner` scores held-out batches (`scoring_data`) on the
  coordinator at the end of the first epoch (docs/guides/distribution.md),
  and the chief exports. Workers and parameter servers only serve
  (`tf.distribute.Server`) until the chief is done.

One machine, processes on loopback ports (this script starts them):

    python examples/cluster_search.py --local-workers 2 --export-dir /tmp/ctr
    python examples/cluster_search.py --strategy ps --local-workers 2 --local-ps 2 --export-dir /tmp/ctr

A real cluster: run the same script on every machine with its own TF_CONFIG
(nothing else changes), e.g. on the first of two machines:

    TF_CONFIG='{"cluster": {"worker": ["host1:2222", "host2:2222"]},
                "task": {"type": "worker", "index": 0}}' \\
        python examples/cluster_search.py --export-dir /shared/models/ctr

and for `--strategy ps` a cluster with a "chief", "worker"s and "ps"es, the
task of each machine naming its role (the chief's process exits when the
export is written; stop the servers then).

Multi-worker `fit` needs tf_keras (Keras 3.15 fails on dict inputs under
MultiWorkerMirroredStrategy, and has no ParameterServerStrategy support:
docs/guides/distribution.md), so the script sets TF_USE_LEGACY_KERAS=1 before
TensorFlow is imported (`pip install keras_embdim[tfrs]` installs tf_keras).
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


def emit(summary: dict) -> None:
    """Print `summary` as one JSON line in a single write: the local workers share the launcher's
    stdout, and `print` writes the line and its newline apart (two writes when unbuffered), so
    two workers' lines could run together."""
    sys.stdout.write(json.dumps(summary) + "\n")
    sys.stdout.flush()


def launch_local(n: int, argv: list[str], ps: int = 0) -> int:
    """Start this script's processes of a loopback cluster and wait for them: `n` workers
    (MultiWorkerMirroredStrategy), or with `ps` parameter servers a chief, `n` workers and `ps`
    servers (ParameterServerStrategy: the servers are stopped when the chief is done)."""
    ports = iter(free_ports(n + ps + (1 if ps else 0)))
    cluster = {"worker": [f"localhost:{next(ports)}" for _ in range(n)]}
    if ps:
        cluster["ps"] = [f"localhost:{next(ports)}" for _ in range(ps)]
        cluster["chief"] = [f"localhost:{next(ports)}"]

    def start(kind, i):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": kind, "index": i}})}
        return subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv], env=env)

    if not ps:
        codes = [p.wait() for p in [start("worker", i) for i in range(n)]]
        return max(codes, key=abs)
    servers = [start(kind, i) for kind in ("worker", "ps") for i in range(len(cluster[kind]))]
    try:
        return start("chief", 0).wait()
    finally:
        for p in servers:
            p.kill()


def serve(task: dict) -> None:
    """A worker or parameter server of a ParameterServerStrategy cluster: serve until killed."""
    import tensorflow as tf

    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    server = tf.distribute.Server(resolver.cluster_spec(), job_name=task["type"], task_index=task["index"],
                                  protocol="grpc", start=True)
    server.join()


def coordinator(args) -> dict:
    """The chief of a ParameterServerStrategy cluster: fit (steps run on the workers), search, export."""
    import tensorflow as tf

    import keras_embdim as ked

    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    # tables over 64 KiB are sharded over (up to) every parameter server
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=64 << 10, max_shards=len(resolver.cluster_spec().as_dict().get("ps", [])))
    strategy = tf.distribute.experimental.ParameterServerStrategy(resolver, variable_partitioner=partitioner)
    data = ked.data.make_synthetic_ctr(num_rows=args.rows, num_fields=args.fields, max_vocab=args.max_vocab,
                                       seed=0)
    x, y = data.train
    features = data.inputs(x)

    def dataset_fn(context):  # runs on every worker: its own shard, repeated (steps_per_epoch ends epochs)
        ds = tf.data.Dataset.from_tensor_slices((features, y)).shard(
            context.num_input_pipelines, context.input_pipeline_id)
        return ds.shuffle(len(y), seed=0).repeat().batch(context.get_per_replica_batch_size(args.batch_size))

    with strategy.scope():
        model = ked.models.build_mlp(data.vocab_sizes, data.field_names, embedding_dim=16, embedding="prunable")
        model.compile(optimizer=ked.keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    valid = tf.data.Dataset.from_tensor_slices((data.inputs(data.valid[0]), data.valid[1])).batch(4096)
    pruner = ked.SingleShotPruner(args.budget, scoring_data=valid, verbose=1)
    exporter = ked.DimensionExporter(args.export_dir, sample_inputs=data.inputs(data.test[0][:512]), verbose=1)
    steps = max(1, len(y) // args.batch_size)
    model.fit(ked.keras.utils.experimental.DatasetCreator(dataset_fn), epochs=args.epochs, steps_per_epoch=steps,
              verbose=2, callbacks=[pruner, exporter])
    summary = {"worker": "chief", "kept_dims": ked.find_searchable_layers(model)[0].dimension_mask().kept_dims.tolist(),
               "kept_fraction": pruner.result.kept_fraction, "export": exporter.result.path,
               "tables": type(ked.find_searchable_layers(model)[0].embedding_variable).__name__}
    emit(summary)
    return summary


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
    emit(summary)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategy", choices=("mirrored", "ps"), default="mirrored",
                   help="MultiWorkerMirroredStrategy or ParameterServerStrategy")
    p.add_argument("--local-workers", type=int, default=0,
                   help="start this many workers on loopback ports (one machine); 0: be one task (TF_CONFIG)")
    p.add_argument("--local-ps", type=int, default=2, help="with --strategy ps: parameter servers to start")
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
        return launch_local(args.local_workers, forwarded, args.local_ps if args.strategy == "ps" else 0)
    if args.strategy == "ps":
        task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
        if task.get("type") in ("worker", "ps"):
            serve(task)
        elif task.get("type") == "chief":
            coordinator(args)
        else:
            raise SystemExit("--strategy ps: TF_CONFIG must give this task's type: 'chief', 'worker' or 'ps'.")
        return 0
    worker(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
