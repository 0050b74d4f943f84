"""DCN cross layers computed on the kept columns only (keras_embdim.export.cross, fold).

The cross layer is keras-rs' `FeatureCross` under Keras 3 and TFRS' `Cross` under
Keras 2 (the Keras each runs on). Models get random tables and masks (folding is
exact algebra, no training needed); exports are compared with the Keras model
value by value, in this process and in a fresh TensorFlow-only one.
"""

import importlib.util
import os

import numpy as np
import pytest
import tensorflow as tf

import keras_embdim as ked
from keras_embdim import _compat, keras
from keras_embdim.export import cross
from keras_embdim.serving import check_in_fresh_process

PACKAGE = "keras_rs" if ked.KERAS_3 else "tensorflow_recommenders"
if importlib.util.find_spec(PACKAGE) is None:
    if os.environ.get("CI"):
        raise ImportError(f"CI must install {PACKAGE} for the cross-layer tests (.ci/run does).")
    pytest.skip(f"{PACKAGE} is not installed", allow_module_level=True)

VOCAB = [7, 30, 120]
D = 6
NUM = 2  # dense features beside the embeddings in x0


def make_cross(name, **options):
    return _compat.cross_layer(bias_initializer="random_normal", name=name, **options)


def _mask(layer, seed, p=0.5):
    rng = np.random.default_rng(seed)
    layer.embedding_variable.assign(rng.standard_normal(tuple(layer.embedding_variable.shape)).astype(np.float32))
    layer.set_dimension_mask(rng.random((layer.num_fields, layer.output_dim)) < p)


def _sample(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return {"ids": np.stack([rng.integers(0, v, n) for v in VOCAB], 1).astype("int32"),
            "num": rng.standard_normal((n, NUM)).astype("float32")}


def _dcn(parallel=False, second_x=None, **cross_options):
    """`(model, searched layer)`: x0 = [embeddings of 3 fields, 2 dense features], two cross
    layers, then an MLP head on the crosses (stacked) or on the crosses and a deep tower (parallel)."""
    ids = keras.Input((3,), dtype="int32", name="ids")
    num = keras.Input((NUM,), name="num")
    emb = ked.PrunableEmbedding(VOCAB, D, name="emb")
    x0 = keras.layers.Concatenate(name="x0")([keras.layers.Flatten()(emb(ids)), num])
    x1 = make_cross("cross_1", **cross_options)(x0, x0)
    x2 = make_cross("cross_2", **cross_options)(x0, second_x(x0) if second_x else x1)
    if parallel:
        deep = keras.layers.Dense(4, activation="relu", name="deep")(x0)
        h = keras.layers.Concatenate()([x2, deep])
    else:
        h = keras.layers.Dense(4, activation="relu", name="deep")(x2)
    out = keras.layers.Dense(1, activation="sigmoid", name="ctr")(h)
    model = keras.Model({"ids": ids, "num": num}, out)
    model(_sample(2))  # build
    return model, emb


def _stored_shapes(r) -> list:
    reader = tf.train.load_checkpoint(os.path.join(r.path, "variables", "variables"))
    return sorted(tuple(s) for k, s in reader.get_variable_to_shape_map().items() if "VARIABLE_VALUE" in k)


def _served(r, inputs):
    fn = tf.saved_model.load(r.path).signatures["serving_default"]
    return fn(**inputs)["ctr"].numpy()


def _numpy_cross(x0, x, w, b, diag, act):
    """The DCN-v2 formula, written out: x0 * (act(x @ W + b) + diag * x) + x."""
    return x0 * (act(x @ w + b) + diag * x) + x


@pytest.mark.parametrize("low_rank", [False, True])
def test_reduced_cross_equals_the_layer_on_zeroed_columns(low_rank):
    """On inputs whose removed columns are zeros, the cross computed from `reduced_weights` on
    the kept columns (in another order, with a padding entry) equals the layer itself and the
    formula written out in numpy, and the removed columns of the layer's output are zeros."""
    d, rng = 9, np.random.default_rng(3)
    layer = make_cross("c", projection_dim=3 if low_rank else None, diag_scale=0.7, pre_activation="relu")
    layer(tf.zeros((1, d)), tf.zeros((1, d)))
    for v in layer.weights:  # a random bias too
        v.assign(rng.standard_normal(tuple(v.shape)).astype(np.float32))
    kept = np.array([7, 0, 4, 5])
    x0 = np.zeros((5, d), np.float32)
    x = np.zeros((5, d), np.float32)
    x0[:, kept] = rng.standard_normal((5, kept.size))
    x[:, kept] = rng.standard_normal((5, kept.size))
    full = layer(tf.constant(x0), tf.constant(x)).numpy()
    spec = cross.cross_spec(layer)
    w = spec.up if spec.down is None else spec.down @ spec.up
    np.testing.assert_allclose(full, _numpy_cross(x0, x, w, spec.bias, 0.7, lambda z: np.maximum(z, 0)),
                               rtol=1e-5, atol=1e-5)
    removed = np.setdiff1d(np.arange(d), kept)
    assert np.all(full[:, removed] == 0)
    cols = np.array([7, 0, -1, 4, 5])  # entry 2: a padding column (always zero)
    pick = np.where(cols >= 0, cols, 0)
    r0 = np.where(cols >= 0, x0[:, pick], 0)
    r = np.where(cols >= 0, x[:, pick], 0)
    weights = cross.reduced_weights(spec, cols)
    assert [tuple(a.shape) for a in weights] == ([(5, 3), (3, 5), (5,)] if low_rank else [(5, 5), (5,)])
    got = cross.cross(tf.constant(r0), tf.constant(r), weights, spec, tf.float32).numpy()
    np.testing.assert_allclose(got[:, cols >= 0], full[:, cols[cols >= 0]], rtol=1e-5, atol=1e-5)
    assert np.all(got[:, 2] == 0)


def test_cross_spec_refuses_an_unbuilt_layer_and_probes_the_pre_activation():
    with pytest.raises(ValueError, match="cross layer 'fresh' is not built"):
        cross.cross_spec(make_cross("fresh"))
    assert cross.elementwise(keras.activations.get("relu")) and cross.elementwise(None)
    assert not cross.elementwise(keras.activations.get("softmax"))
    assert cross.is_cross(make_cross("c")) and not cross.is_cross(keras.layers.Dense(3))


@pytest.mark.parametrize("parallel,options", [
    (False, {}),
    (True, {"projection_dim": 3, "diag_scale": 0.5, "pre_activation": "relu"}),
])
def test_dcn_stack_is_computed_on_kept_columns_and_ships_only_them(tmp_path, parallel, options):
    """The cross stack runs on the k kept embedding columns plus the dense features: its kernels
    are stored [k + 2, k + 2] (or U [k + 2, r], V [r, k + 2]), the [20, 20] ones are not
    shipped, and the export serves the model's predictions (TF2 and TF1 loaders, fresh
    process) as the padded export (fold=False) does with the whole kernels."""
    model, emb = _dcn(parallel=parallel, **options)
    _mask(emb, 1)
    k = int(emb.dimension_mask().kept_dims.sum()) + NUM
    d = len(VOCAB) * D + NUM
    sample = _sample()
    want = model.predict(sample, verbose=0)
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=sample, verbose=0)
    folded_into = ["cross_1", "cross_2", "deep"] + (["ctr"] if parallel else [])
    assert r.folds == {"emb": {"folded_into": folded_into, "padded": None,
            "id_check": "on_invalid_id", "rank_folded": {}}}
    shapes = _stored_shapes(r)
    cross_kernels = [(k, 3), (3, k)] if options else [(k, k)]
    for s in cross_kernels + [(k,)]:
        assert shapes.count(s) == 2, (s, shapes)  # one per cross layer
    assert (d, d) not in shapes and (d, 3) not in shapes
    assert ((k, 4) in shapes) and ((k + 4, 1) in shapes if parallel else (4, 1) in shapes)
    np.testing.assert_allclose(_served(r, sample), want, atol=1e-5)
    report = check_in_fresh_process(r.path, sample, {"ctr": want}, atol=1e-5)
    assert report["tf2_max_abs_diff"] <= 1e-5 and report["tf1_max_abs_diff"] <= 1e-5
    p = ked.export_compact(model, tmp_path / "p", sample_inputs=sample, verbose=0, fold=False)
    assert ((d, 3) if options else (d, d)) in _stored_shapes(p)
    np.testing.assert_allclose(_served(p, sample), want, atol=1e-5)
    assert r.bytes["other_variables"] < p.bytes["other_variables"]


def test_a_cross_that_cannot_run_on_kept_columns_serves_padded_and_says_why(tmp_path):
    """A softmax pre-activation mixes columns (probed, not assumed), and a cross of x0 with a
    tensor that is not an earlier cross's output has no known zero columns: the cross layers
    read the padded output, the report names the cross and why (a Dense the searched layer also
    reaches, 'side', still folds), and predictions are the model's."""
    sample = _sample()
    for build, why, folded in [
        (lambda: _dcn(pre_activation="softmax"), "pre-activation does not act on each column alone", []),
        (lambda: _dcn(second_x=keras.layers.Dense(len(VOCAB) * D + NUM, name="side")),
         "not an earlier cross layer's output over the same x0", ["side"]),
    ]:
        model, emb = build()
        _mask(emb, 2)
        r = ked.export_compact(model, tmp_path / why[:8], sample_inputs=sample, verbose=0)
        rec = r.folds["emb"]
        assert rec["folded_into"] == folded and "cross layer 'cross_" in rec["padded"] and why in rec["padded"], rec
        np.testing.assert_allclose(_served(r, sample), model.predict(sample, verbose=0), atol=1e-5)


def test_a_cross_output_read_elsewhere_is_not_reduced(tmp_path):
    """A cross stack whose output is also a model output must be computed whole: the searched
    layer serves padded into it (the report names the cross and why) and both outputs are the
    model's."""
    ids = keras.Input((3,), dtype="int32", name="ids")
    emb = ked.PrunableEmbedding(VOCAB, D, name="emb")
    x0 = keras.layers.Flatten()(emb(ids))
    x1 = make_cross("cross_1")(x0, x0)
    model = keras.Model(ids, {"ctr": keras.layers.Dense(1, name="ctr")(x1), "crossed": x1})
    _mask(emb, 3)
    x = _sample()["ids"]
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=x, verbose=0)
    assert r.folds["emb"]["folded_into"] == []
    assert r.folds["emb"]["padded"] == ("cross layer 'cross_1': its output is read whole (a model output, or a layer "
                                        "that does not fold)")
    fn = tf.saved_model.load(r.path).signatures["serving_default"]
    got = fn(ids=x)
    want = model.predict(x, verbose=0)
    np.testing.assert_allclose(got["ctr"].numpy(), want["ctr"], atol=1e-5)
    np.testing.assert_allclose(got["crossed"].numpy(), want["crossed"], atol=1e-5)


def test_build_dcn_searched_with_fit_and_exported_by_the_callback(tmp_path):
    """The whole workflow on the zoo's DCN (parallel, low-rank): `fit` with SingleShotPruner and
    DimensionExporter; the export computes both cross layers on the kept columns and a fresh
    TensorFlow-only process serves the trained model's predictions."""
    data = ked.data.make_synthetic_ctr(num_rows=3000, num_fields=4, max_vocab=60, seed=2)
    model = ked.models.compile_ctr(ked.models.build_dcn(
        data.vocab_sizes, data.field_names, embedding_dim=8, projection_dim=4, hidden=(16,), structure="parallel"))
    exporter = ked.DimensionExporter(str(tmp_path / "dcn"), verbose=0)
    model.fit(data.dataset("train", batch_size=256), epochs=2, verbose=0,
              callbacks=[ked.SingleShotPruner(0.25, verbose=0), exporter])
    r = exporter.result
    assert r.folds["embedding"]["folded_into"] == ["cross_1", "cross_2", "deep_0", "ctr"]
    k = int(ked.find_searchable_layers(model)[0].dimension_mask().kept_dims.sum())
    assert 0 < k < 4 * 8 and _stored_shapes(r).count((k, 4)) == 2 and (32, 4) not in _stored_shapes(r)
    sample = data.inputs(data.test[0][:200])
    want = model.predict(sample, verbose=0)
    report = check_in_fresh_process(r.path, sample, {"ctr": want}, atol=1e-5)
    assert report["tf2_max_abs_diff"] <= 1e-5 and report["tf1_max_abs_diff"] <= 1e-5


def test_build_dcn_refuses_bad_options():
    with pytest.raises(ValueError, match="`structure` must be 'stacked' or 'parallel'; received structure='wide'"):
        ked.models.build_dcn([5, 6], structure="wide")
    with pytest.raises(ValueError, match="`cross_layers` must be an int >= 1; received cross_layers=0"):
        ked.models.build_dcn([5, 6], cross_layers=0)


@pytest.mark.skipif(ked.KERAS_3, reason="TensorFlow Recommenders runs on Keras 2 only")
def test_a_tfrs_ranking_model_exports_its_functional_dcn_with_the_cross_on_kept_columns(tmp_path):
    """As docs/guides/tfrs.md suggests: a `tfrs.Model` whose scoring is a functional DCN
    (`ked.models.build_dcn`, an attribute) is searched by `fit`, and `DimensionExporter(
    submodel="scorer")` ships that DCN with its cross layers on the kept columns, serving the
    trained model's scores in a fresh process."""
    import tensorflow_recommenders as tfrs

    data = ked.data.make_synthetic_ctr(num_rows=2000, num_fields=3, max_vocab=50, seed=4)

    class Ranker(tfrs.Model):
        def __init__(self):
            super().__init__()
            self.scorer = ked.models.build_dcn(data.vocab_sizes, data.field_names, embedding_dim=8, hidden=(8,))
            self.task = tfrs.tasks.Ranking(loss=keras.losses.BinaryCrossentropy())

        def call(self, features):
            return self.scorer(features)

        def compute_loss(self, inputs, training=False):
            features, labels = inputs
            return self.task(labels=labels[:, None], predictions=self(features), training=training)

    model = Ranker()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    exporter = ked.DimensionExporter(str(tmp_path / "ranking"), submodel="scorer", verbose=0)
    model.fit(data.dataset("train", batch_size=256), epochs=2, verbose=0,
              callbacks=[ked.SingleShotPruner(0.3, verbose=0), exporter])
    r = exporter.result
    assert r.folds["embedding"]["folded_into"] == ["cross_1", "cross_2", "deep_0"]
    sample = data.inputs(data.test[0][:100])
    report = check_in_fresh_process(r.path, sample, {"ctr": model.scorer.predict(sample, verbose=0)}, atol=1e-5)
    assert report["tf2_max_abs_diff"] <= 1e-5 and report["tf1_max_abs_diff"] <= 1e-5


def test_per_value_sizes_under_a_cross_stack(tmp_path):
    """A per-value layer (a field stored whole beside packed ones: a lookup served in parts) under
    the cross stack: x0's reduced columns are its parts side by side (each padded to its own
    widest size), and the export serves the model's predictions."""
    model, emb = _dcn(projection_dim=2)
    rng = np.random.default_rng(5)
    emb.embedding_variable.assign(rng.standard_normal((sum(VOCAB), D)).astype(np.float32))
    emb.set_value_sizes(np.concatenate([np.full(VOCAB[0], 4), rng.integers(0, D + 1, VOCAB[1] + VOCAB[2])]))
    sample = _sample(seed=1)
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=sample, verbose=0)
    assert r.layouts["emb"].startswith("field+") and r.folds["emb"]["folded_into"] == ["cross_1", "cross_2", "deep"]
    k = 4 + 2 * D + NUM  # the whole field's 4 columns, the packed fields' widest size (D) each, the dense features
    assert _stored_shapes(r).count((k, 2)) == 2
    np.testing.assert_allclose(_served(r, sample), model.predict(sample, verbose=0), atol=1e-5)


def test_a_pooled_bag_of_ids_in_x0_is_crossed_on_its_kept_columns(tmp_path):
    """A history averaged over its ids (padding masked) beside the fields in x0: the average is
    taken on the history's kept columns, and the cross kernel is stored as the `[k, k]` block of
    both layers' kept columns; the export serves the model's predictions."""
    hist = keras.Input((7,), dtype="int32", name="history")
    ids = keras.Input((3,), dtype="int32", name="ids")
    seq = ked.PrunableEmbedding(50, D, mask_zero=True, name="seq")
    emb = ked.PrunableEmbedding(VOCAB, D, name="emb")
    pooled = keras.layers.GlobalAveragePooling1D(name="pool")(seq(hist))
    x0 = keras.layers.Concatenate(name="x0")([pooled, keras.layers.Flatten()(emb(ids))])
    h = keras.layers.Dense(4, activation="relu", name="head")(make_cross("cross_1")(x0))
    model = keras.Model({"history": hist, "ids": ids}, keras.layers.Dense(1, name="ctr")(h))
    _mask(emb, 21)
    _mask(seq, 22)
    rng = np.random.default_rng(23)
    for w in model.get_layer("cross_1").weights:
        w.assign(0.3 * rng.standard_normal(tuple(w.shape)).astype(np.float32))
    history = rng.integers(1, 50, (50, 7)).astype("int32")
    history[np.arange(7)[None, :] >= rng.integers(1, 8, 50)[:, None]] = 0
    sample = {"history": history, "ids": _sample()["ids"]}
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=sample, verbose=0)
    assert r.folds["seq"]["folded_into"] == ["pool", "cross_1", "head"]
    k = int(seq.dimension_mask().kept_dims.sum()) + int(emb.dimension_mask().kept_dims.sum())
    assert (k, k) in _stored_shapes(r) and (4 * D, 4 * D) not in _stored_shapes(r)
    np.testing.assert_allclose(_served(r, sample), model.predict(sample, verbose=0), atol=1e-5)
