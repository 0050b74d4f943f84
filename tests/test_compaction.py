import numpy as np
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from keras_embdim import compaction
from keras_embdim.mask import DimensionMask


def test_placement_hand_example():
    assert compaction.placement(np.array([0, 1, 1, 0, 1], bool)).tolist() == [3, 0, 1, 3, 2]
    assert compaction.placement(np.ones(3, bool)).tolist() == [0, 1, 2]
    assert compaction.placement(np.zeros(2, bool)).tolist() == [0, 0]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=1, max_size=5), st.integers(1, 8), st.integers(0, 10_000))
def test_compact_lookup_equals_masked_lookup(vocab, D, seed):
    rng = np.random.default_rng(seed)
    F = len(vocab)
    table = rng.standard_normal((sum(vocab), D)).astype(np.float32)
    keep = rng.random((F, D)) < 0.5
    mask = DimensionMask(vocab, keep)
    ids = np.stack([rng.integers(0, n, size=7) for n in vocab], axis=1)
    tables = [tf.Variable(t) if t.shape[1] else None for t in compaction.compact_field_tables(table, mask)]
    place = [compaction.placement(keep[f]) for f in range(F)]
    got = compaction.compact_lookup(tables, place, tf.constant(ids), multi_field=True, output_dim=D).numpy()
    want = compaction.masked_lookup_reference(table, mask, ids, multi_field=True)
    np.testing.assert_array_equal(got, want)
    # bytes: exactly the kept params
    assert sum(int(np.prod(t.shape)) for t in tables if t is not None) == mask.kept_params


def test_single_field_any_id_shape():
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    mask = DimensionMask([4], np.array([[True, False, True]]))
    tables = [tf.Variable(t) for t in compaction.compact_field_tables(table, mask)]
    ids = np.array([[0, 3], [2, 2]])
    got = compaction.compact_lookup(tables, [compaction.placement(mask.keep[0])], tf.constant(ids),
                                    multi_field=False, output_dim=3).numpy()
    assert got.shape == (2, 2, 3)
    assert got[0, 1].tolist() == [9.0, 0.0, 11.0]


def test_mask_param_accounting():
    m = DimensionMask([10, 100], np.array([[1, 1, 0], [1, 0, 0]]))
    assert m.kept_dims.tolist() == [2, 1]
    assert m.kept_params == 10 * 2 + 100
    assert m.full_params == 330
    recs = m.to_records()
    assert recs[1]["params_after"] == 100 and recs[0]["kept_columns"] == [0, 1]


@settings(max_examples=10, deadline=None)
@given(
    st.lists(st.integers(1, 40), min_size=1, max_size=4),
    st.integers(1, 8),
    st.booleans(),
    st.sampled_from(["float32", "float16", "int8"]),
    st.integers(0, 10_000),
)
def test_export_equals_trained_and_report_equals_bytes(vocab, D, per_value, table_dtype, seed):
    """Random vocabularies, widths, masks or per-value sizes, ids and storage: the export serves the model."""
    import tempfile

    import keras_embdim as ked
    from keras_embdim._compat import keras

    rng = np.random.default_rng(seed)
    F = len(vocab)
    ids_in = keras.Input(shape=(F,), dtype="int32", name="ids")
    layer = ked.PrunableEmbedding(vocab, D, name="emb")
    out = keras.layers.Dense(1, name="out")(keras.layers.Flatten()(layer(ids_in)))
    model = keras.Model(ids_in, out)
    layer.embedding_variable.assign(rng.standard_normal((sum(vocab), D)).astype(np.float32))
    if per_value:
        layer.set_value_sizes(rng.integers(0, D + 1, size=sum(vocab)))
    else:
        layer.set_dimension_mask(rng.random((F, D)) < 0.6)
    ids = np.stack([rng.integers(0, n, size=64) for n in vocab], axis=1).astype(np.int32)
    with tempfile.TemporaryDirectory() as tmp:
        r = ked.export_compact(model, f"{tmp}/e", sample_inputs=ids, verbose=0, table_dtype=table_dtype)
        served = tf.saved_model.load(f"{tmp}/e").signatures["serving_default"](ids=tf.constant(ids))
    expected = model.predict(ids, verbose=0)
    tol = 1e-5 + (r.precision_max_abs_diff or 0.0)
    np.testing.assert_allclose(list(served.values())[0].numpy(), expected, atol=tol)
    mask = layer.dimension_mask()
    summary = ked.dimension_summary(model)
    assert summary["params_after"] == mask.kept_params == r.kept_params
    if table_dtype == "float32" and not per_value:  # per field: the bytes are the kept params, exactly
        assert r.embedding_bytes == 4 * summary["params_after"]
    elif table_dtype == "float32":  # per value: the kept values, the zero slot and the layout's index
        assert r.embedding_bytes >= 4 * (summary["params_after"] + 1)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=1, max_size=5), st.integers(1, 8), st.floats(0.0, 1.0), st.integers(0, 10_000))
def test_field_serving_equals_masked_lookup(vocab, D, keep_p, seed):
    """The one-gather per-field serving lookup against the numpy reference (fields and layers may keep nothing)."""
    rng = np.random.default_rng(seed)
    F = len(vocab)
    table = rng.standard_normal((sum(vocab), D)).astype(np.float32)
    mask = DimensionMask(vocab, rng.random((F, D)) < keep_p)
    values = np.concatenate([t.reshape(-1) for t in compaction.compact_field_tables(table, mask)])
    serving = compaction.FieldServing(mask, values)
    assert serving.nbytes == 4 * mask.kept_params  # exactly the kept parameters
    ids = np.stack([rng.integers(0, n, size=(3, 4)) for n in vocab], axis=-1)
    got = serving.lookup(tf.constant(ids), multi_field=True, output_dim=D, dtype=tf.float32).numpy()
    np.testing.assert_array_equal(got, compaction.masked_lookup_reference(table, mask, ids, multi_field=True))
    one = DimensionMask(vocab[:1], mask.keep[:1])
    serving = compaction.FieldServing(one, compaction.compact_field_tables(table[: vocab[0]], one)[0].reshape(-1))
    flat = rng.integers(0, vocab[0], size=(2, 5))
    got = serving.lookup(tf.constant(flat), multi_field=False, output_dim=D, dtype=tf.float32).numpy()
    np.testing.assert_array_equal(got, compaction.masked_lookup_reference(table[: vocab[0]], one, flat, multi_field=False))
