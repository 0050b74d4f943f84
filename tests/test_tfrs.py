"""TensorFlow Recommenders models: searched, exported and served (Keras 2 only).

Runs the two examples in quick mode (MovieLens-100K ranking with a DCN cross
layer, two-tower retrieval whose query tower is exported) and checks what a
user relies on: the budget holds, the export stores exactly the kept
parameters, and a fresh process without keras_embdim serves what the trained
model predicts.
"""

import importlib.util
import os
import pathlib
import sys

import numpy as np
import pytest
import tensorflow as tf

import keras_embdim as ked
from keras_embdim import keras

if ked.KERAS_3:
    pytest.skip("TensorFlow Recommenders runs on Keras 2 only (TF_USE_LEGACY_KERAS=1)", allow_module_level=True)
if importlib.util.find_spec("tensorflow_recommenders") is None:
    if os.environ.get("CI"):
        raise ImportError("CI must install tensorflow-recommenders for the TFRS tests (.ci/run does).")
    pytest.skip("tensorflow-recommenders is not installed (extra `tfrs`)", allow_module_level=True)

import tensorflow_recommenders as tfrs  # noqa: E402

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ranking():
    return _example("tfrs_ranking")


@pytest.fixture(scope="module")
def retrieval():
    return _example("tfrs_retrieval")


def test_examples_pass_hams_score_pace(ranking, retrieval):
    """`--ham-score-pace`: HAM's pace (default 0.25, `none` the paper's fixed pace); other methods
    take no pace."""
    for module in (ranking, retrieval):
        assert module.search_callback("ham", 0.2, 1).score_pace == 0.25
        assert module.search_callback("ham", 0.2, 2, module._pace("none")).score_pace is None
        assert module.search_callback("ham", 0.2, 2, module._pace("0.5")).score_pace == 0.5
        assert isinstance(module.search_callback("sseds", 0.2, 1, None), ked.SingleShotPruner)
        assert module.search_callback("full", 0.2, 1) is None


@pytest.mark.parametrize("method", ["sseds", "ham", "amtl", "pme"])
def test_ranking_model_searches_exports_and_serves(ranking, data_root, tmp_path, method):
    out = ranking.main(["--quick", "--method", method, "--budget", "0.2", "--export", str(tmp_path / "rank")])
    s, e = out["summary"], out["export"]
    assert s["params_after"] <= 0.2 * s["params_before"]
    assert s["params_after"] >= 0.19 * s["params_before"]  # the budget is used, not just respected
    assert e.kept_params == s["params_after"]
    if method in ("sseds", "ham"):  # per field: kept params - what rank-folded fields do not store + padding
        assert e.embedding_bytes == 4 * e.kept_params - e.embedding_rank_folded_bytes + e.embedding_padding_bytes
    else:  # per value: the packed layout's index on top
        assert 4 * e.kept_params < e.embedding_bytes <= 1.10 * 4 * e.kept_params
    assert out["served"]["tf2_max_abs_diff"] <= 1e-5 and out["served"]["tf1_max_abs_diff"] <= 1e-5
    assert out["auc"] > 0.55  # learned something (random = 0.5)
    # the model really contains the TFRS cross layer
    assert any(isinstance(l, tfrs.layers.dcn.Cross) for l in out["model"]._flatten_layers())


@pytest.mark.parametrize("method", ["sseds", "ham"])
def test_retrieval_query_tower_is_exported_alone(retrieval, data_root, tmp_path, method):
    out = retrieval.main(["--quick", "--method", method, "--export", str(tmp_path / "query")])
    e, model = out["export"], out["model"]
    # the export is the query tower: user fields in, one query vector out
    assert sorted(e.inputs) == sorted(retrieval.USER_FIELDS)
    assert len(e.outputs) == 1
    query_layers = ked.find_searchable_layers(model.query_model)
    assert e.kept_params == sum(l.dimension_mask().kept_params for l in query_layers)
    assert e.embedding_bytes == 4 * e.kept_params - e.embedding_rank_folded_bytes + e.embedding_padding_bytes
    # both towers were searched under one global budget
    summary = out["summary"]
    assert summary["params_after"] <= 0.2 * summary["params_before"]
    assert set(summary["layers"]) == {"query_embedding", "candidate_embedding"}
    assert out["served"]["tf2_max_abs_diff"] <= 1e-5
    assert 0.0 <= out["recall_at_10"] <= 1.0


class _Ranker(tfrs.Model):
    def __init__(self, vocab):
        super().__init__()
        self.embedding = ked.PrunableEmbedding(vocab, 8, name="emb")
        self.head = keras.layers.Dense(1)
        self.task = tfrs.tasks.Ranking(loss=keras.losses.MeanSquaredError())

    def call(self, ids):
        return self.head(tf.reshape(self.embedding(ids), [-1, 8 * len(self.embedding.field_vocab_sizes)]))

    def compute_loss(self, inputs, training=False):
        ids, y = inputs
        return self.task(labels=y, predictions=self(ids))


def _ranker_data(n=2048, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.integers(0, 50, n), rng.integers(0, 30, n), rng.integers(0, 10, n)], 1).astype("int32")
    # the label depends on field 0 only
    y = (np.sin(ids[:, 0]) + 0.05 * rng.standard_normal(n)).astype("float32")[:, None]
    return ids, y


def test_sseds_scoring_data_uses_the_tfrs_loss(tmp_path):
    """`scoring_data` scores through `tfrs.Model.compute_loss(inputs)`, not Keras' (x, y, y_pred)."""
    ids, y = _ranker_data()
    model = _Ranker([50, 30, 10])
    model.compile(optimizer=keras.optimizers.Adam(0.02))
    pruner = ked.SingleShotPruner(0.3, warmup_steps=20, scoring_data=(ids[:512], y[:512]), verbose=0)
    model.fit(tf.data.Dataset.from_tensor_slices((ids, y)).batch(64), epochs=2, verbose=0, callbacks=[pruner])
    assert pruner.result.batches == 1  # the 512 scoring rows, in one batch
    # the field the label depends on scores highest
    per_field = pruner.result.scores["emb"].sum(1)
    assert per_field[0] > 3 * max(per_field[1], per_field[2])


def test_exporter_rejects_a_missing_submodel_before_training(tmp_path):
    ids, y = _ranker_data(256)
    model = _Ranker([50, 30, 10])
    model.compile(optimizer="adam")
    exporter = ked.DimensionExporter(tmp_path / "x", submodel="query_model")
    with pytest.raises(ValueError, match="submodel='query_model'"):
        model.fit(tf.data.Dataset.from_tensor_slices((ids, y)).batch(64), epochs=1, verbose=0, callbacks=[exporter])
    # it failed when fit started: no training step ran, nothing was written
    assert int(model.optimizer.iterations.numpy()) == 0 and not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="submodel"):
        ked.DimensionExporter(tmp_path / "y", submodel=3)
