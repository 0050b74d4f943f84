"""ParameterServerStrategy on loopback (tf_keras): this process is the coordinator; 2 workers and 2
parameter servers run in their own processes. Run by tests/test_parameter_server.py; prints JSON.

    TF_USE_LEGACY_KERAS=1 python ps_cluster.py OUT_DIR

1. A plain model (keras.layers.Embedding) whose tables a `variable_partitioner` shards over both
   parameter servers trains with `fit`.
2. The same model with keras_embdim layers (PrunableEmbedding, HardMaskEmbedding) trains there too.
3. A model searched on one machine (SingleShotPruner), loaded in the strategy's scope (its table
   sharded), trains there, and `export_compact` on the coordinator reads the sharded table.
4. Every search runs there at epoch boundaries (SSEDS on `scoring_data`, PME, HAM + the
   OrthogonalRegularizer with 2 search epochs, AMTL, HAM after a warm-up epoch), lands within its
   budget with the removed entries exactly zero in the sharded table, and exports from it.
5. Options that need batch-level callbacks (SSEDS without `scoring_data` or with `warmup_steps`,
   HAM with one search epoch) refuse the strategy with an error naming the option (recorded).
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

        # every search under the strategy: epoch-boundary formulations (docs/guides/distribution.md)
        scoring = tf.data.Dataset.from_tensor_slices((d.inputs(d.valid[0]), d.valid[1])).batch(512)
        ham = lambda v, dim, n: ked.HardMaskEmbedding(v, dim, field_names=n, name="embedding")  # noqa: E731
        amtl = lambda v, dim, n: ked.TwinsMaskLayer(ked.PrunableEmbedding(v, dim, field_names=n),  # noqa: E731
                                                    name="embedding")

        class ScoresAfterFirstEpoch(keras.callbacks.Callback):
            """Whether the first epoch (the warm-up) left HAM's scores as they were."""

            def on_train_begin(self, logs=None):
                self.start = ked.find_searchable_layers(self.model)[0].mask_scores().copy()

            def on_epoch_end(self, epoch, logs=None):
                if epoch == 0:
                    now = ked.find_searchable_layers(self.model)[0].mask_scores()
                    self.unchanged = bool(np.array_equal(now, self.start))

        searches = {
            "sseds": ("prunable", lambda: [ked.SingleShotPruner(0.25, scoring_data=scoring, verbose=0)]),
            "pme": ("prunable", lambda: [ked.PMEPruner(0.25, verbose=0)]),
            "ham_ortho": (ham, lambda: [ked.HardMaskSearch(0.25, search_epochs=2, verbose=0),
                                        ked.OrthogonalRegularizer(1e-3)]),
            "amtl": (amtl, lambda: [ked.TwinsMaskSearch(0.25, verbose=0)]),
            # a warm-up epoch (the search paused: retraced at its end, on the coordinator), two search epochs
            "ham_warmup": (ham, lambda: [ked.HardMaskSearch(0.25, warmup_epochs=1, search_epochs=2, verbose=0),
                                         ScoresAfterFirstEpoch()]),
        }

        out["search"] = {}
        for name, (embedding, callbacks) in searches.items():
            keras.utils.set_random_seed(0)
            model = build(embedding)
            cbs = callbacks()
            epochs = 5 if name == "ham_warmup" else 3  # its search ends after 3 epochs: 2 of fine-tuning follow
            hist = model.fit(keras.utils.experimental.DatasetCreator(dataset_fn), epochs=epochs, steps_per_epoch=20,
                             verbose=0, callbacks=cbs)
            layer = ked.find_searchable_layers(model)[0]
            mask = layer.dimension_mask()
            table = ked._utils.to_numpy(tf.convert_to_tensor(layer.embedding_variable))
            if mask.value_sizes is None:  # per field: the removed columns of every field's rows
                removed = np.repeat(~mask.keep, mask.vocab_sizes, axis=0)
            else:
                sizes = np.concatenate(mask.value_sizes)
                removed = np.arange(table.shape[1])[None, :] >= sizes[:, None]
            export = ked.export_compact(model, os.path.join(work, f"export_{name}"), sample_inputs=sample,
                                        verbose=0)
            out["search"][name] = {
                "phase": str(cbs[0].phase.value), "result_kept": cbs[0].result.params_after,
                "kept_params": int(mask.kept_params), "full_params": int(mask.full_params),
                "granularity": mask.granularity,
                "removed_entries": int(removed.sum()), "removed_nonzero": int(np.count_nonzero(table[removed])),
                "loss": [float(v) for v in hist.history["loss"]],
                "export": export.path, "export_max_abs_diff": export.max_abs_diff,
                "pred": np.asarray(model(sample, training=False)).reshape(-1).tolist(),
            }
            if name == "pme":  # rotate="auto", the default: no rotation there, and why
                out["search"][name]["rotation"] = [cbs[0].rotation, cbs[0].no_rotation_reason]
            if name == "ham_warmup":
                out["search"][name]["warmup_left_scores"] = cbs[1].unchanged
                out["search"][name]["searched_steps"] = cbs[0].result.step

        # a loss that turns NaN mid-search: caught at the epoch boundary (no batch-level check runs there)
        class PoisonAtEpochEnd(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch == 0:
                    kernel = self.model.get_layer("ctr").kernel
                    kernel.assign(np.full(kernel.shape, np.nan, np.float32))

        model = build("prunable")
        pme = ked.PMEPruner(0.25, search_epochs=2, verbose=0)
        model.fit(keras.utils.experimental.DatasetCreator(dataset_fn), epochs=3, steps_per_epoch=10, verbose=0,
                  callbacks=[PoisonAtEpochEnd(), pme])
        layer = ked.find_searchable_layers(model)[0]
        out["nan"] = {"phase": str(pme.phase.value), "error": pme.error, "step": pme.result.step,
                      "kept_params": int(layer.dimension_mask().kept_params),
                      "full_params": int(layer.dimension_mask().full_params)}

        # options that need batches refuse the strategy, naming the option to change
        errors = {}
        for name, cb in (("sseds_without_scoring_data", ked.SingleShotPruner(0.2)),
                         ("sseds_warmup_steps", ked.SingleShotPruner(0.2, scoring_data=scoring, warmup_steps=5)),
                         ("ham_one_epoch", ked.HardMaskSearch(0.2)),
                         ("pme_rotate", ked.PMEPruner(0.2, rotate=True)),
                         ("pme_mid_epoch", ked.PMEPruner(0.2, rotate="mid_epoch"))):
            model = build(ham if name.startswith("ham") else "prunable")
            try:
                model.fit(keras.utils.experimental.DatasetCreator(dataset_fn), epochs=1, steps_per_epoch=5,
                          verbose=0, callbacks=[cb])
                errors[name] = None
            except ValueError as e:
                errors[name] = str(e)
        out["errors"] = errors
        print(json.dumps(out))
    finally:
        for p in procs:
            p.kill()


if __name__ == "__main__":
    main(sys.argv[1])
