"""Run every search and the export on one device and under MirroredStrategy (2 logical CPUs); print JSON.

Run by tests/test_distribute.py in a fresh process (logical devices must be set before TF starts).
"""

import json
import sys
import tempfile

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np  # noqa: E402

import keras_embdim as ked  # noqa: E402
from keras_embdim import keras  # noqa: E402


def emb_factory(method):
    if method == "ham":
        return lambda v, d, n: ked.HardMaskEmbedding(v, d, field_names=n, name="embedding")
    if method == "amtl":
        return lambda v, d, n: ked.TwinsMaskLayer(ked.PrunableEmbedding(v, d, field_names=n), name="embedding")
    return "prunable"


def callback(method):
    if method in ("pme_lazy", "pme_catchup"):  # the row-sparse optimizer under the strategy (exact zeros needed)
        method = "pme"
    return {
        "sseds": lambda: ked.SingleShotPruner(0.2, warmup_steps=10, scoring_steps=5, verbose=0),
        # per-example gradients: each replica reads its own examples, the sums meet in one variable
        "sseds_fisher": lambda: ked.SingleShotPruner(0.2, warmup_steps=10, scoring_steps=5, score="fisher", verbose=0),
        # the rotation rewrites the mirrored table, kernel and their optimizer slots from the host
        "sseds_rotate": lambda: ked.SingleShotPruner(0.2, warmup_steps=10, scoring_steps=5, rotate=True, verbose=0),
        # the rotation from a batch-level hook, halfway through the search epoch (what the default does here)
        "pme_mid_epoch": lambda: ked.PMEPruner(0.2, rotate="mid_epoch", verbose=0),
        "ham": lambda: ked.HardMaskSearch(0.2, verbose=0),
        # on the table's own axes; the default (rotate="auto") rotates an MLP's fields: pme_mid_epoch
        "pme": lambda: ked.PMEPruner(0.2, rotate=False, verbose=0),
        "amtl": lambda: ked.TwinsMaskSearch(0.2, verbose=0),
    }[method]()


def replica_spread(model):
    """`(largest difference, copies compared)` between the replicas' copies of every trainable variable
    and optimizer slot (nothing to compare on one device): a host-side rewrite (pruning, the rotation)
    must reach every copy."""
    from keras_embdim import _compat

    spread, compared = 0.0, 0
    for v in model.trainable_weights:
        for var in [v, *_compat.optimizer_slots(model.optimizer, v)]:
            copies = getattr(_compat.tf_variable(var), "values", None) or ()
            for c in copies[1:]:
                spread = max(spread, float(np.abs(c.numpy() - copies[0].numpy()).max()))
                compared += 1
    return spread, compared


def removed_nonzero(layer, mask):
    """Entries beyond a value's size (per value) that are not exactly zero."""
    if mask.value_sizes is None:
        return None
    table = np.asarray(layer.embedding_variable)
    sizes = np.concatenate(mask.value_sizes)
    return int(np.count_nonzero(table[np.arange(table.shape[1])[None, :] >= sizes[:, None]]))


def main(methods):
    d = ked.data.make_synthetic_ctr(num_rows=20_000, num_fields=6, max_vocab=500, seed=3)
    x, y = d.train
    sample = d.inputs(d.test[0][:300])
    out = {}
    # one strategy for the process: several MirroredStrategy objects in one process share collective
    # instance keys and abort each other's all-reduces
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    for method in methods:
        for name in ("single", "mirrored"):
            keras.utils.set_random_seed(0)
            strategy = mirrored if name == "mirrored" else tf.distribute.get_strategy()
            with strategy.scope():
                model = ked.models.compile_ctr(ked.models.build_mlp(
                    d.vocab_sizes, d.field_names, embedding_dim=8, hidden=(16,), embedding=emb_factory(method)))
                if method in ("pme_lazy", "pme_catchup"):
                    model.compile(optimizer=ked.LazyAdam(1e-3, catch_up=method == "pme_catchup"),
                                  loss="binary_crossentropy")
            cb = callback(method)
            hist = model.fit(d.inputs(x), y, batch_size=500, epochs=2, verbose=0, callbacks=[cb], shuffle=False)
            layer = ked.find_searchable_layers(model)[0]
            mask = layer.dimension_mask()
            with tempfile.TemporaryDirectory() as tmp:
                r = ked.export_compact(model, f"{tmp}/e", sample_inputs=sample, verbose=0)
            out[f"{method}/{name}"] = {
                "kept_dims": mask.kept_dims.tolist(),
                "kept_params": int(mask.kept_params),
                "value_sizes": [s.tolist() for s in mask.value_sizes] if mask.value_sizes is not None else None,
                "loss": [float(v) for v in hist.history["loss"]],
                "pred": model.predict(sample, verbose=0).reshape(-1)[:50].tolist(),
                "export_max_abs_diff": r.max_abs_diff,
                "export_bytes": r.embedding_bytes,
                "export_layout": next(iter(r.layouts.values())),
                "removed_nonzero": removed_nonzero(layer, mask),
                "replica_spread": replica_spread(model),
                "counts_total": float(np.sum(np.asarray(layer.counter.counts))) if isinstance(layer, ked.TwinsMaskLayer) else None,
            }
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:] or ["sseds", "sseds_fisher", "sseds_rotate", "ham", "pme", "pme_mid_epoch", "amtl", "pme_lazy",
                          "pme_catchup"])
