"""A Dense after affine layers (BatchNormalization, Add, Average, Subtract, Rescaling, an
unmasked average over fields, arithmetic with constants written as ops; after a pooled history
too) folds (keras_embdim.export.fold._affine_fold): the layers between the searched outputs and
the Dense are probed as an affine map with a basis, and the Dense serves
`x_kept @ (L W) + (c W + b)`.

Models get random tables, masks and normalization statistics (folding is exact algebra, no
training needed); exports are compared with the Keras model value by value.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

import keras_embdim as ked
from keras_embdim import keras
from keras_embdim.export import TABLES_ATTRIBUTE, fold
from keras_embdim.serving import check_in_fresh_process

VOCAB = [7, 30, 120]
D = 6


def _fill(layer, seed, p=0.5):
    rng = np.random.default_rng(seed)
    layer.embedding_variable.assign(rng.standard_normal(tuple(layer.embedding_variable.shape)).astype(np.float32))
    layer.set_dimension_mask(rng.random((layer.num_fields, layer.output_dim)) < p)
    return int(layer.dimension_mask().kept_dims.sum())


def _stored(r) -> dict:
    """Shape of every stored variable that is not an embedding table, by its checkpoint key."""
    reader = tf.train.load_checkpoint(os.path.join(r.path, "variables", "variables"))
    return {k: tuple(s) for k, s in reader.get_variable_to_shape_map().items()
            if "VARIABLE_VALUE" in k and not k.startswith(TABLES_ATTRIBUTE)}


def _served(r, inputs):
    return tf.saved_model.load(r.path).signatures["serving_default"](**inputs)["ctr"].numpy()


def _randomize_batchnorm(layer, seed):
    rng = np.random.default_rng(seed)
    n = int(layer.gamma.shape[0])
    layer.set_weights([1 + 0.5 * rng.standard_normal(n), 0.3 * rng.standard_normal(n), rng.standard_normal(n),
                       0.5 + rng.random(n)])  # gamma, beta, moving mean, moving variance


def test_batch_normalization_over_the_concatenated_fields_folds_into_the_dense(tmp_path):
    """Fields and a dense feature, concatenated, batch-normalized, then the MLP: the first
    Dense is served from the kept values with its kernel rows scaled by the normalization and
    its bias moved (`[k + 2, 4]` rows, a folded bias); the normalization is not run; served ==
    trained in this process and in a fresh TensorFlow-only one (TF2 and TF1 loaders)."""
    ids = keras.Input((3,), dtype="int32", name="ids")
    price = keras.Input((2,), name="price")
    emb = ked.PrunableEmbedding(VOCAB, D, name="emb")
    x = keras.layers.Concatenate()([keras.layers.Flatten()(emb(ids)), price])
    norm = keras.layers.BatchNormalization(name="norm")
    h = keras.layers.Dense(4, activation="relu", name="hidden")(norm(x))
    model = keras.Model({"ids": ids, "price": price}, keras.layers.Dense(1, name="ctr")(h))
    k = _fill(emb, 1)
    _randomize_batchnorm(norm, 2)
    rng = np.random.default_rng(3)
    sample = {"ids": np.stack([rng.integers(0, v, 50) for v in VOCAB], 1).astype("int32"),
              "price": rng.standard_normal((50, 2)).astype("float32")}
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=sample, verbose=0)
    assert r.folds["emb"] == {"folded_into": ["hidden"], "padded": None, "id_check": "on_invalid_id", "rank_folded": {}}
    shapes = sorted(_stored(r).values())
    assert (k + 2, 4) in shapes and (3 * D + 2, 4) not in shapes and (3 * D + 2,) not in shapes  # no BN stats
    want = model.predict(sample, verbose=0)
    np.testing.assert_allclose(_served(r, sample), want, atol=1e-5)
    report = check_in_fresh_process(r.path, sample, {"ctr": want}, atol=1e-5)
    assert report["tf2_max_abs_diff"] <= 1e-5 and report["tf1_max_abs_diff"] <= 1e-5


@pytest.mark.parametrize("merge", ["add", "average", "subtract"])
def test_two_embeddings_of_an_item_merged_then_an_mlp(tmp_path, merge):
    """An item as the sum (mean, difference) of its id's and its category's searched
    embeddings, beside other fields, into the MLP: each layer's kept columns get the kernel
    rows of the merged column they land in (summed, halved, negated), served == trained."""
    item = keras.Input((), dtype="int32", name="item")
    cat = keras.Input((), dtype="int32", name="cat")
    ids = keras.Input((3,), dtype="int32", name="ids")
    item_emb = ked.PrunableEmbedding(40, D, name="item_emb")
    cat_emb = ked.HardMaskEmbedding(9, D, name="cat_emb")
    fields = ked.PrunableEmbedding(VOCAB, D, name="fields")
    merged = {"add": keras.layers.Add, "average": keras.layers.Average,
              "subtract": keras.layers.Subtract}[merge]()([item_emb(item), cat_emb(cat)])
    x = keras.layers.Concatenate()([merged, keras.layers.Flatten()(fields(ids))])
    h = keras.layers.Dense(4, activation="relu", name="hidden")(x)
    model = keras.Model({"item": item, "cat": cat, "ids": ids}, keras.layers.Dense(1, name="ctr")(h))
    k = _fill(item_emb, 4) + _fill(fields, 6)
    rng = np.random.default_rng(5)
    cat_emb.embedding_variable.assign(rng.standard_normal((9, D)).astype(np.float32))
    cat_emb.freeze(rng.random((1, D)) < 0.5)
    k += int(cat_emb.dimension_mask().kept_dims.sum())
    sample = {"item": rng.integers(0, 40, 50).astype("int32"), "cat": rng.integers(0, 9, 50).astype("int32"),
              "ids": np.stack([rng.integers(0, v, 50) for v in VOCAB], 1).astype("int32")}
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=sample, verbose=0)
    for name in ("item_emb", "cat_emb", "fields"):
        assert r.folds[name]["folded_into"] == ["hidden"] and r.folds[name]["padded"] is None
    assert (k, 4) in sorted(_stored(r).values())
    np.testing.assert_allclose(_served(r, sample), model.predict(sample, verbose=0), atol=1e-5)


def test_a_layer_that_is_not_affine_is_refused_by_the_check(tmp_path, monkeypatch):
    """Were a ReLU taken for affine, the probe's random combination would not match the map:
    the Dense is not folded (the report says why) and the export still serves the model."""
    ids = keras.Input((3,), dtype="int32", name="ids")
    emb = ked.PrunableEmbedding(VOCAB, D, name="emb")
    x = keras.layers.Activation("relu", name="relu")(keras.layers.Flatten()(emb(ids)))
    model = keras.Model(ids, keras.layers.Dense(1, name="ctr")(x))
    _fill(emb, 7)
    monkeypatch.setattr(fold, "AFFINE", fold.AFFINE + (keras.layers.Activation,))
    x_ = np.stack([np.random.default_rng(8).integers(0, v, 50) for v in VOCAB], 1).astype("int32")
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=x_, verbose=0)
    assert r.folds["emb"]["folded_into"] == []
    assert r.folds["emb"]["padded"] == "Dense 'ctr': the layers before it are not affine in its sources"
    np.testing.assert_allclose(_served(r, {"ids": x_}), model.predict(x_, verbose=0), atol=1e-5)


def _ops():
    """Arithmetic on symbolic tensors as a functional model records it: `keras.ops` (and operators)
    under Keras 3; `tf.*` (`TFOpLambda`) under Keras 2."""
    if ked.KERAS_3:
        return keras.ops.reshape, keras.ops.sum, keras.ops.mean
    return tf.reshape, tf.reduce_sum, tf.reduce_mean


@pytest.mark.parametrize("kind", ["scale_shift", "sum_over_fields", "mean_negated"])
def test_arithmetic_written_as_ops_folds_into_the_dense(tmp_path, kind):
    """`x * 0.5 + 1.0`, `ops.sum(x, axis=1)` (a bag of fields summed), `ops.mean(-x, axis=1)` on
    the searched output, before the Dense: affine in the kept values, the Dense folds (its kernel
    served as `[k, 2]` rows, never `[3 D, 2]` or `[D, 2]`); served == trained."""
    reshape, sum_, mean = _ops()
    ids = keras.Input((3,), dtype="int32", name="ids")
    emb = ked.PrunableEmbedding(VOCAB, D, name="emb")
    e = emb(ids)
    x = {"scale_shift": lambda: reshape(e * 0.5 + 1.0, (-1, 3 * D)), "sum_over_fields": lambda: sum_(e, axis=1),
         "mean_negated": lambda: mean(-e, axis=1)}[kind]()
    model = keras.Model(ids, keras.layers.Dense(2, name="ctr")(x))
    k = _fill(emb, 11)
    x_ = np.stack([np.random.default_rng(12).integers(0, v, 50) for v in VOCAB], 1).astype("int32")
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=x_, verbose=0)
    assert r.folds["emb"] == {"folded_into": ["ctr"], "padded": None, "id_check": "on_invalid_id", "rank_folded": {}}
    shapes = sorted(_stored(r).values())
    assert (k, 2) in shapes and (3 * D, 2) not in shapes and (D, 2) not in shapes, shapes
    np.testing.assert_allclose(_served(r, {"ids": x_}), model.predict(x_, verbose=0), atol=1e-5)


@pytest.mark.parametrize("kind", ["product", "minus_batch_sum"])
def test_arithmetic_that_is_not_affine_per_example_is_not_folded(tmp_path, kind):
    """`x * x` is not affine (the map's check refuses it); `x - sum(x over the batch)` is affine
    but mixes the examples of a batch, which a single basis run cannot tell (each example's
    row moves with the batch's sum alike): the basis is run again split in two and the fold
    refused. Each serves its padded output (the second for one batch only: its answer depends
    on how requests are batched, so the export's own check is left out)."""
    reshape, sum_, _ = _ops()
    ids = keras.Input((3,), dtype="int32", name="ids")
    emb = ked.PrunableEmbedding(VOCAB, D, name="emb")
    e = emb(ids)
    x = reshape(e * e if kind == "product" else e - sum_(e, axis=0), (-1, 3 * D))
    model = keras.Model(ids, keras.layers.Dense(2, name="ctr")(x))
    _fill(emb, 13)
    x_ = np.stack([np.random.default_rng(14).integers(0, v, 20) for v in VOCAB], 1).astype("int32")
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=x_, verbose=0, verify=kind == "product")
    why = "the layers before it are not affine in its sources" if kind == "product" else \
        "a call on its way mixes the examples of a batch"
    assert r.folds["emb"]["folded_into"] == [] and r.folds["emb"]["padded"] == f"Dense 'ctr': {why}"
    np.testing.assert_allclose(_served(r, {"ids": x_}), model.predict(x_, verbose=0), atol=1e-5)


@pytest.mark.parametrize("sizes", ["per_field", "per_value"])
def test_an_average_over_fields_folds_into_the_dense(tmp_path, sizes):
    """A multi-field layer's output averaged over its fields (`GlobalAveragePooling1D`, no mask:
    column d is the mean of the fields' column d) beside a single field, into the MLP: the
    average is a linear map of the kept values, so the Dense keeps one kernel row per kept value
    (each the mean's 1/F of its column's row) and the average is not run; served == trained."""
    ids = keras.Input((3,), dtype="int32", name="ids")
    item = keras.Input((), dtype="int32", name="item")
    fields = ked.PrunableEmbedding(VOCAB, D, name="fields")
    item_emb = ked.PrunableEmbedding(40, D, name="item_emb")
    x = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling1D(name="mean")(fields(ids)), item_emb(item)])
    h = keras.layers.Dense(4, activation="relu", name="hidden")(x)
    model = keras.Model({"ids": ids, "item": item}, keras.layers.Dense(1, name="ctr")(h))
    rng = np.random.default_rng(9)
    k = _fill(item_emb, 10)
    if sizes == "per_field":
        k += _fill(fields, 11, p=0.7)
    else:
        fields.embedding_variable.assign(rng.standard_normal((sum(VOCAB), D)).astype(np.float32))
        value_sizes = rng.integers(0, D - 1, sum(VOCAB))  # each field padded to its widest value only
        fields.set_value_sizes(value_sizes)
        k += sum(int(value_sizes[a:a + n].max()) for a, n in zip(np.cumsum([0, *VOCAB[:-1]]), VOCAB))
    sample = {"ids": np.stack([rng.integers(0, v, 50) for v in VOCAB], 1).astype("int32"),
              "item": rng.integers(0, 40, 50).astype("int32")}
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=sample, verbose=0)
    for name in ("fields", "item_emb"):
        assert r.folds[name]["folded_into"] == ["hidden"] and r.folds[name]["padded"] is None, r.folds
    shapes = sorted(_stored(r).values())
    assert k != 2 * D and (k, 4) in shapes and (2 * D, 4) not in shapes, (k, shapes)
    np.testing.assert_allclose(_served(r, sample), model.predict(sample, verbose=0), atol=1e-5)


def test_a_masked_average_over_fields_is_not_folded(tmp_path):
    """With `mask_zero=True` the average over fields divides by how many fields have a nonzero
    id: not a linear map of the values, so the layer serves its padded output (the report says
    the average pools over fields) and the export still serves the model."""
    ids = keras.Input((3,), dtype="int32", name="ids")
    fields = ked.PrunableEmbedding(VOCAB, D, mask_zero=True, name="fields")
    x = keras.layers.GlobalAveragePooling1D(name="mean")(fields(ids))
    model = keras.Model(ids, keras.layers.Dense(1, name="ctr")(keras.layers.Dense(4, name="hidden")(x)))
    _fill(fields, 12)
    x_ = np.stack([np.random.default_rng(13).integers(0, v, 50) for v in VOCAB], 1).astype("int32")
    x_[:10, 0] = 0  # some examples average fewer fields
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=x_, verbose=0)
    assert r.folds["fields"]["folded_into"] == []
    assert "'mean' (GlobalAveragePooling1D), which pools over fields" in r.folds["fields"]["padded"]
    np.testing.assert_allclose(_served(r, {"ids": x_}), model.predict(x_, verbose=0), atol=1e-5)


def test_an_average_of_many_kept_values_into_a_wide_dense_is_served_factorized(tmp_path):
    """24 kept values averaged into D = 6 columns before a Dense of 64 units: `(x L) W` takes
    24 x 6 + 6 x 64 multiply-adds per example where `x (L W)` takes 24 x 64, so the export
    stores L's rows (`[24, 6]`) and the layer's kernel (`[6, 64]`), never a `[24, 64]` one;
    served == trained, in a fresh TensorFlow-only process too (TF2 and TF1 loaders)."""
    ids = keras.Input((4,), dtype="int32", name="ids")
    vocab = [7, 30, 120, 9]
    fields = ked.PrunableEmbedding(vocab, D, name="fields")
    x = keras.layers.GlobalAveragePooling1D(name="mean")(fields(ids))
    h = keras.layers.Dense(64, activation="relu", name="hidden")(x)
    model = keras.Model(ids, keras.layers.Dense(1, name="ctr")(h))
    assert _fill(fields, 14, p=1.1) == 4 * D  # every column kept
    assert fold._factorized(4 * D, D, 64) and not fold._factorized(4 * D, D, 8)
    x_ = np.stack([np.random.default_rng(15).integers(0, v, 50) for v in vocab], 1).astype("int32")
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=x_, verbose=0)
    assert r.folds["fields"]["folded_into"] == ["hidden"] and r.folds["fields"]["padded"] is None
    shapes = sorted(_stored(r).values())
    assert (4 * D, D) in shapes and (D, 64) in shapes and (4 * D, 64) not in shapes, shapes
    want = model.predict(x_, verbose=0)
    np.testing.assert_allclose(_served(r, {"ids": x_}), want, atol=1e-5)
    report = check_in_fresh_process(r.path, {"ids": x_}, {"ctr": want}, atol=1e-5)
    assert report["tf2_max_abs_diff"] <= 1e-5 and report["tf1_max_abs_diff"] <= 1e-5


@pytest.mark.parametrize("pool", ["average", "max"])
def test_a_pooled_history_then_batch_normalization_folds_into_the_dense(tmp_path, pool):
    """A bag of ids (`mask_zero`, 0 pads) pooled over its positions beside the fields and a
    price, concatenated, batch-normalized, then the MLP (a usual CTR input layer): the pooling
    runs on the history's kept columns only (masked average or max) and the Dense after the
    normalization keeps one kernel row per kept entry (`[k_hist + k_fields + 2, 4]`), the
    normalization not run; served == trained (in a fresh TensorFlow-only process too, TF2 and
    TF1 loaders, for the average)."""
    hist = keras.Input((5,), dtype="int32", name="history")
    ids = keras.Input((3,), dtype="int32", name="ids")
    price = keras.Input((2,), name="price")
    seq = ked.PrunableEmbedding(50, D, mask_zero=True, name="seq")
    fields = ked.PrunableEmbedding(VOCAB, D, name="fields")
    pooling = keras.layers.GlobalAveragePooling1D if pool == "average" else keras.layers.GlobalMaxPooling1D
    x = keras.layers.Concatenate()([pooling(name="pool")(seq(hist)), keras.layers.Flatten()(fields(ids)), price])
    norm = keras.layers.BatchNormalization(name="norm")
    h = keras.layers.Dense(4, activation="relu", name="hidden")(norm(x))
    model = keras.Model({"history": hist, "ids": ids, "price": price}, keras.layers.Dense(1, name="ctr")(h))
    k = _fill(seq, 16) + _fill(fields, 17)
    _randomize_batchnorm(norm, 18)
    rng = np.random.default_rng(19)
    history = rng.integers(1, 50, (50, 5)).astype("int32")
    history[np.arange(5)[None, :] >= rng.integers(1, 6, 50)[:, None]] = 0  # 1 to 5 ids, then 0s
    sample = {"history": history, "ids": np.stack([rng.integers(0, v, 50) for v in VOCAB], 1).astype("int32"),
              "price": rng.standard_normal((50, 2)).astype("float32")}
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=sample, verbose=0)
    assert r.folds["seq"] == {"folded_into": ["pool", "hidden"], "padded": None,
            "id_check": "on_invalid_id", "rank_folded": {}}
    assert r.folds["fields"]["folded_into"] == ["hidden"] and r.folds["fields"]["padded"] is None
    shapes = sorted(_stored(r).values())
    assert (k + 2, 4) in shapes and (4 * D + 2, 4) not in shapes and (4 * D + 2,) not in shapes, (k, shapes)
    want = model.predict(sample, verbose=0)
    np.testing.assert_allclose(_served(r, sample), want, atol=1e-5)
    if pool == "average":
        report = check_in_fresh_process(r.path, sample, {"ctr": want}, atol=1e-5)
        assert report["tf2_max_abs_diff"] <= 1e-5 and report["tf1_max_abs_diff"] <= 1e-5
