"""MovieLens two-tower retrieval with TensorFlow Recommenders; ships the query tower.

    TF_USE_LEGACY_KERAS=1 python examples/tfrs_retrieval.py [--method sseds|ham|pme]
        [--budget 0.2] [--export export/tfrs_query_tower] [--quick]

The query tower embeds the user's fields (user id, age, gender, occupation, zip
prefix), the candidate tower the movie's (movie id, genre), each with a
keras_embdim multi-field layer and a dense projection; `tfrs.tasks.Retrieval`
trains them on the movies users rated 4 or 5 (in-batch softmax). One search
callback searches both towers under one global budget; `DimensionExporter(...,
submodel="query_model")` ships the compacted query tower, which is served in a
fresh process without keras_embdim and compared with the trained tower. The
candidate tower's outputs are what a retrieval index (ScaNN, brute force) holds.

Keras 2 only (`TF_USE_LEGACY_KERAS=1`, the `tfrs` extra).
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
from keras_embdim.serving import check_in_fresh_process  # noqa: E402

USER_FIELDS = ["user_id", "age", "gender", "occupation", "zip"]
ITEM_FIELDS = ["item_id", "genre"]
METHODS = ("sseds", "ham", "pme", "full")


def tower(name: str, fields, vocab_sizes, dim: int, out_dim: int, method: str):
    """A functional model: one int input per field -> searched embeddings -> `[batch, out_dim]`."""
    inputs = {f: keras.Input(shape=(), dtype="int32", name=f) for f in fields}
    ids = ked.layers.StackFields(name=f"{name}_ids")([inputs[f] for f in fields])
    searched = ked.get_method("sseds" if method == "full" else method)  # full dims: a PrunableEmbedding, unsearched
    emb = searched.embedding(vocab_sizes, dim, fields, name=f"{name}_embedding")(ids)
    x = keras.layers.Flatten()(emb)
    out = keras.layers.Dense(out_dim, name=f"{name}_projection")(x)
    return keras.Model(inputs, out, name=name)


class RetrievalModel(tfrs.Model):
    def __init__(self, query_model, candidate_model, candidates: tf.data.Dataset):
        super().__init__()
        self.query_model = query_model
        self.candidate_model = candidate_model
        self.task = tfrs.tasks.Retrieval(
            metrics=tfrs.metrics.FactorizedTopK(candidates=candidates.batch(512).map(candidate_model))
        )

    def compute_loss(self, features, training=False):
        query = self.query_model({f: features[f] for f in USER_FIELDS})
        candidate = self.candidate_model({f: features[f] for f in ITEM_FIELDS})
        return self.task(query, candidate, compute_metrics=not training)


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


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=METHODS, default="sseds")
    p.add_argument("--budget", type=float, default=0.2)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--tower-dim", type=int, default=32)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--search-epochs", type=int, default=1)
    p.add_argument("--ham-score-pace", type=_pace, default=0.25,
                   help="HardMaskSearch's score_pace ('none': the paper's fixed pace)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--export", default="export/tfrs_query_tower")
    p.add_argument("--data", default=None)
    p.add_argument("--quick", action="store_true", help="2 epochs, test recall on 1,000 pairs (CI)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.epochs = 2
    t0 = time.time()
    keras.utils.set_random_seed(args.seed)

    data = ked.data.load_movielens(args.data, seed=args.seed)
    col = {f: i for i, f in enumerate(data.field_names)}
    vocab = dict(zip(data.field_names, data.vocab_sizes))

    def positives(split):
        x, y = data.split(split)
        x = x[y > 0.5]
        return {f: x[:, col[f]] for f in data.field_names}

    train_pairs, test_pairs = positives("train"), positives("test")
    if args.quick:
        test_pairs = {f: v[:1000] for f, v in test_pairs.items()}
    # every movie once, with its genre: the candidates the metric ranks
    x_all = np.concatenate([data.train[0], data.valid[0], data.test[0]])
    _, first = np.unique(x_all[:, col["item_id"]], return_index=True)
    movies = {f: x_all[first, col[f]] for f in ITEM_FIELDS}
    candidates = tf.data.Dataset.from_tensor_slices(movies)

    query_model = tower("query", USER_FIELDS, [vocab[f] for f in USER_FIELDS], args.dim, args.tower_dim, args.method)
    candidate_model = tower(
        "candidate", ITEM_FIELDS, [vocab[f] for f in ITEM_FIELDS], args.dim, args.tower_dim, args.method
    )
    model = RetrievalModel(query_model, candidate_model, candidates)
    model.compile(optimizer=keras.optimizers.Adagrad(0.1))

    n = len(train_pairs["user_id"])
    train = tf.data.Dataset.from_tensor_slices(train_pairs).shuffle(n, seed=args.seed).batch(args.batch_size)
    sample = {f: test_pairs[f][:256] for f in USER_FIELDS}
    search = search_callback(args.method, args.budget, args.search_epochs, args.ham_score_pace)
    callbacks = [search] if search is not None else []
    exporter = ked.DimensionExporter(
        args.export, submodel="query_model", sample_inputs=sample, verbose=0
    )
    model.fit(train, epochs=args.epochs, verbose=0, callbacks=callbacks + [exporter])

    metrics = model.evaluate(
        tf.data.Dataset.from_tensor_slices(test_pairs).batch(1024), return_dict=True, verbose=0
    )
    recall10 = float(metrics["factorized_top_k/top_10_categorical_accuracy"])
    summary = ked.dimension_summary(model)
    print(ked.format_report(model))
    result = exporter.result
    print(
        f"{args.method}: test recall@10 {recall10:.4f} over {len(movies['item_id']):,} movies; kept "
        f"{summary['params_after']:,} of {summary['params_before']:,} embedding params "
        f"({100 * summary['kept_fraction']:.1f}%); query tower export {result.path}: "
        f"embedding tables {result.embedding_bytes:,} B"
    )
    expected = {result.outputs[0]: query_model(sample, training=False).numpy()}
    served = check_in_fresh_process(result.path, sample, expected)
    print(
        "query tower served in a fresh process without keras_embdim: max |served - trained| "
        f"TF2 {served['tf2_max_abs_diff']:.2e}, TF1 session {served['tf1_max_abs_diff']:.2e}; "
        f"done in {time.time() - t0:.0f} s"
    )
    return {"recall_at_10": recall10, "summary": summary, "export": result, "served": served, "model": model}


if __name__ == "__main__":
    main()
