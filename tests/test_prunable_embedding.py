
import numpy as np
import pytest
import tensorflow as tf

import keras_embdim as ked
from keras_embdim import keras


def test_drop_in_single_field_equals_keras_embedding():
    plain = keras.layers.Embedding(50, 8)
    ours = ked.PrunableEmbedding(50, 8)
    ids = np.random.default_rng(0).integers(0, 50, size=(4, 3))
    plain(ids)
    ours(ids)
    assert ours.weights[0].name.split("/")[-1].split(":")[0] == "embeddings"
    assert tuple(ours.embedding_variable.shape) == (50, 8)
    ours.set_weights(plain.get_weights())  # a plain table loads: the warm-start path
    np.testing.assert_array_equal(np.asarray(ours(ids)), np.asarray(plain(ids)))
    assert tuple(ours(ids).shape) == (4, 3, 8)


def test_multi_field_equals_per_field_tables():
    vocab = [5, 7, 3]
    layer = ked.PrunableEmbedding(vocab, 4)
    ids = np.array([[0, 6, 2], [4, 0, 1]])
    out = np.asarray(layer(ids))
    table = np.asarray(layer.embedding_variable)
    offs = [0, 5, 12]
    for f in range(3):
        np.testing.assert_array_equal(out[:, f], table[ids[:, f] + offs[f]])
    assert out.shape == (2, 3, 4)


def test_masked_dims_are_exactly_zero_and_get_zero_gradient():
    layer = ked.PrunableEmbedding([6, 9], 5)
    ids = np.array([[1, 2], [5, 8], [0, 0]])
    layer(ids)
    keep = np.array([[1, 0, 1, 0, 0], [0, 0, 0, 1, 1]], bool)
    layer.set_dimension_mask(keep)
    out = np.asarray(layer(ids))
    assert np.all(out[:, 0][:, ~keep[0]] == 0) and np.all(out[:, 1][:, ~keep[1]] == 0)
    assert np.all(out[:, 0][:, keep[0]] != 0)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(layer(ids)) + layer(ids))
    grad = tf.convert_to_tensor(tape.gradient(loss, ked._compat.tf_variable(layer.embedding_variable)))
    g = grad.numpy()
    assert np.all(g[:6][:, ~keep[0]] == 0) and np.all(g[6:][:, ~keep[1]] == 0)
    assert np.any(g[:6][:, keep[0]] != 0)
    # stored columns were zeroed when the mask was imposed
    t = np.asarray(layer.embedding_variable)
    assert np.all(t[:6][:, ~keep[0]] == 0) and np.all(t[6:][:, ~keep[1]] == 0)


def test_pruned_columns_stay_zero_under_adam_with_momentum(small_data):
    d = small_data
    model = ked.models.compile_ctr(ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=8, hidden=(16,)))
    x, y = d.train
    model.fit(d.inputs(x[:4096]), y[:4096], batch_size=512, epochs=1, verbose=0)  # momentum built up
    layer = ked.find_searchable_layers(model)[0]
    keep = np.zeros((d.num_fields, 8), bool)
    keep[:, :3] = True
    layer.set_dimension_mask(keep, optimizer=model.optimizer)
    model.fit(d.inputs(x[:4096]), y[:4096], batch_size=512, epochs=1, verbose=0)
    t = np.asarray(layer.embedding_variable)
    assert np.all(t[:, 3:] == 0)
    assert np.any(t[:, :3] != 0)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="input_dim"):
        ked.PrunableEmbedding(0, 4)
    with pytest.raises(ValueError, match="input_dim"):
        ked.PrunableEmbedding([3, -1], 4)
    with pytest.raises(ValueError, match="field_names"):
        ked.PrunableEmbedding([3, 4], 4, field_names=["a"])
    with pytest.raises(ValueError, match="output_dim"):
        ked.PrunableEmbedding(3, 0)


def test_ids_out_of_range_are_a_clear_error_not_another_fields_row():
    layer = ked.PrunableEmbedding([5, 7], 4, name="feat")
    with pytest.raises(tf.errors.InvalidArgumentError, match="feat"):
        layer(np.array([[5, 0]]))  # 5 would silently read field 1's row 0
    with pytest.raises(tf.errors.InvalidArgumentError, match=">= 0"):
        layer(np.array([[0, -1]]))
    single = ked.PrunableEmbedding(5, 4, name="single")
    with pytest.raises(tf.errors.InvalidArgumentError, match="single"):
        single(np.array([1, 5]))


def test_wrong_mask_shape_is_rejected():
    layer = ked.PrunableEmbedding([5, 7], 4)
    layer(np.array([[0, 0]]))
    with pytest.raises(ValueError, match="mask must have shape"):
        layer.set_dimension_mask(np.ones((3, 4)))
    before = layer.dimension_mask().keep.copy()
    with pytest.raises(ValueError, match=r"mask must hold only 0/1 or booleans; received \[0.5\]"):
        layer.set_dimension_mask(np.full((2, 4), 0.5))  # not "kept" because nonzero
    np.testing.assert_array_equal(layer.dimension_mask().keep, before)  # nothing changed
    layer.set_dimension_mask(np.array([[1, 0, 1, 0], [0, 0, 0, 1]]))  # 0/1 integers are a mask
    np.testing.assert_array_equal(layer.dimension_mask().keep, [[1, 0, 1, 0], [0, 0, 0, 1]])


def test_get_config_round_trip():
    layer = ked.PrunableEmbedding([5, 7], 4, field_names=["a", "b"], mask_zero=True, name="emb")
    cfg = layer.get_config()
    assert cfg["input_dim"] == [5, 7] and cfg["field_names"] == ["a", "b"]
    clone = ked.PrunableEmbedding.from_config(cfg)
    assert clone.field_vocab_sizes == (5, 7) and clone.mask_zero and clone.field_names == ("a", "b")
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(restored, ked.PrunableEmbedding)


def test_mask_zero_semantics_kept():
    layer = ked.PrunableEmbedding(10, 3, mask_zero=True)
    m = layer.compute_mask(np.array([[0, 2, 0]]))
    assert np.asarray(m).tolist() == [[False, True, False]]


@pytest.mark.parametrize("prune", [False, True])
def test_keras_file_round_trip_keeps_masks_and_predictions(tmp_path, small_data, prune):
    d = small_data
    model = ked.models.compile_ctr(ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=8, hidden=(16,)))
    x, y = d.train
    model.fit(d.inputs(x[:2048]), y[:2048], batch_size=512, epochs=1, verbose=0)
    layer = ked.find_searchable_layers(model)[0]
    if prune:
        keep = np.random.default_rng(0).random((d.num_fields, 8)) < 0.4
        keep[:, 0] = True
        layer.set_dimension_mask(keep)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    sample = d.inputs(d.test[0][:300])
    np.testing.assert_array_equal(model.predict(sample, verbose=0), loaded.predict(sample, verbose=0))
    l2 = ked.find_searchable_layers(loaded)[0]
    np.testing.assert_array_equal(l2.dimension_mask().keep, layer.dimension_mask().keep)
    assert isinstance(l2, ked.PrunableEmbedding)


def test_warm_start_from_plain_embedding_model(tmp_path, small_data):
    d = small_data
    plain = ked.models.compile_ctr(
        ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=8, hidden=(16,), embedding="plain")
    )
    x, y = d.train
    plain.fit(d.inputs(x[:2048]), y[:2048], batch_size=512, epochs=1, verbose=0)
    ours = ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=8, hidden=(16,))
    # layer by layer: the plain table has the same shape as the concatenated table
    for layer in ours.layers:
        if layer.weights:
            layer.set_weights(plain.get_layer(layer.name).get_weights())
    sample = d.inputs(d.test[0][:200])
    np.testing.assert_allclose(ours.predict(sample, verbose=0), plain.predict(sample, verbose=0), atol=1e-6)


def _single_field_model(layer_cls):
    inp = keras.Input((3,), dtype="int32", name="ids")
    x = layer_cls(40, 4, name="emb")(inp)
    out = keras.layers.Dense(1, name="head")(keras.layers.Flatten(name="flat")(x))
    return keras.Model(inp, out)


def test_make_searchable_warm_starts_a_trained_plain_model():
    plain = _single_field_model(keras.layers.Embedding)
    ids = np.random.default_rng(0).integers(0, 40, size=(16, 3)).astype("int32")
    ours = ked.make_searchable(plain)
    assert isinstance(ours.get_layer("emb"), ked.PrunableEmbedding)
    np.testing.assert_array_equal(ours.predict(ids, verbose=0), plain.predict(ids, verbose=0))
    assert ked.find_searchable_layers(ours)[0].dimension_mask().is_full
    with pytest.raises(ValueError, match="no keras.layers.Embedding"):
        ked.make_searchable(ours)


def test_found_in_nested_and_subclassed_models():
    class Tower(keras.Model):
        def __init__(self):
            super().__init__()
            self.emb = ked.PrunableEmbedding([4, 4], 3, name="inner")
            self.dense = keras.layers.Dense(1)

        def call(self, x):
            return self.dense(keras.layers.Flatten()(self.emb(x)))

    tower = Tower()
    tower(np.zeros((1, 2), "int32"))
    inp = keras.Input((2,), dtype="int32")
    outer = keras.Model(inp, tower(inp))
    found = ked.find_searchable_layers(outer)
    assert [l.name for l in found] == ["inner"]
    with pytest.raises(ValueError, match="no searchable layer named"):
        ked.find_searchable_layers(outer, ["nope"])
