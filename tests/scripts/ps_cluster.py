"""ParameterServerStrategy on loopback (tf_keras): this process is the coordinator; 2 workers and 2
parameter servers run in their own processes. Run by tests/test_parameter_server.py; prints JSON.

    TF_USE_LEGACY_KERAS=1 python ps_cluster.py OUT_DIR

1. A plain model (keras.layers.Embedding) whose tables a `variable_partitioner` shards over both
   parameter servers trains with `fit`.
2. The same model with keras_embdim layers (PrunableEmbedding, HardMaskEmbedding) trains there too.
3. A model searched on one machine (SingleShotPruner), loaded in the strategy's scope (its table
   sharded), trains there, and `export_compact` on the coordinator reads the sharded table.
4. Every search callback and the OrthogonalRegularizer refuse the strategy with an error naming
   the method and the alternative (recorded, not raised).
"""

import json
import os
import subprocess
import sys

from loopback import free_ports  # tests/scripts, the script's folder

SERVER = """
import json, sys
import tensorflow as tf
cluster = tf.train.ClusterSpec(json.loads(sys.argv[1]))
server = tf.distribute.Server(cluster, job_name=sys.argv[2], task_index=int(sys.argv[3]), protocol="grpc", start=True)
print("ready", flush=True)
server.join()
"""


def start_cluster():
    ports = free_ports(4)
    cluster = {"worker": [f"localhost:{p}" for p in ports[:2]], "ps": [f"localhost:{p}" for p in ports[2:]]}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    procs = [subprocess.Popen([sys.executable, "-c", SERVER, json.dumps(cluster), job, str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for job in ("worker", "ps") for i in range(2)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    return cluster, procs


def main(work):
    cluster, procs = start_cluster()
    try:
        import numpy as np
        import tensorflow as tf

        import keras_embdim as ked
        from keras_embdim import keras

        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), rpc_layer="grpc")
        partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(min_shard_bytes=16 * 1024,
                                                                                 max_shards=2)
        strategy = tf.distribute.experimental.ParameterServerStrategy(resolver, variable_partitioner=partitioner)
        d = ked.data.make_synthetic_ctr(num_rows=8_000, num_fields=4, max_vocab=2_000, seed=1)
        x, y = d.train
        features = d.inputs(x)

        def dataset_fn(input_context):
            ds = tf.data.Dataset.from_tensor_slices((features, y)).shuffle(8_000, seed=0).repeat().batch(256)
            return ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)

        out = {"workers": strategy.extended._num_workers if hasattr(strategy.extended, "_num_workers") else None}

        def build(embedding):
            with strategy.scope():
                model = ked.models.compile_ctr(ked.models.build_mlp(
                    d.vocab_sizes, d.field_names, embedding_dim=8, hidden=(16,), embedding=embedding))
            return model

        for name, embedding in (("plain", "plain"), ("prunable", "prunable"),
                                ("ham", lambda v, dim, n: ked.HardMaskEmbedding(v, dim, field_names=n,
                                                                                 name="embedding"))):
            keras.utils.set_random_seed(0)
            model = build(embedding)
            tables = [layer.embeddings if isinstance(layer, keras.layers.Embedding) else layer.embedding_variable
                      for layer in model.layers
                      if isinstance(layer, keras.layers.Embedding) or layer in ked.find_searchable_layers(model)]
            hist = model.fit(keras.utils.experimental.DatasetCreator(dataset_fn), epochs=2, steps_per_epoch=20,
                             verbose=0)
            sample = d.inputs(d.test[0][:200])
            pred = np.asarray(model.predict(tf.data.Dataset.from_tensor_slices(sample).batch(200), verbose=0))
            out[name] = {
                "loss": [float(v) for v in hist.history["loss"]],
                "sharded": [type(t).__name__ for t in tables],
                "shards": [[list(v.shape) for v in getattr(t, "variables", [t])] for t in tables],
                "devices": sorted({v.device for t in tables for v in getattr(t, "variables", [t])}),
                "pred_finite": bool(np.isfinite(pred).all()),
                "pred_std": float(pred.std()),
            }

        # a search on one machine, then training and export under the strategy (the documented route)
        keras.utils.set_random_seed(0)
        local = ked.models.compile_ctr(ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=8,
                                                            hidden=(16,), embedding="prunable"))
        local.fit(features, y, batch_size=256, epochs=1, verbose=0,
                  callbacks=[ked.SingleShotPruner(0.25, warmup_steps=5, scoring_steps=5, verbose=0)])
        local.save(os.path.join(work, "searched.keras"))
        with strategy.scope():
            model = keras.models.load_model(os.path.join(work, "searched.keras"))
        layer = ked.find_searchable_layers(model)[0]
        hist = model.fit(keras.utils.experimental.DatasetCreator(dataset_fn), epochs=1, steps_per_epoch=20,
                         verbose=0)
        sample = d.inputs(d.test[0][:200])
        export = ked.export_compact(model, os.path.join(work, "export"), sample_inputs=sample, verbose=0)
        out["searched"] = {
            "table": type(layer.embedding_variable).__name__,
            "shards": len(getattr(layer.embedding_variable, "variables", [None])),
            "kept_dims": layer.dimension_mask().kept_dims.tolist(),
            "searched_kept_dims": ked.find_searchable_layers(local)[0].dimension_mask().kept_dims.tolist(),
            "kept_params": int(layer.dimension_mask().kept_params),
            "full_params": int(layer.dimension_mask().full_params),
            "loss": [float(v) for v in hist.history["loss"]],
            "export": export.path,
            "export_max_abs_diff": export.max_abs_diff,
            "export_bytes": export.embedding_bytes,
            "pred": np.asarray(model(sample, training=False)).reshape(-1).tolist(),
        }

        errors = {}
        for cb in (ked.SingleShotPruner(0.2), ked.HardMaskSearch(0.2), ked.PMEPruner(0.2),
                   ked.TwinsMaskSearch(0.2), ked.OrthogonalRegularizer(1e-3)):
            model = build("prunable")
            try:
                model.fit(keras.utils.experimental.DatasetCreator(dataset_fn), epochs=1, steps_per_epoch=5,
                          verbose=0, callbacks=[cb])
                errors[type(cb).__name__] = None
            except ValueError as e:
                errors[type(cb).__name__] = str(e)
        out["errors"] = errors
        print(json.dumps(out))
    finally:
        for p in procs:
            p.kill()


if __name__ == "__main__":
    main(sys.argv[1])
