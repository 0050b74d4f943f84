"""Interrupted searches resume: `BackupAndRestore`, `ModelCheckpoint`, `.keras` mid-search.

A run is killed mid-training (an exception from a callback, as a preempted
worker would be); a fresh process would rebuild the same model with the same
seed and call `fit` again with a new search callback and the same backup
folder. It must end with the masks and the predictions of a run that was never
interrupted, whether the interruption fell during the search or after it.
"""

import numpy as np
import pytest

import keras_embdim as ked
from keras_embdim import keras

VOCAB = [40, 25, 12, 6]
D = 8
EPOCHS = 4
STEPS = 16  # 2048 rows / batch 128


def data(n=2048, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.integers(0, v, n) for v in VOCAB], 1).astype("int32")
    y = ((ids[:, 0] % 3 == 0) ^ (ids[:, 1] % 2 == 0) ^ (rng.random(n) < 0.1)).astype("float32")
    return ids, y


def build(method):
    keras.utils.set_random_seed(7)
    inp = keras.Input(shape=(len(VOCAB),), dtype="int32", name="ids")
    if method == "ham":
        emb = ked.HardMaskEmbedding(VOCAB, D, name="fields")
    elif method == "amtl":
        emb = ked.TwinsMaskLayer(ked.PrunableEmbedding(VOCAB, D), name="fields")
    else:
        emb = ked.PrunableEmbedding(VOCAB, D, name="fields")
    x = keras.layers.Flatten()(emb(inp))
    x = keras.layers.Dense(16, activation="relu")(x)
    model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(x))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    return model


# (method, callback kwargs, epoch at which the first run dies): the interruption
# falls mid-search for the first three, after the search for the others
CASES = {
    "sseds_mid_warmup": ("sseds", dict(warmup_steps=STEPS + 4, scoring_steps=8), 1),
    "ham_mid_search": ("ham", dict(search_epochs=2), 1),
    "amtl_mid_search": ("amtl", dict(twins_epochs=1, search_epochs=1), 1),
    "sseds_after": ("sseds", dict(scoring_steps=8), 2),
    "ham_after": ("ham", dict(search_epochs=1), 2),
    "amtl_after": ("amtl", dict(search_epochs=1), 2),
    # the default rotate="auto": this MLP's fields rotated halfway through epoch 0
    "pme_after": ("pme", dict(search_epochs=1), 2),
    # rotate=True: the backup at the end of the warm-up epoch; resumed, the fields are rotated and
    # the whole search epoch is scored, as in the uninterrupted run; killed in epoch 3, the backup of
    # epoch 2 holds the finished search (epoch 1 ends it: its backup may be written before it ends)
    "pme_rotate_mid_search": ("pme", dict(rotate=True), 1),
    "pme_rotate_after": ("pme", dict(rotate=True), 3),
}


def search(method, kwargs):
    cls = {"sseds": ked.SingleShotPruner, "ham": ked.HardMaskSearch, "amtl": ked.TwinsMaskSearch,
           "pme": ked.PMEPruner}[method]
    return cls(0.3, verbose=0, **kwargs)


class Preempted(Exception):
    pass


class DieAt(keras.callbacks.Callback):
    def __init__(self, epoch, batch=3):
        super().__init__()
        self.epoch, self.batch, self._epoch = epoch, batch, 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self._epoch == self.epoch and batch == self.batch:
            raise Preempted(f"killed at epoch {self.epoch} batch {batch}")


def masks(model):
    layer = ked.find_searchable_layers(model)[0]
    m = layer.dimension_mask()
    return m.keep, (np.concatenate(m.value_sizes) if m.value_sizes else None)


def fit(model, callbacks):
    ids, y = data()
    return model.fit(ids, y, batch_size=128, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=callbacks)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = {}
    for case, (method, kwargs, _) in CASES.items():
        model = build(method)
        cb = search(method, kwargs)
        fit(model, [cb])
        out[case] = (masks(model), model.predict(data()[0][:512], verbose=0), cb.result.params_after)
    return out


# the callbacks' order decides whether a backup written at the epoch that ends a search holds its end;
# in these cases the search ends in epoch 0 and the run resumes from the backup of epoch 1, which
# holds the end either way: one order each (alternating), both for every other case
ONE_ORDER = {"sseds_after": "search_first", "ham_after": "backup_first", "amtl_after": "search_first",
             "pme_after": "backup_first"}
RESUMES = [(case, order) for case in CASES for order in ("search_first", "backup_first")
           if ONE_ORDER.get(case, order) == order]


@pytest.mark.parametrize("case,order", RESUMES)
def test_backup_and_restore_resumes_to_the_uninterrupted_result(case, order, uninterrupted, tmp_path):
    method, kwargs, die_epoch = CASES[case]
    backup = str(tmp_path / "backup")

    def callbacks(cb, extra=()):
        b = keras.callbacks.BackupAndRestore(backup)
        return ([cb, b] if order == "search_first" else [b, cb]) + list(extra)

    model = build(method)
    with pytest.raises(Preempted):
        fit(model, callbacks(search(method, kwargs), [DieAt(die_epoch)]))

    # a new process: same code, same seed, fresh callback, same backup folder
    keras.backend.clear_session()
    model = build(method)
    cb = search(method, kwargs)
    fit(model, callbacks(cb))
    (keep, sizes), pred, kept = uninterrupted[case]
    got_keep, got_sizes = masks(model)
    np.testing.assert_array_equal(got_keep, keep)
    if sizes is not None:
        np.testing.assert_array_equal(got_sizes, sizes)
    assert cb.phase == "done" and cb.result.params_after == kept
    warmup = int(kwargs.get("rotate") is True)  # rotate=True trains a warm-up epoch first; "mid_epoch" does not
    if die_epoch > (kwargs.get("search_epochs", 1) + kwargs.get("twins_epochs", 0) + warmup) or (
        method == "sseds" and "warmup_steps" not in kwargs
    ):
        assert cb.result.resumed  # the search was over at the checkpoint: it was not redone
    np.testing.assert_allclose(model.predict(data()[0][:512], verbose=0), pred, atol=2e-5)


@pytest.mark.parametrize("method", ["ham", "sseds"])
def test_model_checkpoint_mid_search_then_fit_from_initial_epoch(method, uninterrupted, tmp_path):
    """Save a `.keras` file every epoch; load the one of epoch 1 (mid-search for HAM
    with 2 search epochs, mid-warm-up for SSEDS) and finish with `initial_epoch=1`."""
    case = {"ham": "ham_mid_search", "sseds": "sseds_mid_warmup"}[method]
    _, kwargs, _ = CASES[case]
    model = build(method)
    ckpt = keras.callbacks.ModelCheckpoint(str(tmp_path / "epoch{epoch}.keras"))
    ids, y = data()
    model.fit(ids, y, batch_size=128, epochs=1, shuffle=False, verbose=0, callbacks=[search(method, kwargs), ckpt])
    keras.backend.clear_session()
    loaded = keras.models.load_model(str(tmp_path / "epoch1.keras"))
    layer = ked.find_searchable_layers(loaded)[0]
    assert layer.dimension_mask().is_full or method == "ham"  # still searching
    cb = search(method, kwargs)
    loaded.fit(ids, y, batch_size=128, epochs=EPOCHS, initial_epoch=1, shuffle=False, verbose=0, callbacks=[cb])
    (keep, _), pred, kept = uninterrupted[case]
    np.testing.assert_array_equal(masks(loaded)[0], keep)
    assert cb.result.params_after == kept
    np.testing.assert_allclose(loaded.predict(ids[:512], verbose=0), pred, atol=2e-5)


@pytest.mark.parametrize("method", ["sseds", "ham", "amtl", "pme"])
def test_keras_file_mid_search_and_after_for_every_layer(method, tmp_path):
    """`.keras` round trip of a model in the middle of its search and after it:
    same predictions, same search variables, and a finished search stays finished."""
    kwargs = {"ham": dict(search_epochs=2), "amtl": dict(search_epochs=2), "pme": dict(search_epochs=2),
              "sseds": dict(warmup_steps=2 * STEPS)}[method]
    ids, y = data()
    model = build(method)
    model.fit(ids, y, batch_size=128, epochs=1, shuffle=False, verbose=0, callbacks=[search(method, kwargs)])
    path = str(tmp_path / "mid.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(ids[:256], verbose=0), model.predict(ids[:256], verbose=0), atol=1e-6)
    def by_name(layer):
        return {v.name.split("/")[-1].split(":")[0]: np.asarray(v) for v in layer.weights}

    for a, b in zip(model.layers, loaded.layers):  # every variable, search state included
        wa, wb = by_name(a), by_name(b)
        assert sorted(wa) == sorted(wb)
        for key in wa:
            np.testing.assert_array_equal(wa[key], wb[key], err_msg=f"{a.name}/{key}")
    # after the search
    cb = search(method, {k: v for k, v in kwargs.items() if k != "warmup_steps"} if method == "sseds" else kwargs)
    model2 = build(method)
    model2.fit(ids, y, batch_size=128, epochs=3, shuffle=False, verbose=0, callbacks=[cb])
    model2.save(str(tmp_path / "after.keras"))
    loaded2 = keras.models.load_model(str(tmp_path / "after.keras"))
    np.testing.assert_array_equal(masks(loaded2)[0], masks(model2)[0])
    np.testing.assert_allclose(loaded2.predict(ids[:256], verbose=0), model2.predict(ids[:256], verbose=0), atol=1e-6)
    # training on with a new search callback keeps the found dims
    again = search(method, kwargs)
    loaded2.fit(ids, y, batch_size=128, epochs=1, verbose=0, callbacks=[again])
    assert again.phase == "done" and again.result.resumed
    np.testing.assert_array_equal(masks(loaded2)[0], masks(model2)[0])


def test_pme_resumed_inside_a_longer_search_says_what_it_lost(tmp_path, caplog):
    """PME's entry importance is not checkpointed: resumed inside a 2-epoch search it
    scores the remaining epoch only, says so, and still lands on the budget."""
    import logging

    backup = str(tmp_path / "backup")
    model = build("pme")
    with pytest.raises(Preempted):
        fit(model, [ked.PMEPruner(0.3, search_epochs=2, verbose=0), keras.callbacks.BackupAndRestore(backup),
                    DieAt(1)])
    keras.backend.clear_session()
    model = build("pme")
    cb = ked.PMEPruner(0.3, search_epochs=2, verbose=0)
    with caplog.at_level(logging.WARNING, logger="keras_embdim"):
        fit(model, [cb, keras.callbacks.BackupAndRestore(backup)])
    assert any("not in the checkpoint" in r.getMessage() for r in caplog.records)
    assert cb.phase == "done" and cb.result.params_after <= 0.3 * sum(VOCAB) * D
    assert cb.result.batches == STEPS  # only the epoch after the checkpoint was scored
