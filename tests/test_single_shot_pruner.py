import glob
import math

import numpy as np
import pytest

import keras_embdim as ked
from keras_embdim import keras
from keras_embdim.metrics import roc_auc


def _model(d, dim=8, hidden=(32,), build=ked.models.build_mlp):
    return ked.models.compile_ctr(build(d.vocab_sizes, d.field_names, embedding_dim=dim, hidden=hidden))


@pytest.mark.parametrize("budget", [0, -0.1, 1.5, float("nan"), "0.1", True, None])
def test_bad_budget_is_rejected(budget):
    with pytest.raises((ValueError, TypeError), match="budget"):
        ked.SingleShotPruner(budget=budget)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"min_dim": -1}, "min_dim"), ({"score": "x"}, "score"), ({"ranking": "x"}, "ranking"),
     ({"after": "x"}, "after"), ({"scoring_steps": 0}, "scoring_steps"), ({"warmup_steps": -2}, "warmup_steps"),
     ({"width_budget": 0}, r"width_budget.*fraction of the embedding columns in \(0, 1\]"),
     ({"width_budget": 1.5}, "width_budget")],
)
def test_bad_options_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ked.SingleShotPruner(0.5, **kwargs)


def test_model_without_searchable_layer_is_a_clear_error_and_unchanged(small_data):
    d = small_data
    model = ked.models.compile_ctr(ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding="plain", hidden=(8,)))
    before = [w.copy() for w in model.get_weights()]
    x, y = d.train
    with pytest.raises(ValueError, match=r"has only plain keras.layers.Embedding layers .*ked.make_searchable"):
        model.fit(d.inputs(x[:512]), y[:512], epochs=1, verbose=0, callbacks=[ked.SingleShotPruner(0.1)])
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_infeasible_budget_fails_before_training(small_data):
    d = small_data
    model = _model(d)
    before = [w.copy() for w in model.get_weights()]
    x, y = d.train
    with pytest.raises(ValueError, match="min_dim=4"):
        model.fit(d.inputs(x[:512]), y[:512], epochs=1, verbose=0,
                  callbacks=[ked.SingleShotPruner(0.1, min_dim=4)])
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_budget_hit_within_one_field_dimension_and_logged(small_data, tmp_path):
    d = small_data
    model = _model(d)
    x, y = d.train
    tb = keras.callbacks.TensorBoard(str(tmp_path / "tb"))
    pruner = ked.SingleShotPruner(0.25, warmup_steps=5, scoring_steps=5, log_dir=tb, verbose=0)
    hist = model.fit(d.inputs(x[:8192]), y[:8192], batch_size=512, epochs=2, verbose=0, callbacks=[pruner, tb])
    r = pruner.result
    full = sum(d.vocab_sizes) * 8
    target = math.floor(0.25 * full)
    assert r.params_full == full
    assert target - max(d.vocab_sizes) < r.params_after <= target
    assert r.batches == 5
    assert r.step == 10
    layer = ked.find_searchable_layers(model)[0]
    assert layer.dimension_mask().kept_params == r.params_after
    assert (layer.dimension_mask().kept_dims >= 1).all()
    assert hist.history["embdim_kept_fraction"][-1] == pytest.approx(r.kept_fraction)
    assert glob.glob(str(tmp_path / "tb" / "embdim" / "events.*"))
    # the report and its DataFrame form agree with the mask
    df = ked.dimension_report(model)
    assert int(df["params_after"].sum()) == r.params_after


def test_width_budget_caps_the_kept_columns(caplog):
    caplog.set_level("INFO", logger="keras_embdim")
    # three fields of a few ids beside three large ones, 8 columns each: 48 columns
    d = ked.data.make_synthetic_ctr(num_rows=10_000, vocab_sizes=[4, 6, 10, 400, 500, 300], seed=3)
    x, y = d.train
    kept = {}
    for width in (None, 0.2):
        keras.utils.set_random_seed(0)
        model = _model(d)
        pruner = ked.SingleShotPruner(0.25, width_budget=width, warmup_steps=5, scoring_steps=5, verbose=0)
        model.fit(d.inputs(x[:8192]), y[:8192], batch_size=512, epochs=1, verbose=0, callbacks=[pruner])
        mask = ked.find_searchable_layers(model)[0].dimension_mask()
        assert mask.kept_params == pruner.result.params_after <= math.floor(0.25 * sum(d.vocab_sizes) * 8)
        assert (mask.kept_dims >= 1).all()
        kept[width] = mask.keep
    assert kept[None].sum() > 9  # uncapped, the search keeps more columns than the cap
    assert kept[0.2].sum() == 9  # floor(0.2 x 48)
    assert "9 of 48 columns (width_budget 0.2)" in caplog.text
    assert not (kept[0.2] & ~kept[None]).any()  # the same ranking, stopped at the cap


def test_width_budget_below_the_min_dim_floor_fails_before_training(small_data):
    d = small_data
    model = _model(d)
    before = [w.copy() for w in model.get_weights()]
    x, y = d.train
    with pytest.raises(ValueError, match=r"width_budget=0.1 keeps 4 of 48 embedding columns, but min_dim=1 alone "
                                         r"keeps 6; raise width_budget to at least 0.1250"):
        model.fit(d.inputs(x[:512]), y[:512], epochs=1, verbose=0,
                  callbacks=[ked.SingleShotPruner(0.5, width_budget=0.1)])
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def informative():
    """Planted data with informative and noise fields, and `run(callbacks)`: a fresh model trained
    on it for 3 epochs and its test AUC; the AUC without a search, run once for every score."""
    d = ked.data.make_synthetic_ctr(num_rows=120_000, num_fields=8, max_vocab=3000, seed=7)
    train = d.dataset("train", batch_size=1024, seed=0)
    xt, yt = d.test

    def run(callbacks):
        keras.utils.set_random_seed(0)
        m = _model(d, dim=16, hidden=(64, 32))
        m.fit(train, epochs=3, verbose=0, callbacks=callbacks)
        return m, roc_auc(yt, m.predict(d.inputs(xt), batch_size=4096, verbose=0))

    return d, run, run([])[1]


@pytest.mark.parametrize("score", ["abs_mean", "fisher"])
def test_informative_fields_get_more_dims_and_auc_holds_at_budget_02(informative, score):
    d, run, auc_full = informative
    pruner = ked.SingleShotPruner(0.2, score=score, verbose=0)
    model, auc_pruned = run([pruner])
    dims = ked.find_searchable_layers(model)[0].dimension_mask().kept_dims
    inf = [f for f in range(d.num_fields) if f in d.informative_fields]
    noise = [f for f in range(d.num_fields) if f not in d.informative_fields]
    print("dims", dims.tolist(), "informative", inf, "AUC", auc_full, auc_pruned)
    assert dims[inf].mean() > dims[noise].mean() + 3
    assert auc_pruned >= auc_full - 0.005


def test_retrain_rewinds_to_initial_weights_with_searched_dims(small_data):
    d = small_data
    model = _model(d)
    init = [w.copy() for w in model.get_weights()]
    x, y = d.train
    pruner = ked.SingleShotPruner(0.3, warmup_steps=4, scoring_steps=3, after="retrain", verbose=0)

    class Grab(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if pruner.phase == "done" and not hasattr(self, "w"):
                self.w = [w.copy() for w in self.model.get_weights()]

    grab = Grab()
    model.fit(d.inputs(x[:8192]), y[:8192], batch_size=512, epochs=1, verbose=0, callbacks=[pruner, grab])
    layer = ked.find_searchable_layers(model)[0]
    keep = layer.dimension_mask().keep
    # right after pruning: every weight is back at its initial value, pruned columns zero
    rows_keep = np.repeat(keep, d.vocab_sizes, axis=0)
    table_index = [i for i, w in enumerate(model.weights) if w is layer.embedding_variable or
                   getattr(w, "path", w.name) == getattr(layer.embedding_variable, "path", layer.embedding_variable.name)][0]
    np.testing.assert_array_equal(grab.w[table_index], init[table_index] * rows_keep)


def test_retrain_sets_the_optimizer_back_to_its_step_at_fit_start(small_data):
    """The rewind restores the optimizer as it was when `fit` started, step count included: a
    model trained 3 steps before ends with 3 + the steps after the rewind (Adam's bias correction
    and a learning-rate schedule restart with the weights)."""
    d = small_data
    model = _model(d)
    x, y = d.train
    model.fit(d.inputs(x[:1536]), y[:1536], batch_size=512, epochs=1, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 3
    pruner = ked.SingleShotPruner(0.3, warmup_steps=4, scoring_steps=3, after="retrain", verbose=0)

    class Count(keras.callbacks.Callback):
        after = 0

        def on_train_batch_end(self, batch, logs=None):
            if pruner.phase == "done":
                self.after += 1  # the batch that ended the search, then every later one

    count = Count()
    model.fit(d.inputs(x[:8192]), y[:8192], batch_size=512, epochs=1, verbose=0, callbacks=[pruner, count])
    assert pruner.phase == "done" and 1 < count.after < 16
    # the rewind came at the end of the search's batch: the batches after it are the only steps counted
    assert int(model.optimizer.iterations.numpy()) == 3 + count.after - 1


def test_explicit_scoring_data_and_cost_ranking(small_data):
    d = small_data
    model = _model(d)
    x, y = d.train
    xs, ys = d.valid
    pruner = ked.SingleShotPruner(0.2, warmup_steps=3, scoring_data=(d.inputs(xs), ys), ranking="cost",
                                  score="abs_mean", verbose=0)
    model.fit(d.inputs(x[:4096]), y[:4096], batch_size=512, epochs=1, verbose=0, callbacks=[pruner])
    assert pruner.phase == "done"
    assert pruner.result.batches >= 1
    assert pruner.result.params_after <= math.floor(0.2 * sum(d.vocab_sizes) * 8)


def test_second_fit_does_not_prune_again_and_two_pruners_conflict(small_data):
    d = small_data
    model = _model(d)
    x, y = d.train
    pruner = ked.SingleShotPruner(0.3, warmup_steps=2, scoring_steps=2, verbose=0)
    model.fit(d.inputs(x[:4096]), y[:4096], batch_size=512, epochs=1, verbose=0, callbacks=[pruner])
    mask = ked.find_searchable_layers(model)[0].dimension_mask().keep.copy()
    model.fit(d.inputs(x[:4096]), y[:4096], batch_size=512, epochs=1, verbose=0, callbacks=[pruner])
    np.testing.assert_array_equal(mask, ked.find_searchable_layers(model)[0].dimension_mask().keep)
    with pytest.raises(ValueError, match="already searched by another"):
        model.fit(d.inputs(x[:512]), y[:512], epochs=1, verbose=0, callbacks=[ked.SingleShotPruner(0.3)])


def test_training_shorter_than_warmup_warns_and_leaves_model_unpruned(small_data, caplog):
    d = small_data
    model = _model(d)
    x, y = d.train
    pruner = ked.SingleShotPruner(0.3, warmup_steps=1000, verbose=0)
    with caplog.at_level("WARNING", logger="keras_embdim"):
        model.fit(d.inputs(x[:1024]), y[:1024], batch_size=512, epochs=1, verbose=0, callbacks=[pruner])
    assert "not pruned" in caplog.text
    assert ked.find_searchable_layers(model)[0].dimension_mask().is_full


def test_deepfm_and_two_layers_ranked_globally(small_data):
    d = small_data
    inputs = {n: keras.Input((), dtype="int32", name=n) for n in d.field_names}
    ids = ked.layers.StackFields()([inputs[n] for n in d.field_names])
    a = ked.PrunableEmbedding(d.vocab_sizes, 8, name="wide")(ids)
    b = ked.PrunableEmbedding(d.vocab_sizes, 4, name="narrow")(ids)
    x = keras.layers.Concatenate()([keras.layers.Flatten()(a), keras.layers.Flatten()(b)])
    model = ked.models.compile_ctr(keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x)))
    xt, yt = d.train
    pruner = ked.SingleShotPruner(0.3, warmup_steps=3, scoring_steps=3, verbose=0)
    model.fit(d.inputs(xt[:4096]), yt[:4096], batch_size=512, epochs=1, verbose=0, callbacks=[pruner])
    full = sum(d.vocab_sizes) * 12
    assert pruner.result.params_full == full
    assert pruner.result.params_after <= math.floor(0.3 * full)
    masks = pruner.result.masks
    assert masks["wide"].shape[1] == 8 and masks["narrow"].shape[1] == 4


def test_default_warmup_scores_the_last_unseen_batches_of_the_first_epoch(small_data):
    d = small_data
    model = _model(d)
    x, y = d.train
    pruner = ked.SingleShotPruner(0.3, scoring_steps=5, verbose=0)
    model.fit(d.inputs(x[:8192]), y[:8192], batch_size=512, epochs=2, verbose=0, callbacks=[pruner])
    # 16 steps per epoch: warm-up 11 steps, scoring on steps 12..16, pruned at the end of epoch 1
    assert pruner.result.step == 16 and pruner.result.batches == 5
