"""MovieLens ranking with TensorFlow Recommenders: a DCN cross layer over searched embeddings.

    TF_USE_LEGACY_KERAS=1 python examples/tfrs_ranking.py [--method sseds|ham|amtl|pme]
        [--budget 0.2] [--export export/tfrs_ranking] [--quick]

A `tfrs.Model` whose seven MovieLens fields (user, movie, age, gender,
occupation, zip prefix, genre) go through one keras_embdim embedding layer,
a `tfrs.layers.dcn.Cross` layer and a small MLP; the task is
`tfrs.tasks.Ranking` on "rated 4 or 5" (binary cross-entropy, AUC). The search
callback and `DimensionExporter` go in `model.fit(...)` as with any Keras model;
the exported SavedModel is then served in a fresh process that cannot import
keras_embdim and compared with the trained model.

TFRS runs on Keras 2 only: install the `tfrs` extra and set
`TF_USE_LEGACY_KERAS=1`. Data: MovieLens-100K (or the 1M layout) under
`$KERAS_EMBDIM_DATA/movielens-100k` or `--data`.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402

import keras_embdim as ked  # noqa: E402
from keras_embdim import keras  # noqa: E402
from keras_embdim.metrics import roc_auc  # noqa: E402
from keras_embdim.serving import check_in_fresh_process  # noqa: E402

METHODS = ("sseds", "ham", "amtl", "pme", "full")


def embedding_layer(method: str, vocab_sizes, field_names, dim: int, frequencies=None):
    """One multi-field layer `[batch, F]` ids -> `[batch, F, dim]` for `method` (full dims: a PrunableEmbedding)."""
    extra = {"frequencies": frequencies} if method == "amtl" else {}
    return ked.get_method("sseds" if method == "full" else method).embedding(
        vocab_sizes, dim, field_names, name="features", **extra)


def search_callback(method: str, budget: float, search_epochs: int, score_pace: float | None = 0.25):
    """The method's search callback (None for full dims); epoch-bounded searches take `search_epochs`,
    HAM its `score_pace` (None: the paper's fixed pace)."""
    if method == "full":
        return None
    m = ked.get_method(method)
    kwargs = {"search_epochs": search_epochs} if issubclass(m.callback, ked.callbacks.EpochBoundedSearch) else {}
    if m.callback is ked.HardMaskSearch:
        kwargs["score_pace"] = score_pace
    return m.search(budget, verbose=0, **kwargs)


def _pace(value: str) -> float | None:
    return None if value.lower() == "none" else float(value)


class RankingModel(tfrs.Model):
    """Embeddings of all fields -> DCN cross layer -> MLP -> P(rating >= 4)."""

    def __init__(self, field_names, embedding, deep=(64, 32)):
        super().__init__()
        self.field_names = list(field_names)
        self.embedding = embedding
        self.cross = tfrs.layers.dcn.Cross(name="cross")
        self.deep = [keras.layers.Dense(u, activation="relu") for u in deep]
        self.head = keras.layers.Dense(1, activation="sigmoid", name="rating_ge_4")
        self.task = tfrs.tasks.Ranking(
            loss=keras.losses.BinaryCrossentropy(),
            metrics=[keras.metrics.AUC(name="auc")],
        )

    def call(self, features):
        ids = tf.stack([tf.cast(features[n], tf.int32) for n in self.field_names], axis=1)
        emb = self.embedding(ids)  # [batch, F, D]
        x = tf.reshape(emb, [-1, emb.shape[1] * emb.shape[2]])
        x = self.cross(x, x)
        for layer in self.deep:
            x = layer(x)
        return self.head(x)

    def compute_loss(self, inputs, training=False):
        features, labels = inputs
        return self.task(labels=labels[:, None], predictions=self(features), training=training)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=METHODS, default="sseds")
    p.add_argument("--budget", type=float, default=0.2)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--search-epochs", type=int, default=1)
    p.add_argument("--ham-score-pace", type=_pace, default=0.25,
                   help="HardMaskSearch's score_pace ('none': the paper's fixed pace)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--export", default="export/tfrs_ranking")
    p.add_argument("--data", default=None, help="MovieLens folder (default: $KERAS_EMBDIM_DATA/movielens-100k)")
    p.add_argument("--quick", action="store_true", help="20k training rows, 2 epochs (CI)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.epochs = 2
    t0 = time.time()
    keras.utils.set_random_seed(args.seed)

    data = ked.data.load_movielens(args.data, seed=args.seed)
    x_train, y_train = data.train
    if args.quick:
        x_train, y_train = x_train[:20_000], y_train[:20_000]
    x_test, y_test = data.test
    print(data.describe())
    train = (
        tf.data.Dataset.from_tensor_slices((data.inputs(x_train), y_train))
        .shuffle(len(y_train), seed=args.seed)
        .batch(args.batch_size)
    )

    frequencies = np.concatenate(data.value_counts) if args.method == "amtl" else None
    emb = embedding_layer(args.method, data.vocab_sizes, data.field_names, args.dim, frequencies)
    model = RankingModel(data.field_names, emb)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))

    sample = data.inputs(x_test[:512])
    search = search_callback(args.method, args.budget, args.search_epochs, args.ham_score_pace)
    callbacks = [search] if search is not None else []
    exporter = ked.DimensionExporter(args.export, sample_inputs=sample, verbose=0)  # the next version below it
    model.fit(train, epochs=args.epochs, verbose=0, callbacks=callbacks + [exporter])

    predictions = model.predict(data.inputs(x_test), batch_size=4096, verbose=0)[:, 0]
    auc = roc_auc(y_test, predictions)
    summary = ked.dimension_summary(model)
    print(ked.format_report(model))
    result = exporter.result
    print(
        f"{args.method}: test AUC {auc:.4f}; kept {summary['params_after']:,} of "
        f"{summary['params_before']:,} embedding params ({100 * summary['kept_fraction']:.1f}%); "
        f"export {result.path}: embedding tables {result.embedding_bytes:,} B"
    )
    expected = {name: model(sample, training=False).numpy() for name in result.outputs}
    served = check_in_fresh_process(result.path, sample, expected)
    print(
        "served in a fresh process without keras_embdim: max |served - trained| "
        f"TF2 {served['tf2_max_abs_diff']:.2e}, TF1 session {served['tf1_max_abs_diff']:.2e}; "
        f"done in {time.time() - t0:.0f} s"
    )
    return {"auc": auc, "summary": summary, "export": result, "served": served, "model": model}


if __name__ == "__main__":
    main()
