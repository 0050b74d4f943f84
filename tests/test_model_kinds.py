"""Every layer and search works wherever a user has a model.

Subclassed models, nested models, one embedding layer shared by two inputs,
and sequence features (`[batch, seq]` ids, `mask_zero=True`, masked pooling).
Each is searched with each method and exported; the trained model, the export
and a second implementation (the same model built from plain
`keras.layers.Embedding` with the masked table copied in) must agree.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras_embdim as ked
from keras_embdim import _utils
from keras_embdim import keras

METHODS = ["sseds", "ham", "amtl", "pme"]
D = 8


def make_layer(method, vocab, name, mask_zero=False):
    if method == "ham":
        return ked.HardMaskEmbedding(vocab, D, mask_zero=mask_zero, name=name)
    if method == "amtl":
        return ked.TwinsMaskLayer(keras.layers.Embedding(vocab, D, mask_zero=mask_zero), name=name)
    return ked.PrunableEmbedding(vocab, D, mask_zero=mask_zero, name=name)


def make_search(method, budget=0.5):
    if method == "sseds":
        return ked.SingleShotPruner(budget, warmup_steps=8, scoring_steps=4, verbose=0)
    if method == "ham":
        return ked.HardMaskSearch(budget, verbose=0)
    if method == "amtl":
        return ked.TwinsMaskSearch(budget, verbose=0)
    return ked.PMEPruner(budget, verbose=0)


def effective_table(layer) -> np.ndarray:
    """The full table with every removed entry zeroed: what the layer really uses."""
    m = layer.dimension_mask()
    table = _utils.to_numpy(layer.embedding_variable)
    keep = np.repeat(m.keep, m.vocab_sizes, axis=0)
    if m.granularity == "value":
        sizes = np.concatenate([np.asarray(v) for v in m.value_sizes])
        keep = keep & (np.arange(table.shape[1])[None, :] < sizes[:, None])
    return table * keep


# ------------------------------------------------------------------ data
def sequence_data(n=2048, seq=6, items=40, users=20, seed=0):
    """History of up to `seq` items (0 = padding), a target item, a user; the label
    is 1 when the target is in the history (and a little user bias)."""
    rng = np.random.default_rng(seed)
    hist = rng.integers(1, items, (n, seq))
    lengths = rng.integers(1, seq + 1, n)
    hist[np.arange(seq)[None, :] >= lengths[:, None]] = 0
    target = np.where(rng.random(n) < 0.5, hist[np.arange(n), rng.integers(0, lengths)], rng.integers(1, items, n))
    user = rng.integers(0, users, n)
    y = ((target[:, None] == hist).any(1) ^ (rng.random(n) < 0.05 * (user % 3))).astype("float32")
    x = {"history": hist.astype("int32"), "target": target.astype("int32"), "user": user.astype("int32")}
    return x, y


def field_data(n=2048, vocab=(30, 20, 10), seed=0):
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.integers(0, v, n) for v in vocab], 1).astype("int32")
    y = ((ids[:, 0] % 2) ^ (ids[:, 1] % 3 == 0)).astype("float32")
    return ids, y


def fit(model, x, y, callbacks, epochs=3):
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    model.fit(x, y, batch_size=128, epochs=epochs, verbose=0, callbacks=callbacks, shuffle=False)


# ------------------------------------------------------- sequence + shared
def sequence_model(item_layer, user_layer, embedding_kind="ours"):
    """History (masked mean pooling) and target share one item embedding layer."""
    inputs = {
        "history": keras.Input(shape=(6,), dtype="int32", name="history"),
        "target": keras.Input(shape=(), dtype="int32", name="target"),
        "user": keras.Input(shape=(), dtype="int32", name="user"),
    }
    pooled = keras.layers.GlobalAveragePooling1D(name="pool")(item_layer(inputs["history"]))
    target = item_layer(inputs["target"])
    x = keras.layers.Concatenate()([pooled, target, pooled * target, user_layer(inputs["user"])])
    x = keras.layers.Dense(16, activation="relu", name="hidden")(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="out")(x))


def plain_twin(model, layers: dict):
    """The same architecture with plain `keras.layers.Embedding(mask_zero=...)` and
    the searched layers' masked tables: Keras' own semantics, a second implementation."""
    item, user = layers["item"], layers["user"]
    twin = sequence_model(
        keras.layers.Embedding(40, D, mask_zero=True, name="item_emb"),
        keras.layers.Embedding(20, D, name="user_emb"),
    )
    twin.get_layer("item_emb").set_weights([effective_table(item)])
    twin.get_layer("user_emb").set_weights([effective_table(user)])
    for name in ("hidden", "out"):
        twin.get_layer(name).set_weights(model.get_layer(name).get_weights())
    return twin


@pytest.mark.parametrize("method", METHODS)
def test_sequence_features_with_a_shared_masked_embedding(method, tmp_path):
    x, y = sequence_data()
    item = make_layer(method, 40, "item_emb", mask_zero=True)
    user = make_layer(method, 20, "user_emb")
    model = sequence_model(item, user)
    search = make_search(method)
    fit(model, x, y, [search])
    assert search.phase == "done"
    # one layer used by two inputs is one table, searched once
    assert [l.name for l in ked.find_searchable_layers(model)] == ["item_emb", "user_emb"]
    kept, full = sum(l.dimension_mask().kept_params for l in (item, user)), (40 + 20) * D
    assert kept <= 0.5 * full
    # mask_zero semantics are Keras': padding ids are left out of the mean
    sample = {k: v[:256] for k, v in x.items()}
    ours = model.predict(sample, verbose=0)
    twin = plain_twin(model, {"item": item, "user": user})
    np.testing.assert_allclose(ours, twin.predict(sample, verbose=0), atol=1e-5)
    mask = item.compute_mask(sample["history"])
    np.testing.assert_array_equal(_utils.to_numpy(mask), sample["history"] != 0)
    # and a padding-aware mean differs from an unmasked one on these inputs
    emb = _utils.to_numpy(item(sample["history"]))
    unmasked = emb.mean(1)
    masked = keras.layers.GlobalAveragePooling1D()(item(sample["history"]), mask=mask)
    assert np.abs(_utils.to_numpy(masked) - unmasked).max() > 1e-3
    # the export serves the same predictions, from compacted tables only
    result = ked.export_compact(model, tmp_path / "seq", sample_inputs=sample, verbose=0)
    assert result.max_abs_diff <= 1e-5
    assert result.kept_params == kept
    served = tf.saved_model.load(result.path).signatures["serving_default"](
        **{k: np.asarray(v) for k, v in sample.items()}
    )
    np.testing.assert_allclose(next(iter(served.values())).numpy(), ours, atol=1e-5)


# ---------------------------------------------------------- subclassed
class Ranker(keras.Model):
    def __init__(self, embedding, **kwargs):
        super().__init__(**kwargs)
        self.embedding = embedding
        self.flatten = keras.layers.Flatten()
        self.hidden = keras.layers.Dense(16, activation="relu")
        self.out = keras.layers.Dense(1, activation="sigmoid")

    def call(self, ids, training=None):
        return self.out(self.hidden(self.flatten(self.embedding(ids, training=training))))


def multi_field_layer(method, vocab, name):
    if method == "ham":
        return ked.HardMaskEmbedding(vocab, D, name=name)
    if method == "amtl":
        return ked.TwinsMaskLayer(ked.PrunableEmbedding(vocab, D), name=name)
    return ked.PrunableEmbedding(vocab, D, name=name)


@pytest.mark.parametrize("method", METHODS)
def test_subclassed_model_is_searched_and_exported(method, tmp_path):
    vocab = [30, 20, 10]
    ids, y = field_data(vocab=vocab)
    model = Ranker(multi_field_layer(method, vocab, "fields"))  # not built until fit
    search = make_search(method)
    fit(model, ids, y, [search])
    layer = ked.find_searchable_layers(model)[0]
    assert search.phase == "done" and layer.dimension_mask().kept_params <= 0.5 * sum(vocab) * D
    result = ked.export_compact(
        model, tmp_path / "sub", input_signature=tf.TensorSpec([None, 3], tf.int32, name="ids"),
        sample_inputs=ids[:256], verbose=0,
    )
    assert result.max_abs_diff <= 1e-5
    loaded = tf.saved_model.load(result.path)
    served = loaded.signatures["serving_default"](ids=ids[:256])
    np.testing.assert_allclose(next(iter(served.values())).numpy(), model.predict(ids[:256], verbose=0), atol=1e-5)
    # Keras' endpoint: the one tensor the model's call takes, as `input_signature` says, and its one output
    np.testing.assert_allclose(loaded.serve(ids[:256]).numpy(), model.predict(ids[:256], verbose=0), atol=1e-5)


# -------------------------------------------------------------- nested
@pytest.mark.parametrize("method", METHODS)
def test_nested_model_is_searched_and_exported(method, tmp_path):
    vocab = [30, 20, 10]
    ids, y = field_data(vocab=vocab)
    inner_in = keras.Input(shape=(3,), dtype="int32", name="ids")
    tower = keras.Model(
        inner_in,
        keras.layers.Dense(8, activation="relu")(keras.layers.Flatten()(multi_field_layer(method, vocab, "fields")(inner_in))),
        name="tower",
    )
    outer_in = keras.Input(shape=(3,), dtype="int32", name="ids")
    model = keras.Model(outer_in, keras.layers.Dense(1, activation="sigmoid")(tower(outer_in)), name="outer")
    search = make_search(method)
    fit(model, ids, y, [search])
    layers = ked.find_searchable_layers(model)
    assert [l.name for l in layers] == ["fields"] and search.phase == "done"
    report = ked.dimension_report(model)
    assert int(report["params_after"].sum()) == layers[0].dimension_mask().kept_params
    result = ked.export_compact(model, tmp_path / "nested", sample_inputs=ids[:256], verbose=0)
    assert result.max_abs_diff <= 1e-5 and result.kept_params == layers[0].dimension_mask().kept_params
    # the tower alone exports too (what a two-tower user ships)
    tower_result = ked.export_compact(tower, tmp_path / "tower", sample_inputs=ids[:256], verbose=0)
    assert tower_result.max_abs_diff <= 1e-5 and tower_result.embedding_bytes == result.embedding_bytes


# ------------------------------------------------ preprocessing in the model
def test_string_lookup_inside_the_model_is_exported_with_its_table(tmp_path):
    """A `StringLookup` in the model: the export carries its hash table and takes strings."""
    vocab = [f"city_{i}" for i in range(30)]
    rng = np.random.default_rng(0)
    cities = np.array(vocab + ["unknown"], dtype=object)[rng.integers(0, 31, 2048)]
    y = np.array([c.endswith(("1", "3", "5", "7", "9")) for c in cities], "float32")
    inp = keras.Input(shape=(), dtype="string", name="city")
    ids = keras.layers.StringLookup(vocabulary=vocab, name="lookup")(inp)  # 0 = out of vocabulary
    emb = ked.PrunableEmbedding(31, D, name="city_emb")(ids)
    model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(emb))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    pruner = ked.SingleShotPruner(0.5, warmup_steps=8, scoring_steps=4, verbose=0)
    model.fit(cities, y, batch_size=128, epochs=2, verbose=0, callbacks=[pruner])
    sample = {"city": np.array(["city_3", "city_28", "nowhere", "city_0"], dtype=object)}
    result = ked.export_compact(model, tmp_path / "lookup", sample_inputs=sample, verbose=0)
    assert result.max_abs_diff <= 1e-5 and result.embedding_bytes == 4 * result.kept_params + result.embedding_padding_bytes
    served = tf.saved_model.load(result.path).signatures["serving_default"](
        city=tf.constant(["city_3", "city_28", "nowhere", "city_0"])
    )
    np.testing.assert_allclose(
        next(iter(served.values())).numpy(), model.predict(tf.constant(sample["city"].astype(str)), verbose=0), atol=1e-5
    )
