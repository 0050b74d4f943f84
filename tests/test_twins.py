"""TwinsMaskLayer (AMTL) and TwinsMaskSearch: math by hand, budget landing, export, warm start."""

import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

import keras_embdim as ked
from keras_embdim.search import twins
from keras_embdim.export import layouts as ragged
from keras_embdim import keras
from keras_embdim.export import TABLES_ATTRIBUTE, saved_variable_bytes
from keras_embdim.metrics import roc_auc
from keras_embdim.serving import check_in_fresh_process

import reference


# ------------------------------------------------------------------ the math
def test_frequency_features_by_hand():
    c = np.array([0.0, 3.0, 99.0], np.float32)
    q, s = twins.frequency_features(tf.constant(c), tf.constant([99.0] * 3), tf.constant([9.0] * 3))
    want_q = np.log1p(c) / np.log(100.0)
    np.testing.assert_allclose(q.numpy(), want_q, rtol=1e-6)
    np.testing.assert_allclose(s.numpy()[:, 0], want_q, rtol=1e-6)
    np.testing.assert_allclose(s.numpy()[:, 1], np.tanh((np.log1p(c) - np.log(10.0)) / 2), rtol=1e-5)
    q0, _ = twins.frequency_features(tf.constant([0.0]), tf.constant([0.0]), tf.constant([0.0]))
    assert q0.numpy()[0] == 0.0  # an unseen field: no division by zero


def test_straight_through_mask_is_exactly_the_argmax_prefix_and_has_the_softmax_gradient():
    rng = np.random.default_rng(0)
    z = tf.constant(rng.normal(size=(7, 5)).astype(np.float32) * 3)
    w = tf.constant(rng.normal(size=(7, 6)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(z)
        mask, size = twins.straight_through_mask(z, 0.5, 2, 6)  # sizes 2..6
        loss = tf.reduce_sum(mask * w) + tf.reduce_sum(size)
        p = tf.nn.softmax(z / 0.5)
        L = tf.constant(twins.prefix_matrix(2, 6))
        soft_loss = tf.reduce_sum(tf.matmul(p, L) * w) + tf.reduce_sum(p * tf.constant([2.0, 3, 4, 5, 6]))
    k = np.argmax(z.numpy(), axis=1)
    want = (np.arange(6)[None, :] < (k + 2)[:, None]).astype(np.float32)
    assert np.array_equal(mask.numpy(), want)  # bitwise 0/1
    assert np.array_equal(size.numpy(), (k + 2).astype(np.float32))
    np.testing.assert_allclose(tape.gradient(loss, z).numpy(), tape.gradient(soft_loss, z).numpy(), rtol=1e-5, atol=1e-6)


def _brute_force(z, m, s, target):
    """Best achievable kept params <= target over per-group sizes (tiny cases only)."""
    import itertools

    best = -1
    for choice in itertools.product(range(len(s)), repeat=len(m)):
        kept = sum(int(mm) * int(s[c]) for mm, c in zip(m, choice))
        if kept <= target:
            best = max(best, kept)
    return best


def test_land_on_budget_hand_example():
    # two groups (3 values with count 10, 5 values with count 1), sizes 1..4
    z = np.array([[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]])
    block = {"z": z, "multiplicity": np.array([3, 5]), "order": np.array([10.0, 1.0]), "min_dim": 1, "output_dim": 4}
    (sizes,), _ = twins.land_on_budget([block], 17)  # unconstrained choice: 3*4 + 5*1 = 17
    assert sizes.tolist() == [4, 4, 4, 1, 1, 1, 1, 1]
    (sizes,), _ = twins.land_on_budget([block], 12)  # frequent values give up size first... by price
    assert sizes.sum() <= 12 and sizes.sum() >= 12 - 3
    assert sizes[:3].min() >= sizes[3:].max()
    with pytest.raises(ValueError, match="min_dim"):
        twins.land_on_budget([block], 7)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 4), st.integers(0, 1), st.floats(0.0, 1.0), st.integers(0, 10_000))
def test_land_on_budget_never_exceeds_and_lands_close(groups, D, min_dim, frac, seed):
    rng = np.random.default_rng(seed)
    K = D - min_dim + 1
    z = rng.normal(size=(groups, K))
    m = rng.integers(1, 5, size=groups)
    floor, full = int(m.sum()) * min_dim, int(m.sum()) * D
    target = floor + int(frac * (full - floor))
    block = {"z": z, "multiplicity": m, "order": rng.random(groups), "min_dim": min_dim, "output_dim": D}
    (sizes,), _ = twins.land_on_budget([block], target)
    assert sizes.shape == (int(m.sum()),)
    assert sizes.min() >= min_dim and sizes.max() <= D
    kept = int(sizes.sum())
    assert kept <= target
    assert kept >= target - D  # within one value's size step
    if groups <= 4:
        assert kept >= _brute_force(z, m, twins.size_table(min_dim, D), target) - D


# ----------------------------------------------------------------- the layer
def _numpy_twins(layer, counts, fields):
    """A second implementation of the layer's logits (numpy)."""
    vocab = np.asarray(layer.field_vocab_sizes, np.float64)
    fmax = layer.counter.field_max.numpy()[fields]
    fmean = (layer.counter.field_total.numpy() / vocab)[fields]
    lc = np.log1p(counts)
    q = np.where(fmax > 0, lc / np.where(fmax > 0, np.log1p(fmax), 1.0), 0.0)
    rel = np.tanh((lc - np.log1p(fmean)) / 2)
    x = np.stack([q, rel], -1)
    if layer.num_fields > 1:
        x = np.concatenate([x, np.eye(layer.num_fields)[fields]], -1)

    def branch(w1, b1, w2, b2):
        return np.maximum(x @ w1.numpy() + b1.numpy(), 0) @ w2.numpy() + b2.numpy()

    z = layer.logit_scale * (q[..., None] * branch(*layer.twins.high) + (1 - q[..., None]) * branch(*layer.twins.low))
    sizes = twins.size_table(layer.min_dim, layer.output_dim)
    return z - float(layer.size_bias.numpy()) * sizes / layer.output_dim


def test_layer_forward_counts_and_penalty_match_a_numpy_implementation():
    rng = np.random.default_rng(1)
    inner = ked.PrunableEmbedding([6, 9], 5)
    layer = ked.TwinsMaskLayer(inner, min_dim=1, size_weight=2.0, size_target=0.3, penalty_sample=4096)
    ids = np.stack([rng.integers(0, 6, 40), rng.integers(0, 9, 40)], 1)
    layer(ids)
    # scramble the twins so sizes differ between values
    for v in [w for b in (layer.twins.high, layer.twins.low) for w in b]:
        v.assign(rng.normal(size=v.shape).astype(np.float32) * 0.3)
    # counts are taken in the backward pass of a training step (a call outside one counts nothing)
    layer(ids, training=True)
    assert float(np.sum(layer.counter.counts.numpy())) == 0.0
    inp = keras.Input(shape=(2,), dtype="int32")
    step = keras.Model(inp, keras.layers.Lambda(lambda t: tf.reduce_sum(t, axis=[1, 2]))(layer(inp)))
    step.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")  # lr 0: the weights do not move
    step.train_on_batch(ids, np.zeros(40, "float32"))
    out = layer(ids, training=True)
    rows = np.stack([ids[:, 0], ids[:, 1] + 6], 1)
    np.testing.assert_array_equal(layer.counter.counts.numpy(), np.bincount(rows.ravel(), minlength=15))
    np.testing.assert_array_equal(
        layer.counter.field_max.numpy(), [np.bincount(ids[:, 0]).max(), np.bincount(ids[:, 1]).max()]
    )
    np.testing.assert_array_equal(layer.counter.field_total.numpy(), [40, 40])
    z = _numpy_twins(layer, layer.counter.counts.numpy()[rows], np.broadcast_to([0, 1], rows.shape))
    k = np.argmax(z, -1) + layer.min_dim
    table = np.asarray(inner.embedding_variable)
    want = table[rows] * (np.arange(5) < k[..., None])
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-6, atol=1e-7)
    # the penalty, over the whole vocabulary (penalty_sample > rows)
    all_rows = np.arange(15)
    zv = _numpy_twins(layer, layer.counter.counts.numpy(), (all_rows >= 6).astype(int))
    frac = (np.argmax(zv, -1) + 1).mean() / 5
    np.testing.assert_allclose(float(layer.size_penalty()), 2.0 * max(0.0, frac - 0.3), rtol=1e-5, atol=1e-7)
    # the report agrees with the forward pass
    sizes = np.concatenate(layer.dimension_mask().value_sizes)
    np.testing.assert_array_equal(sizes, np.argmax(zv, -1) + 1)


def test_given_frequencies_are_not_counted_and_bad_arguments_fail_clearly():
    freq = [np.array([5, 0, 1]), np.array([2, 2])]
    layer = ked.TwinsMaskLayer(keras.layers.Embedding(5, 4), field_vocab_sizes=[3, 2], frequencies=freq)
    assert not layer.count_frequencies
    layer(np.array([[0, 3]]), training=True)
    np.testing.assert_array_equal(layer.counter.counts.numpy(), [5, 0, 1, 2, 2])
    np.testing.assert_array_equal(layer.counter.field_max.numpy(), [5, 2])
    with pytest.raises(tf.errors.InvalidArgumentError, match="offset"):
        layer(np.array([[0, 1]]))  # column 1 holds field 1's ids, 3..4
    with pytest.raises(ValueError, match="add up"):
        ked.TwinsMaskLayer(keras.layers.Embedding(5, 4), field_vocab_sizes=[3, 3])
    with pytest.raises(ValueError, match="frequencies"):
        ked.TwinsMaskLayer(keras.layers.Embedding(5, 4), frequencies=[1, 2])
    with pytest.raises(ValueError, match="min_dim"):
        ked.TwinsMaskLayer(keras.layers.Embedding(5, 4), min_dim=5)
    with pytest.raises(TypeError, match="embedding"):
        ked.TwinsMaskLayer(keras.layers.Dense(4))
    with pytest.raises(TypeError, match="searches its own"):
        ked.TwinsMaskLayer(ked.HardMaskEmbedding(5, 4))
    with pytest.raises(ValueError, match="temperature"):
        ked.TwinsMaskLayer(keras.layers.Embedding(5, 4), temperature=0.0)
    with pytest.raises(ValueError, match="per-value sizes"):
        layer.set_dimension_mask(np.ones((2, 4)))
    with pytest.raises(ValueError, match="twins_epochs"):
        ked.TwinsMaskSearch(0.2, twins_epochs=-1)
    with pytest.raises(ValueError, match="budget"):
        ked.TwinsMaskSearch(1.5)


def test_frequency_groups_by_hand():
    # field 0 counts [5, 0, 5, 1], field 1 counts [0, 0, 2]: the same count in two fields is two groups
    freq = [np.array([5, 0, 5, 1]), np.array([0, 0, 2])]
    layer = ked.TwinsMaskLayer(keras.layers.Embedding(7, 4), field_vocab_sizes=[4, 3], frequencies=freq)
    layer.build()
    fields, counts, inverse, mult = layer.counter.groups()
    np.testing.assert_array_equal(fields, [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(counts, [0, 1, 5, 0, 2])
    np.testing.assert_array_equal(inverse, [2, 0, 2, 1, 3, 3, 4])
    np.testing.assert_array_equal(mult, [1, 1, 2, 2, 1])
    assert fields.dtype == np.int32 and counts.dtype == np.float32


def test_wrapped_prunable_embedding_is_found_through_its_wrapper_only():
    inner = ked.PrunableEmbedding([4, 3], 4, name="inner")
    ids = keras.Input(shape=(2,), dtype="int32")
    out = ked.TwinsMaskLayer(inner, name="twins")(ids)
    model = keras.Model(ids, keras.layers.Dense(1)(keras.layers.Flatten()(out)))
    assert [l.name for l in ked.find_searchable_layers(model)] == ["twins"]
    model.compile(loss="mse")
    with pytest.raises(ValueError, match=r"found TwinsMaskLayer layers: use TwinsMaskSearch, or build the "
                                         r"embeddings with PrunableEmbedding"):
        model.fit(np.zeros((8, 2), "int32"), np.zeros(8), verbose=0, callbacks=[ked.SingleShotPruner(0.5)])


def test_twins_epochs_keep_the_table_fixed_while_the_twins_learn(small_data):
    d = small_data
    model = ked.models.compile_ctr(ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=4, hidden=(8,), embedding="plain"))
    model = ked.models.compile_ctr(ked.add_twins(model, field_vocab_sizes=d.vocab_sizes))
    layer = ked.find_searchable_layers(model)[0]
    table0 = np.asarray(layer.embedding_variable).copy()
    twins0 = layer.twins.high[3].numpy().copy()
    seen = {}

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen[epoch] = (np.asarray(layer.embedding_variable).copy(), layer.twins.high[3].numpy().copy())

    x, y = d.train
    search = ked.TwinsMaskSearch(0.5, twins_epochs=1, verbose=0)
    model.fit(d.inputs(x[:4096]), y[:4096], batch_size=512, epochs=2, verbose=0, callbacks=[Record(), search])
    np.testing.assert_array_equal(seen[0][0], table0)  # epoch 0: twins only
    assert not np.array_equal(seen[0][1], twins0)
    assert not np.array_equal(seen[1][0], table0)  # epoch 1: jointly
    assert search.phase == "done" and layer.frozen


# --------------------------------------------------------- a trained search
@pytest.fixture(scope="module")
def twins_trained(tmp_path_factory):
    keras.utils.set_random_seed(0)
    d = ked.data.make_synthetic_ctr(num_rows=30_000, num_fields=6, max_vocab=2000, seed=4)

    def emb(v, dim, names):
        return ked.TwinsMaskLayer(ked.PrunableEmbedding(v, dim, field_names=names), name="embedding")

    model = ked.models.compile_ctr(ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=8, hidden=(32,), embedding=emb))
    path = str(tmp_path_factory.mktemp("twins") / "export")
    tb = str(tmp_path_factory.mktemp("tb"))
    search = ked.TwinsMaskSearch(0.2, verbose=0, log_dir=tb)
    sample = d.inputs(d.test[0][:1000])
    x, y = d.train
    exporter = ked.DimensionExporter(path, sample_inputs=sample, verbose=0)
    model.fit(d.inputs(x), y, batch_size=512, epochs=2, verbose=0, callbacks=[search, exporter])
    return d, model, search, exporter.result.path, sample, tb


def test_budget_is_hit_within_one_percent(twins_trained):
    _, model, search, _, _, _ = twins_trained
    r = search.result
    layer = ked.find_searchable_layers(model)[0]
    kept = int(np.concatenate(layer.dimension_mask().value_sizes).sum())
    target = math.floor(0.2 * r.params_full)
    assert kept == r.params_after <= target
    assert kept >= 0.99 * target
    trainable = {id(v) for v in layer.trainable_weights}
    assert layer.frozen and not any(id(v) in trainable for b in (layer.twins.high, layer.twins.low) for v in b)


def test_frequent_values_get_larger_sizes(twins_trained):
    d, model, _, _, _, _ = twins_trained
    m = ked.find_searchable_layers(model)[0].dimension_mask()
    f = int(np.argmax(d.vocab_sizes))
    counts, sizes = d.value_counts[f], m.value_sizes[f]
    assert sizes[counts >= np.percentile(counts, 90)].mean() > sizes[counts <= np.percentile(counts, 50)].mean()


def test_export_serves_the_trained_predictions_in_ragged_bytes(twins_trained):
    d, model, search, path, sample, _ = twins_trained
    report = check_in_fresh_process(path, sample, {"ctr": model.predict(sample, batch_size=1000, verbose=0)})
    assert report["tf2_max_abs_diff"] <= 1e-5 and report["tf1_max_abs_diff"] <= 1e-5
    stored = saved_variable_bytes(path)
    emb = sum(b for k, b in stored.items() if k.startswith(TABLES_ATTRIBUTE + "/"))
    assert emb <= 1.10 * search.result.params_after * 4
    layer = ked.find_searchable_layers(model)[0]
    mask = layer.dimension_mask()
    assert emb == reference.split_export_bytes(np.asarray(layer.embedding_variable), list(mask.value_sizes),
                                               mask.output_dim)[0]
    # the twins are not shipped: every stored variable is a compact table or a dense layer's
    assert not any("w1" in k or "counts" in k for k in stored)


@pytest.mark.parametrize("layout,jit,read", [("runs", False, "prefix"), ("planes", False, "ranged"),
                                             ("offsets", True, "prefix"), ("sparse", True, "prefix"),
                                             ("head", False, "prefix"), ("head", False, "ranged")])
def test_every_layout_and_the_xla_lookup_serve_the_trained_predictions(twins_trained, tmp_path, layout, jit, read):
    d, model, search, _, sample, _ = twins_trained
    path = str(tmp_path / "export")
    r = ked.export_compact(model, path, sample_inputs=sample, verbose=0, value_layout=layout, jit_compile=jit,
                           value_read=read, value_dense_fields=False)  # every field in the layout
    assert r.layouts == {"embedding": layout} and r.max_abs_diff <= 1e-5  # verified in process
    layer = ked.find_searchable_layers(model)[0]
    packed = ragged.pack(
        np.asarray(layer.embedding_variable), list(layer.dimension_mask().value_sizes),
        field_sizes=d.vocab_sizes, layout=layout,
    )
    assert r.embedding_bytes == packed.nbytes
    if jit or read == "ranged":  # both loaders, in a process without keras_embdim
        report = check_in_fresh_process(r.path, sample, {"ctr": model.predict(sample, batch_size=1000, verbose=0)})
        assert report["tf2_max_abs_diff"] <= 1e-5 and report["tf1_max_abs_diff"] <= 1e-5


def test_auto_layout_leaves_the_head_out_under_xla(twins_trained, tmp_path):
    _, model, _, _, sample, _ = twins_trained
    mask = ked.find_searchable_layers(model)[0].dimension_mask()
    sizes = np.concatenate(mask.value_sizes)
    assert ragged.choose_layout(sizes, mask.output_dim) == "head"  # the frequent values keep the most
    r = ked.export_compact(model, str(tmp_path / "e"), sample_inputs=sample, verbose=0, jit_compile=True)
    table = np.asarray(ked.find_searchable_layers(model)[0].embedding_variable)
    nbytes, rest = reference.split_export_bytes(table, list(mask.value_sizes), mask.output_dim, static=True)
    assert r.layouts["embedding"].split("+")[-1] == rest != "head" and r.embedding_bytes == nbytes
    assert r.max_abs_diff <= 1e-5


def test_bad_value_layout_is_refused_before_anything_is_written(twins_trained, tmp_path):
    _, model, _, _, sample, _ = twins_trained
    with pytest.raises(ValueError, match="`value_layout` must be 'auto' or one of"):
        ked.export_compact(model, str(tmp_path / "e"), sample_inputs=sample, value_layout="buckets")
    with pytest.raises(ValueError, match="`value_layout` must be 'auto' or one of"):
        ked.DimensionExporter(str(tmp_path / "e"), value_layout="buckets")
    # the head layout splits requests at run time: not under XLA, and "auto" leaves it out there
    with pytest.raises(ValueError, match="value_layout='head' splits each request at run time"):
        ked.export_compact(model, str(tmp_path / "e"), sample_inputs=sample, value_layout="head", jit_compile=True)
    with pytest.raises(ValueError, match="value_layout='head' splits each request at run time"):
        ked.DimensionExporter(str(tmp_path / "e"), value_layout="head", jit_compile=True)
    with pytest.raises(ValueError, match=r"`value_read` must be one of \('auto', 'prefix', 'ranged'\); received value_read='rows'"):
        ked.export_compact(model, str(tmp_path / "e"), sample_inputs=sample, value_read="rows")
    with pytest.raises(ValueError, match="`value_read` must be one of"):
        ked.DimensionExporter(str(tmp_path / "e"), value_read="rows")
    with pytest.raises(ValueError, match="`value_dense_fields` must be True or False; received value_dense_fields='no'"):
        ked.export_compact(model, str(tmp_path / "e"), sample_inputs=sample, value_dense_fields="no")
    with pytest.raises(ValueError, match="`value_dense_fields` must be True or False"):
        ked.DimensionExporter(str(tmp_path / "e"), value_dense_fields=None)
    # `fold="no"` was truthy: it folded where the user asked for padded outputs
    with pytest.raises(ValueError, match="`fold` must be True or False; received fold='no'"):
        ked.export_compact(model, str(tmp_path / "e"), sample_inputs=sample, fold="no")
    with pytest.raises(ValueError, match="`fold` must be True or False; received fold=0"):
        ked.DimensionExporter(str(tmp_path / "e"), fold=0)
    assert not (tmp_path / "e").exists()


def test_keras_round_trip_keeps_sizes_and_predictions(twins_trained, tmp_path):
    _, model, _, _, sample, _ = twins_trained
    path = str(tmp_path / "twins.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    a, b = (ked.find_searchable_layers(m)[0] for m in (model, loaded))
    assert b.frozen and isinstance(b, ked.TwinsMaskLayer)
    for s1, s2 in zip(a.dimension_mask().value_sizes, b.dimension_mask().value_sizes):
        np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(model.predict(sample, verbose=0), loaded.predict(sample, verbose=0))


def test_keras_round_trip_mid_search(small_data, tmp_path):
    d = small_data
    emb = lambda v, dim, n: ked.TwinsMaskLayer(ked.PrunableEmbedding(v, dim, field_names=n), name="embedding")  # noqa: E731
    model = ked.models.compile_ctr(ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=4, hidden=(8,), embedding=emb))
    x, y = d.train
    model.fit(d.inputs(x[:2048]), y[:2048], batch_size=512, epochs=1, verbose=0)
    path = str(tmp_path / "mid.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    a, b = (ked.find_searchable_layers(m)[0] for m in (model, loaded))
    assert not b.frozen
    np.testing.assert_array_equal(a.counter.counts.numpy(), b.counter.counts.numpy())
    np.testing.assert_array_equal(np.concatenate(a.dimension_mask().value_sizes), np.concatenate(b.dimension_mask().value_sizes))
    sample = d.inputs(d.test[0][:300])
    np.testing.assert_array_equal(model.predict(sample, verbose=0), loaded.predict(sample, verbose=0))


def test_reports_plot_and_tensorboard_histograms(twins_trained, tmp_path):
    d, model, _, _, _, tb = twins_trained
    rec = ked.dimension_summary(model)["layers"]["embedding"][0]
    assert sum(rec["size_histogram"]) == rec["vocab"] and "mean_value_dims" in rec
    png = ked.plots.plot_size_vs_frequency(model, d.value_counts, tmp_path / "sizes.png")
    with open(png, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(tb, size_guidance={"tensors": 0})
    acc.Reload()
    assert any(t.startswith("value_sizes/embedding/") for t in acc.Tags()["tensors"])
    # the size penalty of the search epoch, in TensorBoard and in the History
    assert "embdim/penalty/embedding" in acc.Tags()["tensors"]


def test_budget_below_min_dim_is_refused_before_training(small_data):
    d = small_data
    emb = lambda v, dim, n: ked.TwinsMaskLayer(ked.PrunableEmbedding(v, dim, field_names=n), min_dim=2, name="embedding")  # noqa: E731
    model = ked.models.compile_ctr(ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=4, hidden=(8,), embedding=emb))
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match="min_dim alone"):
        model.fit(d.inputs(d.train[0][:512]), d.train[1][:512], verbose=0, callbacks=[ked.TwinsMaskSearch(0.25)])
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------- warm start, real data
def test_warm_start_on_frappe_keeps_auc_at_budget_04(data_root):
    keras.utils.set_random_seed(0)
    d = ked.data.load_frappe(data_root, seed=0)
    train = d.dataset("train", batch_size=1024, seed=0)
    xt, yt = d.test
    plain = ked.models.compile_ctr(ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding="plain"))
    plain.fit(train, epochs=3, verbose=0)
    p_plain = plain.predict(d.inputs(xt), batch_size=8192, verbose=0)
    masked = ked.add_twins(plain, field_vocab_sizes=d.vocab_sizes, field_names=d.field_names)
    # the clone predicts what the trained model predicts (every value starts at full size)
    np.testing.assert_allclose(masked.predict(d.inputs(xt), batch_size=8192, verbose=0), p_plain, atol=1e-6)
    ked.models.compile_ctr(masked)
    search = ked.TwinsMaskSearch(0.4, twins_epochs=1, verbose=0)
    masked.fit(train, epochs=3, verbose=0, callbacks=[search])
    auc_plain = roc_auc(yt, p_plain)
    auc_masked = roc_auc(yt, masked.predict(d.inputs(xt), batch_size=8192, verbose=0))
    assert search.result.kept_fraction <= 0.4 and search.result.kept_fraction >= 0.396
    assert auc_masked >= auc_plain - 0.005, (auc_plain, auc_masked)
    # the method's premise on real data: frequent values get larger sizes
    m = ked.find_searchable_layers(masked)[0].dimension_mask()
    for f in (d.field_names.index("user"), d.field_names.index("item")):
        counts, sizes = d.value_counts[f], m.value_sizes[f]
        assert sizes[counts >= np.median(counts)].mean() > sizes[counts < np.median(counts)].mean()
