"""Mixed precision: a model under a float16 / bfloat16 compute policy searches and exports.

Keras computes a mixed-precision layer in the 16-bit dtype and reads its float
variables cast to it. The search state (masks, logits, temperatures, the twins
and their counts) is read at float32 whatever the policy; the export verifies
such a model at the rounding of its compute dtype (`exporter.verification_tolerance`).
"""

import os

import numpy as np
import pytest
import tensorflow as tf

import keras_embdim as ked
from keras_embdim import _compat, keras
from keras_embdim.export import exporter

EPS = {"mixed_bfloat16": 2.0**-7, "mixed_float16": 2.0**-10}


@pytest.fixture
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    try:
        yield request.param
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16", "mixed_float16"], indirect=True)
def test_twins_size_decision_reads_its_state_at_float32(policy):
    """The size chosen from `z_k - size_bias * size_k / D` with a size bias that float16 and
    bfloat16 round to 1: read at float32 it picks size 1, read at the compute dtype size 4."""
    layer = ked.TwinsMaskLayer(ked.PrunableEmbedding(10, 4, embeddings_initializer="ones"), min_dim=1)
    ids = np.array([0, 3], np.int32)
    layer(ids)
    bias, c = 1.0004, 0.75015  # size 1: -0.25 * bias = -0.2501 > c - bias = -0.25025 (size 4)
    assert float(tf.cast(tf.constant(bias), tf.bfloat16)) == float(tf.cast(tf.constant(bias), tf.float16)) == 1.0
    layer.size_bias.assign(bias)
    for branch in (layer.twins.high, layer.twins.low):
        _w1, _b1, w2, b2 = branch
        w2.assign(np.zeros(w2.shape, np.float32))  # both twins answer their bias: z = logit_scale * b2
        b2.assign(np.array([0.0, 0.0, 0.0, c / layer.logit_scale], np.float32))
    out = np.asarray(tf.cast(layer(ids), tf.float32))
    assert layer.compute_dtype == ("float32" if policy == "float32" else policy.split("_")[1])
    np.testing.assert_array_equal(out, [[1, 0, 0, 0], [1, 0, 0, 0]])


def _tolerance_by_hand(policy, predictions):
    return max(1e-5, 4 * EPS[policy] * max(1.0, float(np.abs(np.asarray(predictions, np.float64)).max())))


def _model(kind, vocab, names):
    if kind == "sseds":
        return ked.models.build_mlp(vocab, names, embedding_dim=8, hidden=(16,)), ked.SingleShotPruner(0.3, verbose=0)
    if kind == "pme":
        return ked.models.build_mlp(vocab, names, embedding_dim=8, hidden=(16,)), ked.PMEPruner(0.3, verbose=0)
    if kind == "ham":
        return (ked.models.build_deepfm(vocab, names, embedding_dim=8, hidden=(16,),
                                        embedding=lambda v, d, n: ked.HardMaskEmbedding(v, d, field_names=n)),
                ked.HardMaskSearch(0.3, verbose=0))
    def twins(v, d, n):
        return ked.TwinsMaskLayer(ked.PrunableEmbedding(v, d, field_names=n))

    return (ked.models.build_mlp(vocab, names, embedding_dim=8, hidden=(16,), embedding=twins),
            ked.TwinsMaskSearch(0.3, verbose=0))


@pytest.mark.parametrize(
    "policy, kind",
    [("mixed_bfloat16", "sseds"), ("mixed_bfloat16", "ham"), ("mixed_bfloat16", "pme"), ("mixed_bfloat16", "twins"),
     ("mixed_float16", "sseds")],
    indirect=["policy"],
)
def test_search_and_export_under_a_mixed_policy(policy, kind, tmp_path):
    rng = np.random.default_rng(0)
    vocab, names = [50, 20, 7], ["a", "b", "c"]
    x = {n: rng.integers(0, v, 1536).astype(np.int32) for n, v in zip(names, vocab)}
    y = ((x["a"] % 3 == 0) ^ (x["b"] % 2 == 0)).astype(np.float32)
    keras.utils.set_random_seed(0)
    model, search = _model(kind, vocab, names)
    model = ked.models.compile_ctr(model)
    model.fit(x, y, batch_size=256, epochs=3, verbose=0, callbacks=[search])
    layer = ked.find_searchable_layers(model)[0]
    assert layer.compute_dtype == policy.split("_")[1]
    assert 0 < layer.dimension_mask().kept_params < layer.dimension_mask().full_params  # it searched

    sample = {n: v[:300] for n, v in x.items()}
    predictions = np.asarray(model(sample, training=False), np.float64)
    result = ked.export_compact(model, str(tmp_path / "exp"), version=None, sample_inputs=sample, verbose=0)
    tolerance = _tolerance_by_hand(policy, predictions)
    assert result.verified_tolerance == pytest.approx(tolerance, rel=1e-12)
    assert result.max_abs_diff <= tolerance
    # served by the SavedModel alone, compared here again with the model
    fn = tf.saved_model.load(result.path).signatures["serving_default"]
    served = fn(**{n: tf.constant(v.astype(np.int64)) for n, v in sample.items()})
    got = np.asarray(tf.cast(served["ctr"], tf.float64)).reshape(predictions.shape)
    assert np.abs(got - predictions).max() <= tolerance
    assert np.abs(got - predictions).max() == pytest.approx(result.max_abs_diff)
    if kind not in ("twins", "sseds"):
        return
    # and as TF Serving loads it (per value in bfloat16, per field in both dtypes): a fresh process
    # without keras_embdim, both loaders; the model's bfloat16 / float16 predictions as they are
    report = ked.serving.check_in_fresh_process(result.path, {n: v.astype(np.int64) for n, v in sample.items()},
                                                {"ctr": np.asarray(model(sample, training=False))}, atol=tolerance)
    assert report["tf1_max_abs_diff"] <= tolerance and report["tf2_max_abs_diff"] <= tolerance


@pytest.mark.parametrize("policy", ["mixed_bfloat16"], indirect=True)
def test_a_wrong_export_of_a_mixed_model_is_still_refused(policy, tmp_path, move_output_bias_after_save):
    """The allowance is the dtype's rounding, not a blank cheque: an output bias moved by 0.5
    after the SavedModel was written fails the verification, and nothing is left behind."""
    rng = np.random.default_rng(1)
    vocab, names = [30, 12], ["a", "b"]
    x = {n: rng.integers(0, v, 512).astype(np.int32) for n, v in zip(names, vocab)}
    y = (x["a"] % 2 == 0).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = ked.models.compile_ctr(ked.models.build_mlp(vocab, names, embedding_dim=4, hidden=(8,)))
    model.fit(x, y, batch_size=128, epochs=1, verbose=0, callbacks=[ked.SingleShotPruner(0.5, verbose=0)])
    move_output_bias_after_save(model, by=0.5)
    with pytest.raises(ked.ExportError, match=r"predicts differently.*computes in bfloat16"):
        ked.export_compact(model, str(tmp_path / "exp"), version=None, verbose=0)
    assert os.listdir(tmp_path) == []


def test_verification_tolerance_by_hand():
    y = {"ctr": np.array([0.25, 0.75]), "logit": np.array([-6.0, 2.0])}
    assert exporter.verification_tolerance(1e-5, None, y) == 1e-5
    assert exporter.verification_tolerance(1e-5, "bfloat16", y) == 4 * 2.0**-7 * 6.0
    assert exporter.verification_tolerance(1e-5, "float16", {"ctr": np.array([0.5])}) == 4 * 2.0**-10
    assert exporter.verification_tolerance(0.5, "float16", y) == 0.5  # a larger atol stands


@pytest.mark.parametrize("policy", ["mixed_bfloat16"], indirect=True)
def test_keras_own_export_of_a_mixed_model_differs_from_its_eager_call(policy, tmp_path):
    """Why the allowance: Keras' own SavedModel of a plain mixed_bfloat16 MLP does not serve
    its eager call's predictions to 1e-5 (the graph rounds fused ops once), but within
    `verification_tolerance`. Should Keras ever serve them exactly, the allowance can go."""
    rng = np.random.default_rng(0)
    vocab, names = [50, 20, 7], ["a", "b", "c"]
    x = {n: rng.integers(0, v, 1536).astype(np.int32) for n, v in zip(names, vocab)}
    y = ((x["a"] % 3 == 0) ^ (x["b"] % 2 == 0)).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = ked.models.compile_ctr(ked.models.build_mlp(vocab, names, embedding_dim=8, hidden=(16,), embedding="plain"))
    model.fit(x, y, batch_size=256, epochs=3, verbose=0)
    sample = {n: v[:300] for n, v in x.items()}
    eager = np.asarray(tf.cast(model(sample, training=False), tf.float64))
    path = str(tmp_path / "keras_export")
    _compat.keras_export(model, path)
    fn = tf.saved_model.load(path).signatures["serving_default"]
    served = list(fn(**{n: tf.constant(v) for n, v in sample.items()}).values())[0]
    diff = np.abs(np.asarray(tf.cast(served, tf.float64)).reshape(eager.shape) - eager).max()
    assert 1e-5 < diff <= exporter.verification_tolerance(1e-5, "bfloat16", {"y": eager})
