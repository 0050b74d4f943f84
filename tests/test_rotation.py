"""The rotation of each field to its principal axes (`keras_embdim.search.rotation`), for SSEDS and PME.

Checked: the axes against numpy by hand, a planted rank-2 field ending in its first two
columns, the model's function unchanged (predictions before == after), where the rotation
cannot keep the function (FM) a clear error with the model unchanged, and the search with
`rotate=True` landing on the budget with an export that serves what the model predicts,
and the optimizer's state of the rotated variables reset (the other variables' kept). PME with
`rotate=True`: the rotation at the start of the epoch after the warm-up keeps the predictions and
puts every field on the principal axes of its warm-up table, only the search epoch is scored, a
one-epoch fit ends unsearched, an FM consumer is refused before training. With
`rotate="mid_epoch"` the same halfway through the first search epoch (no warm-up epoch): the
predictions kept across the rotation, the second half of the epoch scored, refused without a known
number of steps, and a run resumed past the first search epoch not rotated again. The default
`rotate="auto"`: "mid_epoch" on an MLP, no rotation (and why) on an FM model or without a known
number of steps, there the same sizes as `rotate=False`.
"""

import numpy as np
import pytest

import keras_embdim as ked
from keras_embdim import _compat, keras
from keras_embdim.export.fold import kernel_rows
from keras_embdim.search.rotation import field_gram, principal_axes, rotate_layer


def test_principal_axes_by_hand():
    # gram of rows (1, 1) and (1, -1) scaled: eigenvalues 8 (along (1, 1)) and 2 (along (1, -1))
    gram = np.array([[5.0, 3.0], [3.0, 5.0]])
    q = principal_axes(gram)
    s = np.sqrt(0.5)
    np.testing.assert_allclose(q, [[s, s], [s, -s]], atol=1e-12)
    np.testing.assert_allclose(q.T @ gram @ q, np.diag([8.0, 2.0]), atol=1e-12)
    np.testing.assert_allclose(q.T @ q, np.eye(2), atol=1e-12)


def _mlp(d, dim=8, build=ked.models.build_mlp):
    keras.utils.set_random_seed(0)
    return ked.models.compile_ctr(build(d.vocab_sizes, d.field_names, embedding_dim=dim, hidden=(16,)))


def test_kernel_rows_of_the_mlp_are_its_concatenated_inputs(small_data):
    d = small_data
    model = _mlp(d)
    layer = ked.find_searchable_layers(model)[0]
    found, why = kernel_rows(model, layer)
    assert why is None and len(found) == 1
    F, D = len(d.vocab_sizes), 8
    # build_mlp flattens [F, D]: entry (f, j) is input f * D + j of the first Dense
    np.testing.assert_array_equal(found[0].rows, np.arange(F * D).reshape(1, F, D))


def test_rotation_keeps_the_function_and_moves_a_planted_rank_into_the_leading_columns(small_data):
    d = small_data
    model = _mlp(d)
    layer = ked.find_searchable_layers(model)[0]
    rng = np.random.default_rng(0)
    table = np.asarray(layer.embedding_variable).copy()
    n0 = d.vocab_sizes[0]
    table[:n0] = rng.normal(size=(n0, 2)) @ rng.normal(size=(2, 8))  # field 0: rank 2, in no particular basis
    layer.embedding_variable.assign(table)
    x = d.inputs(d.test[0][:256])
    before = np.asarray(model(x, training=False))
    rotations = rotate_layer(model, layer)
    after = np.asarray(model(x, training=False))
    np.testing.assert_allclose(after, before, atol=1e-5)
    rotated = np.asarray(layer.embedding_variable)
    np.testing.assert_allclose(rotated[:n0], table[:n0] @ rotations[0], atol=1e-5)
    col_norms = np.linalg.norm(rotated[:n0], axis=0)
    assert col_norms[2:].max() < 1e-4 * col_norms[0]  # the rank-2 field now lives in columns 0 and 1
    for f, q in enumerate(rotations):  # every field: decorrelated columns, by decreasing second moment
        start = int(ked.fields.field_offsets(d.vocab_sizes)[f])
        gram = field_gram(layer.embedding_variable, start, start + d.vocab_sizes[f])
        off = gram - np.diag(np.diag(gram))
        assert np.abs(off).max() <= 1e-4 * np.abs(gram).max()
        assert np.all(np.diff(np.diag(gram)) <= 1e-6 * np.abs(gram).max())


def test_an_mlp_sub_model_is_rotated_inside_and_keeps_the_function():
    """The MLP as a `keras.Sequential` applied to the flattened fields: its first Dense's kernel
    rows are found inside the sub-model (entry (f, j) is input f * D + j) and take the inverse
    rotation, so the model computes what it did (PME's `rotate="auto"` rotates such a model)."""
    vocab, dim = [7, 30, 120], 6
    ids = keras.Input((3,), dtype="int32", name="ids")
    emb = ked.PrunableEmbedding(vocab, dim, name="emb")
    mlp = keras.Sequential([keras.layers.Dense(5, activation="relu", name="hidden"), keras.layers.Dense(1)],
                           name="mlp")
    model = keras.Model(ids, mlp(keras.layers.Flatten()(emb(ids))))
    rng = np.random.default_rng(3)
    emb.embedding_variable.assign(rng.standard_normal((sum(vocab), dim)).astype(np.float32))
    found, why = kernel_rows(model, emb)
    assert why is None and [f.dense.name for f in found] == ["hidden"]
    np.testing.assert_array_equal(found[0].rows, np.arange(3 * dim).reshape(1, 3, dim))
    x = np.stack([rng.integers(0, v, 64) for v in vocab], 1).astype("int32")
    before = np.asarray(model(x, training=False))
    rotations = rotate_layer(model, emb)
    assert len(rotations) == 3 and not np.allclose(rotations[0], np.eye(dim))
    np.testing.assert_allclose(np.asarray(model(x, training=False)), before, atol=1e-5)


def test_rotation_resets_the_optimizer_state_of_what_it_rotates(small_data):
    """The moments of the old basis do not describe the new one: the table's and the consuming
    kernel's slots restart from zero (the other kernels' are kept), and the model trains on."""
    d = small_data
    model = _mlp(d)
    x, y = d.train
    model.fit(d.inputs(x[:1024]), y[:1024], batch_size=256, epochs=1, verbose=0)
    layer = ked.find_searchable_layers(model)[0]
    rotated = [layer.embedding_variable, kernel_rows(model, layer)[0][0].dense.kernel]
    other = model.get_layer("ctr").kernel
    slots = {id(v): _compat.optimizer_slots(model.optimizer, v) for v in rotated + [other]}
    assert all(len(s) == 2 and np.abs(np.asarray(s[0])).max() > 0 for s in slots.values())  # Adam's m and v
    kept = [np.asarray(s).copy() for s in slots[id(other)]]
    rotate_layer(model, layer, model.optimizer)
    assert all(np.abs(np.asarray(s)).max() == 0 for v in rotated for s in slots[id(v)])
    for before, s in zip(kept, slots[id(other)]):
        np.testing.assert_array_equal(np.asarray(s), before)
    model.fit(d.inputs(x[:1024]), y[:1024], batch_size=256, epochs=1, verbose=0)
    assert np.all(np.isfinite(model.evaluate(d.inputs(x[:1024]), y[:1024], verbose=0)))


def test_fm_consumer_cannot_be_rotated_and_the_model_is_unchanged(small_data):
    d = small_data
    model = _mlp(d, build=ked.models.build_deepfm)
    before = [w.copy() for w in model.get_weights()]
    x, y = d.train
    with pytest.raises(ValueError, match=r"rotate=True\): layer 'embedding' cannot be rotated .* Search without"):
        model.fit(d.inputs(x[:512]), y[:512], epochs=1, verbose=0,
                  callbacks=[ked.SingleShotPruner(0.2, rotate=True, verbose=0)])
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs,match", [({"rotate": "yes"}, "`rotate` must be True or False; received rotate='yes'"),
                                          ({"rotate": 1}, "`rotate` must be True or False; received rotate=1"),
                                          ({"rotate": True, "after": "retrain"}, "after='finetune'")])
def test_bad_rotate_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ked.SingleShotPruner(0.2, **kwargs)


def test_search_with_rotation_lands_on_the_budget_and_exports_what_it_predicts(small_data, tmp_path):
    d = small_data
    model = _mlp(d)
    x, y = d.train
    cb = ked.SingleShotPruner(0.2, rotate=True, warmup_steps=5, scoring_steps=5, verbose=0)
    model.fit(d.inputs(x), y, batch_size=256, epochs=2, verbose=0, callbacks=[cb])
    layer = ked.find_searchable_layers(model)[0]
    mask = layer.dimension_mask()
    assert mask.kept_params <= 0.2 * mask.full_params
    sample = d.inputs(d.test[0][:300])
    r = ked.export_compact(model, str(tmp_path / "export"), sample_inputs=sample, verbose=0)
    # the kept entries, plus the zero columns that let a small field share a wider table (within 1 %)
    assert r.max_abs_diff <= 1e-5 and r.embedding_bytes == 4 * mask.kept_params + r.embedding_padding_bytes
    assert r.embedding_padding_bytes <= 0.01 * 4 * mask.kept_params


# ---------------------------------------------------------------- PME, rotate=True
class _Snapshot(keras.callbacks.Callback):
    """Predictions and the table at the start of an epoch (placed before or after the search callback)."""

    def __init__(self, epoch, x):
        super().__init__()
        self.epoch, self.x, self.pred, self.table = epoch, x, None, None

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            self.pred = np.asarray(self.model(self.x, training=False))
            self.table = np.asarray(ked.find_searchable_layers(self.model)[0].embedding_variable).copy()


def test_pme_rotation_after_the_warmup_keeps_the_function_and_scores_the_search_epoch_only(small_data, tmp_path):
    """The warm-up epoch trains the full table; the next epoch starts on each field's principal axes
    (the table rotated, the model's predictions unchanged), the importance is accumulated over that
    epoch only, and the searched model lands on the budget and exports what it predicts."""
    d = small_data
    model = _mlp(d)
    x, y = d.train
    x, y = x[:4096], y[:4096]
    sample = d.inputs(d.test[0][:300])
    before, after = _Snapshot(1, sample), _Snapshot(1, sample)
    cb = ked.PMEPruner(0.2, rotate=True, verbose=0)
    model.fit(d.inputs(x), y, batch_size=256, epochs=3, verbose=0, callbacks=[before, cb, after])
    np.testing.assert_allclose(after.pred, before.pred, atol=1e-5)
    assert np.abs(after.table - before.table).max() > 1e-3  # rotated, not left as it was
    for f, n in enumerate(d.vocab_sizes):  # every field: decorrelated columns, by decreasing second moment
        start = int(ked.fields.field_offsets(d.vocab_sizes)[f])
        rows = after.table[start:start + n].astype(np.float64)
        gram = rows.T @ rows
        np.testing.assert_allclose(gram, np.diag(np.diag(gram)), atol=1e-4 * np.abs(gram).max())
        assert np.all(np.diff(np.diag(gram)) <= 1e-6 * np.abs(gram).max())
        q = principal_axes(before.table[start:start + n].astype(np.float64).T @ before.table[start:start + n])
        np.testing.assert_allclose(rows, before.table[start:start + n] @ q, atol=1e-5)
    assert cb.phase == "done" and cb.result.batches == 4096 // 256  # the search epoch's steps only
    layer = ked.find_searchable_layers(model)[0]
    assert layer.dimension_mask().kept_params <= 0.2 * layer.dimension_mask().full_params
    r = ked.export_compact(model, str(tmp_path / "export"), sample_inputs=sample, verbose=0)
    assert r.max_abs_diff <= 1e-5


def test_pme_rotate_with_one_epoch_ends_in_the_warmup_unsearched(small_data, caplog):
    import logging

    d = small_data
    model = _mlp(d)
    x, y = d.train
    cb = ked.PMEPruner(0.2, rotate=True, verbose=0)
    with caplog.at_level(logging.WARNING, logger="keras_embdim"):
        model.fit(d.inputs(x[:1024]), y[:1024], batch_size=256, epochs=1, verbose=0, callbacks=[cb])
    assert ked.find_searchable_layers(model)[0].dimension_mask().is_full and cb.result is None
    assert any("not searched" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("rotate", [True, "mid_epoch"])
def test_pme_rotate_refuses_an_fm_consumer_before_training(small_data, rotate):
    d = small_data
    model = _mlp(d, build=ked.models.build_deepfm)
    before = [w.copy() for w in model.get_weights()]
    x, y = d.train
    cb = ked.PMEPruner(0.2, rotate=rotate, verbose=0)
    msg = rf"PMEPruner\(rotate={rotate!r}\): layer 'embedding' cannot be rotated .* Search without rotate={rotate!r}"
    with pytest.raises(ValueError, match=msg):
        model.fit(d.inputs(x[:512]), y[:512], epochs=2, verbose=0, callbacks=[cb])
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("value", ["yes", 1, "mid"])
def test_pme_bad_rotate_option(value):
    with pytest.raises(ValueError, match=(r"`rotate` must be one of \('auto', 'warmup_epoch', 'mid_epoch'\), True or "
                                          rf"False; received rotate={value!r}")):
        ked.PMEPruner(0.2, rotate=value)


class _BatchSnapshot(keras.callbacks.Callback):
    """Predictions and the table at the end of batch `batch` of epoch 0 (before or after the search callback)."""

    def __init__(self, batch, x):
        super().__init__()
        self.batch, self.x, self.pred, self.table, self._epoch = batch, x, None, None, -1

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self._epoch == 0 and batch == self.batch:
            self.pred = np.asarray(self.model(self.x, training=False))
            self.table = np.asarray(ked.find_searchable_layers(self.model)[0].embedding_variable).copy()


def test_pme_mid_epoch_rotation_keeps_the_function_and_scores_the_second_half(small_data, tmp_path):
    """rotate="mid_epoch": after half of the first epoch's steps each field is on the principal axes of
    its table as the first half left it (predictions unchanged), the other half is scored, and the
    searched model lands on the budget and exports what it predicts; no warm-up epoch."""
    d = small_data
    model = _mlp(d)
    x, y = d.train
    x, y = x[:4096], y[:4096]  # 16 steps of 256: the rotation after step 8
    sample = d.inputs(d.test[0][:300])
    before, after = _BatchSnapshot(7, sample), _BatchSnapshot(7, sample)
    cb = ked.PMEPruner(0.2, rotate="mid_epoch", verbose=0)
    assert cb.warmup_epochs == 0
    model.fit(d.inputs(x), y, batch_size=256, epochs=2, verbose=0, callbacks=[before, cb, after])
    np.testing.assert_allclose(after.pred, before.pred, atol=1e-5)
    offsets = ked.fields.field_offsets(d.vocab_sizes)
    for f, n in enumerate(d.vocab_sizes):
        start = int(offsets[f])
        old = before.table[start:start + n].astype(np.float64)
        q = principal_axes(old.T @ old)
        np.testing.assert_allclose(after.table[start:start + n], old @ q, atol=1e-5)
        assert np.abs(q - np.eye(q.shape[0])).max() > 1e-2  # a real turn, not the identity
    assert cb.phase == "done" and cb.result.batches == 16 - 8  # the second half of the epoch only
    layer = ked.find_searchable_layers(model)[0]
    assert layer.dimension_mask().kept_params <= 0.2 * layer.dimension_mask().full_params
    r = ked.export_compact(model, str(tmp_path / "export"), sample_inputs=sample, verbose=0)
    assert r.max_abs_diff <= 1e-5


def test_pme_mid_epoch_needs_the_steps_per_epoch_and_leaves_the_model_unchanged(small_data):
    import tensorflow as tf

    d = small_data
    model = _mlp(d)
    before = [w.copy() for w in model.get_weights()]
    x, y = d.train
    ds = tf.data.Dataset.from_tensor_slices((d.inputs(x[:1024]), y[:1024])).filter(lambda *_: True).batch(256)
    assert int(ds.cardinality()) < 0  # unknown
    with pytest.raises(ValueError, match=r"rotate='mid_epoch'\) rotates halfway .* steps_per_epoch"):
        model.fit(ds, epochs=2, verbose=0, callbacks=[ked.PMEPruner(0.2, rotate="mid_epoch", verbose=0)])
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_pme_mid_epoch_resumed_after_the_first_search_epoch_is_not_rotated_again(small_data):
    """Resumed at epoch 1 of a two-epoch search (`initial_epoch=1`, as `BackupAndRestore` does): the
    restored table was rotated in epoch 0, so epoch 1 starts scoring at once, with the table as it was."""
    d = small_data
    model = _mlp(d)
    x, y = d.train
    x, y = x[:2048], y[:2048]
    sample = d.inputs(d.test[0][:300])
    snap = _Snapshot(1, sample)
    table = np.asarray(ked.find_searchable_layers(model)[0].embedding_variable).copy()
    cb = ked.PMEPruner(0.2, rotate="mid_epoch", search_epochs=2, verbose=0)
    model.fit(d.inputs(x), y, batch_size=256, epochs=3, initial_epoch=1, verbose=0, callbacks=[cb, snap])
    np.testing.assert_array_equal(snap.table, table)  # not rotated at the start of the resumed epoch
    # scored from its first step (a rotation halfway would have restarted the count at step 4)
    assert cb.phase == "done" and cb.result.batches == 2048 // 256


def test_pme_auto_rotates_an_mlp_halfway_through_the_search_epoch(small_data):
    d = small_data
    x, y = d.train
    model = _mlp(d)
    sample = d.inputs(d.test[0][:300])
    before, after = _BatchSnapshot(3, sample), _BatchSnapshot(3, sample)
    cb = ked.PMEPruner(0.2, verbose=0)  # rotate="auto"
    model.fit(d.inputs(x[:2048]), y[:2048], batch_size=256, epochs=2, verbose=0, callbacks=[before, cb, after])
    assert cb.rotate == "auto" and cb.rotation == "mid_epoch" and cb.no_rotation_reason is None
    assert np.abs(after.table - before.table).max() > 1e-3  # turned after step 4 of 8
    np.testing.assert_allclose(after.pred, before.pred, atol=1e-5)
    assert cb.result.batches == 4  # the second half of 8 steps


def _pme_sizes(model, fit_data, rotate, **fit_kwargs):
    cb = ked.PMEPruner(0.2, rotate=rotate, verbose=0)
    model.fit(fit_data[0], fit_data[1], verbose=0, callbacks=[cb], **fit_kwargs)
    return cb, np.concatenate(ked.find_searchable_layers(model)[0].dimension_mask().value_sizes)


def test_pme_auto_searches_an_fm_model_on_its_own_axes_and_says_why(small_data, caplog):
    import logging

    d = small_data
    x, y = d.train
    data = (d.inputs(x[:2048]), y[:2048])
    with caplog.at_level(logging.INFO, logger="keras_embdim"):
        cb, sizes = _pme_sizes(_mlp(d, build=ked.models.build_deepfm), data, "auto", batch_size=256, epochs=2,
                               shuffle=False)
    assert cb.rotation is None and "layer 'embedding' cannot be rotated" in cb.no_rotation_reason
    assert any("rotate='auto'" in r.getMessage() and "not rotated" in r.getMessage() for r in caplog.records)
    assert cb.result.batches == 8  # the whole search epoch, as without rotation
    _, plain = _pme_sizes(_mlp(d, build=ked.models.build_deepfm), data, False, batch_size=256, epochs=2,
                          shuffle=False)
    np.testing.assert_array_equal(sizes, plain)


def test_pme_auto_without_a_known_number_of_steps_does_not_rotate(small_data):
    import tensorflow as tf

    d = small_data
    x, y = d.train
    ds = tf.data.Dataset.from_tensor_slices((d.inputs(x[:1024]), y[:1024])).filter(lambda *_: True).batch(256)
    cb = ked.PMEPruner(0.2, verbose=0)
    _mlp(d).fit(ds, epochs=2, verbose=0, callbacks=[cb])
    assert cb.rotation is None and "number of steps per epoch is unknown" in cb.no_rotation_reason
    assert cb.phase == "done" and cb.result.step == 4  # searched over its one epoch, on the table's own axes
