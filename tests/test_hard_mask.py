import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

import keras_embdim as ked
from keras_embdim import keras
from keras_embdim._compat import tf_variable
from keras_embdim.metrics import roc_auc
from keras_embdim.serving import check_in_fresh_process


def _ham_factory(**kw):
    return lambda v, dim, names: ked.HardMaskEmbedding(v, dim, field_names=names, name="embedding", **kw)


def _model(d, dim=8, hidden=(32,), **kw):
    return ked.models.compile_ctr(
        ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=dim, hidden=hidden, embedding=_ham_factory(**kw))
    )


def _set_scores(layer, a):
    layer.mask_logits.assign(np.asarray(a, np.float32) / layer.logit_scale)


def test_forward_mask_is_exactly_zero_one():
    layer = ked.HardMaskEmbedding([6, 9], 5)
    ids = np.array([[1, 2], [5, 8], [0, 3]])
    layer(ids)
    a = np.array([[0.2, -0.1, 3.0, -2.0, 1e-4], [-1e-4, 0.5, 0.5, -0.5, 0.7]], np.float32)
    _set_scores(layer, a)
    out = np.asarray(layer(ids, training=True))
    table = np.asarray(layer.embedding_variable)
    keep = a > 0
    want = np.stack([table[ids[:, 0]], table[ids[:, 1] + 6]], 1) * keep
    np.testing.assert_array_equal(out, want)  # bitwise: kept values untouched, others exactly 0
    assert layer.dimension_mask().keep.tolist() == keep.tolist()


def test_gradient_reaches_scores_through_the_surrogate():
    rng = np.random.default_rng(0)
    layer = ked.HardMaskEmbedding([6, 4], 5, temperature=0.7)
    ids = np.stack([rng.integers(0, 6, 32), rng.integers(0, 4, 32)], 1)
    layer(ids)
    a = rng.normal(size=(2, 5)).astype(np.float32)
    _set_scores(layer, a)
    w = rng.normal(size=(2, 5)).astype(np.float32)
    with tf.GradientTape() as tape:
        out = layer(ids)  # inference: no penalty, only the mask's gradient
        loss = tf.reduce_mean(tf.reduce_sum(out * w, axis=[1, 2]) ** 2)
    got = tape.gradient(loss, tf_variable(layer.mask_logits)).numpy()
    # hand computation: dL/dm[f,j] = sum_b dL/dout[b,f,j] * e[b,f,j]; dm/da = s(1-s)/t; da/dtheta = scale
    table = np.asarray(layer.embedding_variable, np.float64)
    e = np.stack([table[ids[:, 0]], table[ids[:, 1] + 6]], 1)
    m = (a > 0).astype(np.float64)
    y = np.sum(e * m * w, axis=(1, 2))
    up = (2 * y / len(ids))[:, None, None] * w
    s = 1 / (1 + np.exp(-a / 0.7))
    want = (up * e).sum(0) * s * (1 - s) / 0.7 * layer.logit_scale
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert np.all(got != 0)


def test_sparsity_penalty_value_and_gradient_by_hand():
    layer = ked.HardMaskEmbedding([10, 30], 2, sparsity_weight=2.0, target=0.25, temperature=0.5)
    layer(np.array([[0, 0]]))
    a = np.array([[1.0, -1.0], [0.5, 0.2]], np.float32)
    _set_scores(layer, a)
    costs = np.array([[10, 10], [30, 30]], np.float64) / 80.0
    with tf.GradientTape() as tape:
        pen = layer.sparsity_penalty()
    frac = float(((a > 0) * costs).sum())  # 10/80 + 60/80 = 0.875
    assert float(pen) == pytest.approx(2.0 * (frac - 0.25), rel=1e-6)
    s = 1 / (1 + np.exp(-a / 0.5))
    want = 2.0 * costs * s * (1 - s) / 0.5 * layer.logit_scale
    np.testing.assert_allclose(tape.gradient(pen, tf_variable(layer.mask_logits)).numpy(), want, rtol=1e-5)
    layer.sparsity_target.assign(0.9)  # under the target: no pressure at all
    assert float(layer.sparsity_penalty()) == 0.0


def test_penalty_is_added_only_while_training_and_searching(small_data):
    layer = ked.HardMaskEmbedding([5, 5], 3, sparsity_weight=1.0)
    ids = np.array([[1, 2]])
    layer(ids)
    layer(ids, training=False)
    assert len(layer.losses) == 0
    layer(ids, training=True)
    assert len(layer.losses) == 1


def test_search_hits_budget_and_favours_informative_fields():
    d = ked.data.make_synthetic_ctr(num_rows=120_000, num_fields=8, max_vocab=3000, seed=7)
    train = d.dataset("train", batch_size=1024, seed=0)
    keras.utils.set_random_seed(0)
    model = _model(d, dim=16, hidden=(64, 32))
    search = ked.HardMaskSearch(0.2, verbose=0)
    model.fit(train, epochs=3, verbose=0, callbacks=[search])
    layer = ked.find_searchable_layers(model)[0]
    full = sum(d.vocab_sizes) * 16
    kept = layer.dimension_mask().kept_params
    assert math.floor(0.2 * full) - max(d.vocab_sizes) < kept <= math.floor(0.2 * full)
    assert layer.frozen and search.phase == "done"
    dims = layer.dimension_mask().kept_dims
    inf = list(d.informative_fields)
    noise = [f for f in range(d.num_fields) if f not in inf]
    assert dims[inf].mean() > dims[noise].mean() + 3
    # the discrete network trained during the search settled near the budget
    assert abs(search.trace[-1]["kept_fraction"] - 0.2) < 0.05
    auc = roc_auc(d.test[1], model.predict(d.inputs(d.test[0]), batch_size=8192, verbose=0))
    assert auc > 0.77


def test_frozen_mask_holds_and_pruned_columns_stay_zero(small_data):
    d = small_data
    model = _model(d)
    x, y = d.train
    search = ked.HardMaskSearch(0.3, verbose=0)
    model.fit(d.inputs(x[:8192]), y[:8192], batch_size=512, epochs=3, verbose=0, callbacks=[search])
    layer = ked.find_searchable_layers(model)[0]
    keep = layer.dimension_mask().keep
    rows_keep = np.repeat(keep, d.vocab_sizes, axis=0)
    table = np.asarray(layer.embedding_variable)
    assert np.all(table[~rows_keep] == 0)
    assert all(v is not layer.mask_logits for v in model.trainable_weights)
    # two further epochs of fine-tuning leave the mask and the zeros alone
    model.fit(d.inputs(x[:4096]), y[:4096], batch_size=512, epochs=1, verbose=0)
    np.testing.assert_array_equal(layer.dimension_mask().keep, keep)
    assert np.all(np.asarray(layer.embedding_variable)[~rows_keep] == 0)
    hist = ked.dimension_history(layer)
    assert [h["epoch"] for h in hist] == [0, 1, 2]


def test_width_budget_caps_the_final_ranking(small_data):
    d = small_data  # 6 fields x 8 columns
    model = _model(d)
    x, y = d.train
    # a cap of 6 columns: the min_dim floor alone, far below what the parameter budget (0.3 of 8 columns a
    # field) would fill, so only the cap can stop the ranking there
    search = ked.HardMaskSearch(0.3, width_budget=0.125, verbose=0)
    model.fit(d.inputs(x[:4096]), y[:4096], batch_size=512, epochs=1, verbose=0, callbacks=[search])
    mask = ked.find_searchable_layers(model)[0].dimension_mask()
    assert mask.kept_dims.tolist() == [1] * 6
    assert mask.kept_params == sum(d.vocab_sizes) < math.floor(0.3 * sum(d.vocab_sizes) * 8)


@pytest.mark.parametrize("when", ["mid_search", "frozen"])
def test_keras_round_trip(tmp_path, small_data, when):
    d = small_data
    model = _model(d)
    x, y = d.train
    cbs = [ked.HardMaskSearch(0.3, verbose=0)] if when == "frozen" else []
    model.fit(d.inputs(x[:4096]), y[:4096], batch_size=512, epochs=1, verbose=0, callbacks=cbs)
    layer = ked.find_searchable_layers(model)[0]
    if when == "mid_search":
        a = np.random.default_rng(1).normal(size=(d.num_fields, 8))
        _set_scores(layer, a)
        layer.temperature.assign(0.37)
    path = str(tmp_path / "ham.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    l2 = ked.find_searchable_layers(loaded)[0]
    assert isinstance(l2, ked.HardMaskEmbedding) and l2.frozen == (when == "frozen")
    np.testing.assert_array_equal(l2.dimension_mask().keep, layer.dimension_mask().keep)
    np.testing.assert_array_equal(np.asarray(l2.mask_logits), np.asarray(layer.mask_logits))
    assert float(np.asarray(l2.temperature)) == pytest.approx(float(np.asarray(layer.temperature)))
    sample = d.inputs(d.test[0][:300])
    np.testing.assert_array_equal(model.predict(sample, verbose=0), loaded.predict(sample, verbose=0))


def test_export_serves_equal_with_kept_bytes_and_history(tmp_path, small_data):
    d = small_data
    model = _model(d, dim=8)
    x, y = d.train
    path = str(tmp_path / "ham")
    tb = str(tmp_path / "tb")
    search = ked.HardMaskSearch(0.25, search_epochs=2, verbose=0, log_dir=tb)
    sample = d.inputs(d.test[0][:1000])
    exporter = ked.DimensionExporter(path, sample_inputs=sample, verbose=0)
    model.fit(d.inputs(x), y, batch_size=512, epochs=3, verbose=0, callbacks=[search, exporter])
    path = exporter.result.path
    kept = search.result.params_after
    with open(os.path.join(path, "dimensions.json")) as fh:
        rep = json.load(fh)
    assert rep["export"]["embedding_bytes"] == kept * 4 + rep["export"]["embedding_padding_bytes"]
    assert [h["epoch"] for h in rep["history"]["embedding"]] == [0, 1, 2]
    assert len(rep["history"]["embedding"][0]["kept_dims"]) == d.num_fields
    report = check_in_fresh_process(path, sample, {"ctr": model.predict(sample, batch_size=1000, verbose=0)})
    assert report["tf1_max_abs_diff"] <= 1e-5 and report["tf2_max_abs_diff"] <= 1e-5
    assert any(f.startswith("events") for f in os.listdir(tb))
    # the sparsity penalty of each search epoch, in TensorBoard and in the History (2 search epochs)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(tb, "embdim") if os.path.isdir(os.path.join(tb, "embdim")) else tb,
                           size_guidance={"tensors": 0})
    acc.Reload()
    assert len(acc.Tensors("embdim/penalty/embedding")) == 2
    penalties = [p["embedding"] for p in search.penalties]
    assert len(penalties) == 2 and all(p >= 0 for p in penalties)
    if ked.KERAS_3:  # Keras 3's History keeps what callbacks add to the epoch logs
        assert model.history.history["embdim_penalty_embedding"] == penalties


def test_retrain_after_search(small_data):
    d = small_data
    model = _model(d)
    x, y = d.train
    search = ked.HardMaskSearch(0.3, after="retrain", verbose=0)
    model.fit(d.inputs(x[:4096]), y[:4096], batch_size=512, epochs=2, verbose=0, callbacks=[search])
    assert search.phase == "done" and ked.find_searchable_layers(model)[0].frozen


def test_paused_scores_get_a_zero_gradient_and_no_penalty():
    """`search_paused`: the mask still applies, the scores' gradient is zero (not None), no penalty."""
    layer = ked.HardMaskEmbedding([6, 4], 3, sparsity_weight=1.0)
    ids = np.array([[1, 2], [5, 3]])
    layer(ids)
    _set_scores(layer, [[0.5, -0.5, 0.2], [0.1, 0.3, -0.2]])
    layer.search_paused = True
    with tf.GradientTape() as tape:
        out = layer(ids, training=True)
        loss = tf.reduce_sum(out ** 2)
    grad = tape.gradient(loss, tf_variable(layer.mask_logits))
    assert grad is not None and np.all(grad.numpy() == 0)
    assert len(layer.losses) == 0 and float(layer.search_penalty()) == 0.0
    assert np.all(np.asarray(out)[:, 0, 1] == 0) and np.all(np.asarray(out)[:, 1, 2] == 0)  # the mask applies
    layer.search_paused = False
    layer(ids, training=True)
    assert len(layer.losses) == 1


class _ScoresPerEpoch(keras.callbacks.Callback):
    def __init__(self, layer):
        super().__init__()
        self.layer, self.scores, self.temperatures = layer, [], []

    def on_epoch_end(self, epoch, logs=None):
        self.scores.append(self.layer.mask_scores().copy())
        self.temperatures.append(float(np.asarray(self.layer.temperature)))


def test_warmup_epochs_train_the_super_net_before_the_search(small_data):
    """`warmup_epochs=1`: in the first epoch every column is on and the scores do not move (Adam
    with a zero gradient), the weights train; the search runs in the second epoch, anneals to the
    end temperature and lands on the budget; the third epoch fine-tunes the frozen mask."""
    d = small_data
    x, y = d.train
    keras.utils.set_random_seed(0)
    model = _model(d)
    layer = ked.find_searchable_layers(model)[0]
    start = layer.mask_scores().copy()
    table0 = np.asarray(layer.embedding_variable).copy()
    search = ked.HardMaskSearch(0.3, warmup_epochs=1, verbose=0)
    probe = _ScoresPerEpoch(layer)
    model.fit(d.inputs(x[:8192]), y[:8192], batch_size=512, epochs=3, verbose=0, callbacks=[search, probe])
    # the warm-up left the scores as they were (to float32 rounding: the pace rescaled the stored values; one
    # Adam step would move them by the learning rate x the paced scale, 0.075)
    np.testing.assert_allclose(probe.scores[0], start, rtol=1e-6)
    assert probe.temperatures[0] == pytest.approx(search.temperature[0])
    assert not np.array_equal(np.asarray(layer.embedding_variable), table0)
    assert search.result is not None and search.result.step == 2 * 16  # warm-up + search steps (16 per epoch)
    assert probe.temperatures[1] == pytest.approx(search.temperature[1], rel=1e-5)
    assert layer.frozen and not layer.search_paused and search.phase == "done"
    full = sum(d.vocab_sizes) * 8
    assert math.floor(0.3 * full) - max(d.vocab_sizes) < layer.dimension_mask().kept_params <= math.floor(0.3 * full)
    assert "1 warm-up epoch with every column on" in search._plan()


def test_fit_that_ends_in_the_warmup_leaves_the_model_unsearched(small_data, caplog):
    d = small_data
    x, y = d.train
    model = _model(d)
    layer = ked.find_searchable_layers(model)[0]
    search = ked.HardMaskSearch(0.3, warmup_epochs=2, verbose=1)
    with caplog.at_level("WARNING", logger="keras_embdim"):
        model.fit(d.inputs(x[:2048]), y[:2048], batch_size=512, epochs=1, verbose=0, callbacks=[search])
    assert "ended during the warm-up" in caplog.text
    assert search.result is None and not layer.frozen and not layer.search_paused
    assert layer.dimension_mask().is_full


def test_warmup_resumed_past_its_end_searches_at_once(small_data):
    """A fit resumed (initial_epoch) after the warm-up epochs starts the search at once, at the
    temperature the uninterrupted run had there."""
    d = small_data
    x, y = d.train
    model = _model(d)
    layer = ked.find_searchable_layers(model)[0]
    search = ked.HardMaskSearch(0.3, warmup_epochs=1, search_epochs=2, verbose=0)
    probe = _ScoresPerEpoch(layer)
    model.fit(d.inputs(x[:4096]), y[:4096], batch_size=512, epochs=3, initial_epoch=2, verbose=0,
              callbacks=[search, probe])
    # resumed at epoch 2 = the second search epoch: annealed from halfway, so it ends at the end temperature
    assert search.phase == "done" and layer.frozen
    assert probe.temperatures[0] == pytest.approx(search.temperature[1], rel=1e-5)
    assert search.result.step == 3 * 8


class _FirstSteps(keras.callbacks.Callback):
    """The layer's logit_scale and scores before the first step and after each of the first two."""

    def __init__(self, layer):
        super().__init__()
        self.layer, self.scales, self.scores = layer, [], []

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.scales.append(self.layer.logit_scale)
            self.scores.append(self.layer.mask_scores().copy())

    def on_train_batch_end(self, batch, logs=None):
        if batch < 2:
            self.scores.append(self.layer.mask_scores().copy())


def test_score_pace_sets_the_scale_from_the_search_length_by_hand(small_data):
    """`score_pace=p`: logit_scale = initial_logit / (learning rate x p x search steps), set when
    the search starts with the scores kept at their initial value; Adam's first step moves every
    score by the learning rate times that scale (m / sqrt(v) = sign of the gradient), its second
    by no more (Adam's epsilon makes a step on a tiny gradient shorter), so steady pressure
    crosses from the initial value to 0 in p x steps."""
    d = small_data
    x, y = d.train
    keras.utils.set_random_seed(0)
    model = ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=8, hidden=(16,),
                                 embedding=_ham_factory(initial_logit=0.3))
    # a schedule: the pace takes its rate at the search's start (0.01 at step 0)
    rate = keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=1000, decay_rate=0.5)
    model.compile(optimizer=keras.optimizers.Adam(rate), loss="binary_crossentropy")
    layer = ked.find_searchable_layers(model)[0]
    search = ked.HardMaskSearch(0.3, score_pace=0.5, search_epochs=2, verbose=0)
    probe = _FirstSteps(layer)
    model.fit(d.inputs(x[:5120]), y[:5120], batch_size=512, epochs=3, verbose=0, callbacks=[search, probe])
    scale = 0.3 / (0.01 * 0.5 * 10 * 2)  # 10 steps per epoch, 2 search epochs: 3.0
    assert probe.scales[0] == pytest.approx(scale) and layer.logit_scale == pytest.approx(scale)
    np.testing.assert_allclose(probe.scores[0], 0.3, rtol=1e-6)  # the scores kept their value
    step = np.abs(probe.scores[1] - probe.scores[0])
    assert np.all(step <= 0.01 * scale * (1 + 1e-5)) and step.max() == pytest.approx(0.01 * scale, rel=0.01)
    assert np.median(step) == pytest.approx(0.01 * scale, rel=0.05)
    assert np.all(np.abs(probe.scores[2] - probe.scores[1]) <= 0.01 * scale * (1 + 1e-3))
    assert "scores paced to cross 0 in 0.5 of the search" in search._plan()
    assert search.phase == "done" and layer.frozen


def test_score_pace_keeps_scores_learned_at_that_pace(small_data):
    """Scores that moved already (a search restored from a checkpoint into a layer built with
    the default scale) were learned at the pace: the stored values are kept, so the scores are
    the stored values times the paced scale; a layer whose scale is the paced one already (a
    model saved mid-search and loaded) is left as it is."""
    d = small_data
    x, y = d.train
    model = ked.models.compile_ctr(ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=4, hidden=(8,),
                                                        embedding=_ham_factory()))
    layer = ked.find_searchable_layers(model)[0]
    stored = np.full(layer.mask_logits.shape, 0.002, np.float32)
    stored[0, 1] = -0.001
    layer.mask_logits.assign(stored)
    search = ked.HardMaskSearch(0.3, score_pace=0.25, verbose=0)
    probe = _FirstSteps(layer)
    model.fit(d.inputs(x[:2048]), y[:2048], batch_size=32, epochs=1, verbose=0, callbacks=[search, probe])
    scale = 0.3 / (1e-3 * 0.25 * 64)  # 18.75, below the layer's 30
    assert probe.scales[0] == pytest.approx(scale)
    np.testing.assert_allclose(probe.scores[0], stored * scale, rtol=1e-6)
    # the layer's own API: keep the scores, or keep the stored values
    layer2 = ked.HardMaskEmbedding([5, 7], 3, initial_logit=0.3)
    layer2.build()
    layer2.set_logit_scale(3.0)
    np.testing.assert_allclose(layer2.mask_scores(), 0.3, rtol=1e-6)
    layer2.set_logit_scale(6.0, keep_scores=False)
    np.testing.assert_allclose(layer2.mask_scores(), 0.6, rtol=1e-6)
    with pytest.raises(ValueError, match="scale"):
        layer2.set_logit_scale(0.0)


def test_score_pace_default_paces_and_none_keeps_the_layers_scale(small_data, caplog):
    """By default the scores are paced to a quarter of the search, never faster than the layer's
    own `logit_scale` (a short search keeps it); `score_pace=None` keeps the layers' scale (the
    paper's fixed pace); with the epoch length unknown (a dataset of unknown cardinality, no
    `steps_per_epoch`) the default keeps it too, without a warning."""
    d = small_data
    x, y = d.train
    scales = {}
    for case, batch in (("default", 32), ("short", 512), (None, 32), ("unknown length", 32)):
        keras.utils.set_random_seed(0)
        model = _model(d, dim=4, hidden=(8,))
        layer = ked.find_searchable_layers(model)[0]
        assert layer.logit_scale == 30.0 and layer.initial_logit == pytest.approx(0.3)
        search = ked.HardMaskSearch(0.3, verbose=0, **({"score_pace": None} if case is None else {}))
        data = d.inputs(x[:2048]), y[:2048]
        fit_kwargs = {"batch_size": batch}
        if case == "unknown length":
            data = (tf.data.Dataset.from_tensor_slices(data).batch(batch).filter(lambda *_: True),)
            assert data[0].cardinality().numpy() == tf.data.UNKNOWN_CARDINALITY
            fit_kwargs = {}
        with caplog.at_level("WARNING", logger="keras_embdim"):
            caplog.clear()
            model.fit(*data, **fit_kwargs, epochs=1, verbose=0, callbacks=[search])
            assert not [r for r in caplog.records if r.levelname == "WARNING" and "score_pace" in r.getMessage()]
        scales[case] = layer.logit_scale
    # compile_ctr's Adam at 1e-3; 2048 rows: 64 steps at batch 32, 4 at batch 512
    assert scales["default"] == pytest.approx(0.3 / (1e-3 * 0.25 * 64))  # 18.75
    assert scales["short"] == 30.0  # 0.3 / (1e-3 x 0.25 x 4) = 300 would be faster than the layer's 30
    assert scales[None] == scales["unknown length"] == 30.0


def test_score_pace_needs_a_positive_initial_logit(small_data):
    """A pace passed by hand refuses a layer whose scores start at or below 0; the default pace
    leaves such a layer at its own scale."""
    d = small_data
    x, y = d.train
    model = _model(d, initial_logit=-0.1)
    with pytest.raises(ValueError, match="score_pace.*initial_logit"):
        model.fit(d.inputs(x[:1024]), y[:1024], batch_size=512, epochs=1, verbose=0,
                  callbacks=[ked.HardMaskSearch(0.3, score_pace=0.1, verbose=0)])
    model = _model(d, initial_logit=-0.1)
    layer = ked.find_searchable_layers(model)[0]
    model.fit(d.inputs(x[:2048]), y[:2048], batch_size=32, epochs=1, verbose=0,
              callbacks=[ked.HardMaskSearch(0.3, verbose=0)])  # 64 steps: a positive start would be paced
    assert layer.logit_scale == 30.0 and layer.frozen


@pytest.mark.parametrize(
    "kwargs,match",
    [({"temperature": (0, 1)}, "temperature"), ({"temperature": "x"}, "temperature"),
     ({"sparsity_weight": 0}, "sparsity_weight"), ({"search_epochs": 0}, "search_epochs"),
     ({"warmup_epochs": -1}, "warmup_epochs"), ({"warmup_epochs": 1.5}, "warmup_epochs"),
     ({"min_dim": -1}, "min_dim"), ({"after": "later"}, "after"), ({"score_pace": 0}, "score_pace"),
     ({"score_pace": "fast"}, "score_pace"), ({"width_budget": 2}, "width_budget")],
)
def test_bad_search_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ked.HardMaskSearch(0.2, **kwargs)


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="temperature"):
        ked.HardMaskEmbedding(5, 2, temperature=0)
    with pytest.raises(ValueError, match="logit_scale"):
        ked.HardMaskEmbedding(5, 2, logit_scale=-1)
    with pytest.raises(ValueError, match="target"):
        ked.HardMaskEmbedding(5, 2, target=2)


def test_search_needs_hard_mask_layers(small_data):
    d = small_data
    model = ked.models.compile_ctr(ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=4, hidden=(4,)))
    with pytest.raises(ValueError, match="HardMaskEmbedding"):
        model.fit(d.inputs(d.train[0][:256]), d.train[1][:256], verbose=0, callbacks=[ked.HardMaskSearch(0.3)])


def test_single_field_drop_in_form():
    layer = ked.HardMaskEmbedding(50, 4, mask_zero=True)
    ids = np.array([[0, 3, 49], [7, 7, 1]])
    out = layer(ids)
    assert tuple(out.shape) == (2, 3, 4) and layer.field_vocab_sizes == (50,)
    _set_scores(layer, [[1.0, -1.0, 1.0, -1.0]])
    out = np.asarray(layer(ids, training=True))
    assert np.all(out[..., 1] == 0) and np.all(out[..., 3] == 0)
    np.testing.assert_array_equal(out[..., 0], np.asarray(layer.embedding_variable)[ids][..., 0])
    assert len(layer.losses) == 1
    assert np.asarray(layer.compute_mask(ids)).tolist() == [[False, True, True], [True, True, True]]
    assert layer.dimension_mask().kept_params == 100
