"""Folding removed columns out of the served computation (keras_embdim.export.fold).

Each model gets random tables and masks (no training needed: folding is exact
algebra), is exported, and the export is compared with the Keras model value
by value; the report says what was folded and why not.
"""

import collections
import os

import numpy as np
import pytest
import tensorflow as tf

import keras_embdim as ked
from keras_embdim import keras
from keras_embdim.export import TABLES_ATTRIBUTE, saved_variable_bytes
from keras_embdim.serving import check_in_fresh_process

VOCAB = [7, 30, 120]
D = 6


def _mask(layer, seed, p=0.5):
    rng = np.random.default_rng(seed)
    layer.embedding_variable.assign(rng.standard_normal(tuple(layer.embedding_variable.shape)).astype(np.float32))
    if isinstance(layer, ked.HardMaskEmbedding):
        layer.freeze(rng.random((layer.num_fields, layer.output_dim)) < p)
    else:
        layer.set_dimension_mask(rng.random((layer.num_fields, layer.output_dim)) < p)


def _ids(n=50, seed=0, vocab=VOCAB):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, v, n) for v in vocab], 1).astype("int32")


def _served(r, inputs):
    fn = tf.saved_model.load(r.path).signatures["serving_default"]
    return {k: v.numpy() for k, v in fn(**inputs).items()}


def _kernel_rows_stored(r):
    """Row counts of every stored 2-D variable that is not an embedding table."""
    reader = tf.train.load_checkpoint(os.path.join(r.path, "variables", "variables"))
    return sorted(tuple(s) for k, s in reader.get_variable_to_shape_map().items()
                  if "VARIABLE_VALUE" in k and len(s) == 2 and not k.startswith(TABLES_ATTRIBUTE))


def test_mlp_folds_and_ships_only_the_kept_kernel_rows(tmp_path):
    ids = keras.Input((3,), dtype="int32", name="ids")
    emb = ked.PrunableEmbedding(VOCAB, D, name="emb")
    h = keras.layers.Dense(5, activation="relu", name="hidden")(keras.layers.Flatten()(emb(ids)))
    model = keras.Model(ids, keras.layers.Dense(1, activation="sigmoid", name="ctr")(h))
    _mask(emb, 1)
    k = int(emb.dimension_mask().kept_dims.sum())
    x = _ids()
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=x, verbose=0)
    assert r.folds == {"emb": {"folded_into": ["hidden"], "padded": None,
            "id_check": "on_invalid_id", "rank_folded": {}}}
    np.testing.assert_allclose(_served(r, {"ids": x})["ctr"], model.predict(x, verbose=0), atol=1e-6)
    # the 18 x 5 kernel is not shipped, only its k kept rows
    assert _kernel_rows_stored(r) == sorted([(k, 5), (5, 1)])
    assert r.bytes["other_variables"] == 4 * (k * 5 + 5 + 5 + 1)
    # fold=False: the same predictions from the padded lookup and the whole kernel
    p = ked.export_compact(model, tmp_path / "p", sample_inputs=x, verbose=0, fold=False)
    assert p.folds["emb"]["padded"] == "folding is off (fold=False)"
    assert _kernel_rows_stored(p) == sorted([(3 * D, 5), (5, 1)])
    np.testing.assert_allclose(_served(p, {"ids": x})["ctr"], _served(r, {"ids": x})["ctr"], atol=1e-6)


def _fields_price_item_model(dropout: bool = False, activation=None):
    """`(model, fields layer, item layer)`: a multi-field and a one-field searched layer and a
    2-wide dense feature, concatenated into one Dense "head" of 3 units."""
    ids = keras.Input((3,), dtype="int32", name="ids")
    item = keras.Input((), dtype="int32", name="item")
    price = keras.Input((2,), name="price")
    a = ked.PrunableEmbedding(VOCAB, D, name="fields")
    b = ked.HardMaskEmbedding(40, 4, name="item_emb")
    x = keras.layers.Concatenate(name="cat")([keras.layers.Flatten()(a(ids)), price, b(item)])
    x = keras.layers.Dropout(0.3)(x) if dropout else x
    out = keras.layers.Dense(3, activation=activation, name="head")(x)
    return keras.Model({"ids": ids, "item": item, "price": price}, out), a, b


def _fields_price_item_sample(rng) -> dict:
    return {"ids": _ids(), "item": rng.integers(0, 40, 50).astype("int32"),
            "price": rng.standard_normal((50, 2)).astype("float32")}


def test_two_searched_layers_and_a_dense_feature_into_one_dense(tmp_path):
    model, a, b = _fields_price_item_model(dropout=True)
    _mask(a, 2)
    _mask(b, 3)
    sample = _fields_price_item_sample(np.random.default_rng(0))
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=sample, verbose=0)
    assert r.folds["fields"]["folded_into"] == ["head"] and r.folds["item_emb"]["folded_into"] == ["head"]
    k = int(a.dimension_mask().kept_dims.sum()) + int(b.dimension_mask().kept_dims.sum())
    assert _kernel_rows_stored(r) == [(k + 2, 3)]  # kept columns of both layers and the 2 dense features
    np.testing.assert_allclose(_served(r, sample)["head"], model.predict(sample, verbose=0), atol=1e-5)


def test_a_lookup_served_by_parts_multiplies_each_part_by_its_own_kernel_rows(tmp_path):
    """A per-value layer with a field stored whole beside a packed one (`SplitLookup`) feeds the
    Dense part by part: each part's folded values times its own kernel rows, the other sources
    (a dense feature, another searched layer) concatenated as one, and the sum equals the Keras
    model's Dense, ReLU included (TF2 and TF1 loaders)."""
    model, a, b = _fields_price_item_model(activation="relu")
    rng = np.random.default_rng(7)
    a.embedding_variable.assign(rng.standard_normal((sum(VOCAB), D)).astype(np.float32))
    # field 0: every value keeps 4 columns (stored whole); fields 1 and 2: spread sizes (packed)
    a.set_value_sizes(np.concatenate([np.full(VOCAB[0], 4), rng.integers(0, D + 1, VOCAB[1] + VOCAB[2])]))
    _mask(b, 3)
    sample = _fields_price_item_sample(rng)
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=sample, verbose=0)
    assert r.dense_fields == {"fields": [a.field_names[0]]} and r.layouts["fields"].startswith("field+")
    assert r.folds["fields"]["folded_into"] == ["head"] == r.folds["item_emb"]["folded_into"]
    k_item = int(b.dimension_mask().kept_dims.sum())
    # the price and the item's kept columns share a kernel; the whole field's 4 and the packed fields'
    # 2 x D (padded to their widest size, D) have one each
    assert _kernel_rows_stored(r) == sorted([(2 + k_item, 3), (4, 3), (2 * D, 3)])
    want = model.predict(sample, verbose=0)
    np.testing.assert_allclose(_served(r, sample)["head"], want, atol=1e-5)
    report = check_in_fresh_process(r.path, sample, {"head": want}, atol=1e-5)
    assert report["tf2_max_abs_diff"] <= 1e-5 and report["tf1_max_abs_diff"] <= 1e-5
    # one matmul per kernel, none of the whole [batch, 2 + k_item + 4 + 2 D] input
    library = tf.saved_model.load(r.path).signatures["serving_default"].graph.as_graph_def().library
    assert sum(n.op == "MatMul" for f in library.function for n in f.node_def) == 3


def test_permute_and_reshape_fold_through_probing(tmp_path):
    ids = keras.Input((3,), dtype="int32", name="ids")
    emb = ked.PrunableEmbedding(VOCAB, D, name="emb")
    x = keras.layers.Permute((2, 1))(emb(ids))  # [B, D, F]: fields interleaved in the Dense input
    x = keras.layers.Reshape((D * 3,))(x)
    model = keras.Model(ids, keras.layers.Dense(2, name="head")(x))
    _mask(emb, 4)
    x_ = _ids()
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=x_, verbose=0)
    assert r.folds["emb"]["folded_into"] == ["head"]
    np.testing.assert_allclose(_served(r, {"ids": x_})["head"], model.predict(x_, verbose=0), atol=1e-5)


@pytest.mark.parametrize("mover", ["repeat", "crop"])
def test_repeated_and_cropped_entries_fold_through_probing(tmp_path, mover):
    """`RepeatVector` sends every entry to the Dense twice (its two kernel rows summed into one
    stored row per kept value: `[k, 2]`, never `[6 D, 2]`); `Cropping1D` over the fields drops
    the first field's entries (their rows zero); served == trained either way."""
    ids = keras.Input((3,), dtype="int32", name="ids")
    emb = ked.PrunableEmbedding(VOCAB, D, name="emb")
    if mover == "repeat":
        x = keras.layers.Flatten()(keras.layers.RepeatVector(2)(keras.layers.Flatten()(emb(ids))))
    else:
        x = keras.layers.Flatten()(keras.layers.Cropping1D((1, 0))(emb(ids)))
    model = keras.Model(ids, keras.layers.Dense(2, name="head")(x))
    _mask(emb, 28)
    k = int(emb.dimension_mask().kept_dims.sum())
    x_ = _ids(seed=29)
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=x_, verbose=0)
    assert r.folds["emb"]["folded_into"] == ["head"] and r.folds["emb"]["padded"] is None
    assert _kernel_rows_stored(r) == [(k, 2)]
    np.testing.assert_allclose(_served(r, {"ids": x_})["head"], model.predict(x_, verbose=0), atol=1e-5)


def _ops():
    """The backend ops a functional model records as calls: `keras.ops` under Keras 3, `tf.*`
    (`TFOpLambda`) under Keras 2."""
    if ked.KERAS_3:
        return keras.ops.reshape, keras.ops.concatenate, keras.ops.transpose
    return tf.reshape, tf.concat, tf.transpose


def test_reshape_and_concatenate_written_as_ops_fold(tmp_path):
    """`keras.ops.reshape` / `keras.ops.concatenate` (`tf.reshape` / `tf.concat` under Keras 2)
    in place of the Reshape / Concatenate layers: the Dense after them folds (`[k + 2, 4]`
    stored, never `[3 D + 2, 4]`) into the graph a folded MLP always serves; served == trained."""
    reshape, concat, _ = _ops()
    ids = keras.Input((3,), dtype="int32", name="ids")
    price = keras.Input((2,), name="price")
    emb = ked.PrunableEmbedding(VOCAB, D, name="emb")
    x = concat([reshape(emb(ids), (-1, 3 * D)), price], axis=-1)
    h = keras.layers.Dense(4, activation="relu", name="hidden")(x)
    model = keras.Model({"ids": ids, "price": price}, keras.layers.Dense(1, name="ctr")(h))
    _mask(emb, 30)
    k = int(emb.dimension_mask().kept_dims.sum())
    sample = {"ids": _ids(seed=31), "price": np.random.default_rng(32).standard_normal((50, 2)).astype("float32")}
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=sample, verbose=0)
    assert r.folds["emb"] == {"folded_into": ["hidden"], "padded": None, "id_check": "on_invalid_id", "rank_folded": {}}
    stored = _kernel_rows_stored(r)
    assert (k + 2, 4) in stored and (3 * D + 2, 4) not in stored, stored
    np.testing.assert_allclose(_served(r, sample)["ctr"], model.predict(sample, verbose=0), atol=1e-5)


@pytest.mark.parametrize("affine", [False, True])
def test_an_op_that_mixes_the_examples_of_a_batch_is_not_folded(tmp_path, affine):
    """A transpose of the batch and field axes then a reshape back to `[batch, 3 D]` (each row
    now holds entries of several examples): a probe of one example cannot tell it from a
    placement, so the probes run two examples and refuse it; the layer serves its padded
    output and the export still serves the model (for one batch: the model's answer depends on
    how requests are batched, so the export's own check, which serves other batch sizes too,
    is left out). With a BatchNormalization after it the Dense would fold as an affine map
    (`_affine_fold`), whose basis is run again rolled by one example and refused alike."""
    reshape, _, transpose = _ops()
    ids = keras.Input((3,), dtype="int32", name="ids")
    emb = ked.PrunableEmbedding(VOCAB, D, name="emb")
    x = reshape(transpose(emb(ids), (1, 0, 2)), (-1, 3 * D))
    if affine:
        x = keras.layers.BatchNormalization(name="bn")(x)
    model = keras.Model(ids, keras.layers.Dense(2, name="head")(x))
    _mask(emb, 33)
    x_ = _ids(n=20, seed=34)  # one batch of predict's
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=x_, verbose=0, verify=False)
    assert r.folds["emb"]["folded_into"] == []
    assert r.folds["emb"]["padded"] == "Dense 'head': a call on its way mixes the examples of a batch"
    np.testing.assert_allclose(_served(r, {"ids": x_})["head"], model.predict(x_, verbose=0), atol=1e-5)


@pytest.mark.parametrize("per_value", [False, True])
def test_sequence_of_one_field_folds_per_position(tmp_path, per_value):
    hist = keras.Input((5,), dtype="int32", name="history")
    emb = ked.PrunableEmbedding(50, D, name="seq")
    model = keras.Model(hist, keras.layers.Dense(2, name="head")(keras.layers.Flatten()(emb(hist))))
    emb.build()
    rng = np.random.default_rng(5)
    emb.embedding_variable.assign(rng.standard_normal((50, D)).astype(np.float32))
    if per_value:
        emb.set_value_sizes(rng.integers(0, 4, 50))  # widest value 3 < D: folded rows are 3 wide
    else:
        emb.set_dimension_mask(rng.random((1, D)) < 0.5)
    x = rng.integers(0, 50, (40, 5)).astype("int32")
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=x, verbose=0)
    assert r.folds["seq"]["folded_into"] == ["head"]
    width = 3 if per_value else int(emb.dimension_mask().kept_dims[0])
    assert _kernel_rows_stored(r) == [(5 * width, 2)]
    np.testing.assert_allclose(_served(r, {"history": x})["head"], model.predict(x, verbose=0), atol=1e-5)


def _stored_shapes(r) -> list:
    """Shapes of every stored variable that is not an embedding table."""
    reader = tf.train.load_checkpoint(os.path.join(r.path, "variables", "variables"))
    return sorted(tuple(s) for k, s in reader.get_variable_to_shape_map().items()
                  if "VARIABLE_VALUE" in k and not k.startswith(TABLES_ATTRIBUTE))


@pytest.mark.parametrize("kind", ["fields", "fields_per_value", "sequence"])
def test_a_dense_per_field_or_position_folds_on_the_kept_columns(tmp_path, kind):
    """A Dense applied to the searched output `[batch, F, D]` itself (each field projected, as
    AutoInt's residual; after a dropout, the identity at inference) or `[batch, positions, D]`
    (each id of a history projected): each field's (position's) kept columns multiply their own
    kernel rows, stored as `[fields, width, units]` (the widest field's kept columns; for the
    positions of one field, which keep the same columns, one `[width, units]` kernel), never
    the `[D, units]` kernel; a field with no kept column gets the bias alone. Per value, the fields
    stored whole beside the packed ones. Served == trained (and, per value, in a fresh
    TensorFlow-only process with both loaders)."""
    rng = np.random.default_rng(41)
    if kind == "sequence":
        hist = keras.Input((5,), dtype="int32", name="history")
        emb = ked.PrunableEmbedding(50, D, name="emb")
        h = keras.layers.Dense(3, activation="tanh", name="proj")(emb(hist))
        model = keras.Model(hist, keras.layers.Dense(1, name="ctr")(keras.layers.GlobalAveragePooling1D()(h)))
        emb.embedding_variable.assign(rng.standard_normal((50, D)).astype(np.float32))
        keep = np.zeros((1, D), bool)
        keep[0, [0, 2, 5]] = True
        emb.set_dimension_mask(keep)
        sample = {"history": rng.integers(0, 50, (40, 5)).astype("int32")}
        want_kernel = (3, 3)  # every position the same 3 kept columns: one kernel, one matmul
    else:
        ids = keras.Input((3,), dtype="int32", name="ids")
        emb = ked.PrunableEmbedding(VOCAB, D, name="emb")
        h = keras.layers.Dense(3, activation="relu", name="proj")(keras.layers.Dropout(0.3)(emb(ids)))
        model = keras.Model(ids, keras.layers.Dense(1, name="ctr")(keras.layers.Flatten()(h)))
        emb.embedding_variable.assign(rng.standard_normal((sum(VOCAB), D)).astype(np.float32))
        if kind == "fields":  # field 0 keeps 2 columns, field 1 none, field 2 three
            keep = np.zeros((3, D), bool)
            keep[0, [1, 4]] = keep[2, [0, 3, 5]] = True
            emb.set_dimension_mask(keep)
            want_kernel = (3, 3, 3)  # 3 fields, each placed in the widest field's 3 columns
        else:  # field 0: every value keeps 2 columns (stored whole); fields 1 and 2 packed, up to 3
            emb.set_value_sizes(np.concatenate([np.full(VOCAB[0], 2), rng.integers(0, 4, VOCAB[1] + VOCAB[2])]))
            want_kernel = (3, 3, 3)  # the packed fields' values are up to 3 wide
        sample = {"ids": _ids(40, seed=42)}
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=sample, verbose=0)
    assert r.folds["emb"] == {"folded_into": ["proj"], "padded": None, "id_check": "on_invalid_id", "rank_folded": {}}
    if kind == "fields_per_value":
        assert r.layouts["emb"].startswith("field+")
    stored = _stored_shapes(r)
    assert want_kernel in stored and (D, 3) not in stored and (5, 3, 3) not in stored, stored
    want = model.predict(sample, verbose=0)
    np.testing.assert_allclose(_served(r, sample)["ctr"], want, atol=1e-5)
    if kind == "fields_per_value":
        report = check_in_fresh_process(r.path, sample, {"ctr": want}, atol=1e-5)
        assert report["tf2_max_abs_diff"] <= 1e-5 and report["tf1_max_abs_diff"] <= 1e-5


def test_a_dense_per_field_over_slots_nearly_as_wide_as_the_padded_output_is_not_folded(tmp_path):
    """A field keeping 4 of 6 columns: the kept values placed by slot would be 4 wide, and a
    product per slot costs more than the padded output's one matmul (measured by
    benchmarks/serving_models.py): that Dense reads the padded output, placed from the lookup
    the MLP beside it folds onto (the report says why); alone, the layer serves padded."""
    ids = keras.Input((3,), dtype="int32", name="ids")
    emb = ked.PrunableEmbedding(VOCAB, D, name="emb")
    e = emb(ids)
    h = keras.layers.Flatten()(keras.layers.Dense(3, name="proj")(e))
    mlp = keras.layers.Dense(4, name="mlp")(keras.layers.Flatten()(e))
    model = keras.Model(ids, keras.layers.Dense(1, name="ctr")(keras.layers.Concatenate()([h, mlp])))
    alone = keras.Model(ids, keras.layers.Dense(1, name="ctr")(h))
    _mask(emb, 45)
    keep = np.zeros((3, D), bool)
    keep[0, [1]] = keep[2, [0, 1, 3, 5]] = True
    emb.set_dimension_mask(keep)
    x = _ids(40, seed=46)
    why = "Dense 'proj': its widest slot keeps 4 of 6 columns: one matmul of the padded output costs less than a " \
          "product per slot"
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=x, verbose=0)
    assert r.folds["emb"] == {"folded_into": ["mlp"], "padded": f"{why}: served there padded, placed from the same "
                              "lookup", "id_check": "on_invalid_id", "rank_folded": {}}
    assert r.embedding_bytes == 4 * emb.dimension_mask().kept_params
    np.testing.assert_allclose(_served(r, {"ids": x})["ctr"], model.predict(x, verbose=0), atol=1e-5)
    r = ked.export_compact(alone, tmp_path / "alone", sample_inputs=x, verbose=0)
    assert r.folds["emb"]["folded_into"] == [] and r.folds["emb"]["padded"] == why
    np.testing.assert_allclose(_served(r, {"ids": x})["ctr"], alone.predict(x, verbose=0), atol=1e-5)


def test_a_dense_per_position_after_a_masked_history_is_not_folded(tmp_path):
    """With `mask_zero` the Dense's output carries the history's mask on to the pooling: computed
    from the kept values it would not, so it is left to the padded output (the report says why)."""
    hist = keras.Input((5,), dtype="int32", name="history")
    emb = ked.PrunableEmbedding(50, D, mask_zero=True, name="emb")
    h = keras.layers.Dense(3, name="proj")(emb(hist))
    model = keras.Model(hist, keras.layers.Dense(1, name="ctr")(keras.layers.GlobalAveragePooling1D()(h)))
    _mask(emb, 43)
    x = np.random.default_rng(44).integers(0, 50, (40, 5)).astype("int32")
    x[:, 3:] = 0
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=x, verbose=0)
    assert r.folds["emb"] == {"folded_into": [], "padded": "it reaches Dense 'proj' per position with a mask",
                              "id_check": "on_invalid_id", "rank_folded": {}}
    np.testing.assert_allclose(_served(r, {"history": x})["ctr"], model.predict(x, verbose=0), atol=1e-5)


def _history_model(pool: str, length, dropout: bool = False):
    """A bag of ids (`mask_zero`, 0 pads) pooled over its positions (after a SpatialDropout1D with
    `dropout`) beside three fields, into an MLP."""
    hist = keras.Input((length,), dtype="int32", name="history")
    ids = keras.Input((3,), dtype="int32", name="ids")
    seq = ked.PrunableEmbedding(50, D, mask_zero=True, name="seq")
    fields = ked.PrunableEmbedding(VOCAB, D, name="fields")
    pooling = keras.layers.GlobalMaxPooling1D if pool == "max" else keras.layers.GlobalAveragePooling1D
    e = keras.layers.SpatialDropout1D(0.3)(seq(hist)) if dropout else seq(hist)
    x = keras.layers.Concatenate()([pooling(name="pool")(e), keras.layers.Flatten()(fields(ids))])
    h = keras.layers.Dense(4, activation="relu", name="hidden")(x)
    return keras.Model({"history": hist, "ids": ids}, keras.layers.Dense(1, name="ctr")(h)), seq, fields


def _history_sample(rng, n=40, length=7):
    hist = rng.integers(1, 50, (n, length)).astype("int32")
    hist[np.arange(length)[None, :] >= rng.integers(1, length + 1, n)[:, None]] = 0  # 1 to `length` ids, then 0s
    return {"history": hist, "ids": _ids(n, seed=int(rng.integers(100)))}


@pytest.mark.parametrize("pool,per_value,length,dropout",
                         [("average", False, 7, False), ("max", True, 7, False), ("average", True, None, True)])
def test_a_pooled_bag_of_ids_folds_on_its_kept_columns(tmp_path, pool, per_value, length, dropout):
    """A single-field sequence output pooled over its positions (masked average, max; after a
    dropout, the identity at inference) reaches the Dense on its kept columns: the pooling runs
    on the folded `[batch, positions, K]` lookup, only the kept kernel rows are stored, and the
    export serves the model's predictions (padding ids masked as Keras masks them; a variable
    number of positions)."""
    model, seq, fields = _history_model(pool, length, dropout)
    rng = np.random.default_rng(11)
    for layer in (seq, fields):
        layer.embedding_variable.assign(rng.standard_normal(tuple(layer.embedding_variable.shape)).astype(np.float32))
    if per_value:
        seq.set_value_sizes(rng.integers(0, 4, 50))  # widest value 3 < D: the pooled part is 3 wide
    else:
        seq.set_dimension_mask(rng.random((1, D)) < 0.5)
    _mask(fields, 12)
    sample = _history_sample(rng)
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=sample, verbose=0)
    assert r.folds["seq"] == {"folded_into": ["pool", "hidden"], "padded": None,
            "id_check": "on_invalid_id", "rank_folded": {}}
    k_seq = 3 if per_value else int(seq.dimension_mask().kept_dims.sum())
    k_fields = int(fields.dimension_mask().kept_dims.sum())
    assert _kernel_rows_stored(r) == sorted([(k_seq + k_fields, 4), (4, 1)])
    want = model.predict(sample, verbose=0)
    np.testing.assert_allclose(_served(r, sample)["ctr"], want, atol=1e-5)
    if length is None:  # longer bags than the sample's, served too
        longer = _history_sample(rng, n=5, length=12)
        np.testing.assert_allclose(_served(r, longer)["ctr"], model.predict(longer, verbose=0), atol=1e-5)
    if pool == "max":
        report = check_in_fresh_process(r.path, sample, {"ctr": want}, atol=1e-5)
        assert report["tf2_max_abs_diff"] <= 1e-5 and report["tf1_max_abs_diff"] <= 1e-5


def test_build_mlp_with_a_history_searched_by_fit_and_exported_folded(tmp_path):
    """The zoo's MLP with a bag of ids (`sequences=`): `fit` with SingleShotPruner over both
    searched layers and DimensionExporter; the history is pooled on its kept columns and the
    export serves the trained model's predictions (a fresh process: the pooled tests above)."""
    data = ked.data.make_synthetic_ctr(num_rows=2000, num_fields=3, max_vocab=40, seed=4)
    rng = np.random.default_rng(4)
    hist = {s: rng.integers(0, 30, (len(y), 6)).astype("int32") for s, (_, y) in
            (("train", data.train), ("test", data.test))}
    model = ked.models.compile_ctr(ked.models.build_mlp(data.vocab_sizes, data.field_names, embedding_dim=6,
                                                        hidden=(8,), sequences={"history": (30, 6)}))
    exporter = ked.DimensionExporter(str(tmp_path / "mlp"), verbose=0)
    train = {**data.inputs(data.train[0]), "history": hist["train"]}
    model.fit(train, data.train[1], batch_size=256, epochs=2, verbose=0,
              callbacks=[ked.SingleShotPruner(0.3, verbose=0), exporter])
    r = exporter.result
    assert r.folds["history_embedding"]["folded_into"] == ["history_pool", "mlp_0"]
    assert r.folds["embedding"]["folded_into"] == ["mlp_0"]
    sample = {**data.inputs(data.test[0][:100]), "history": hist["test"][:100]}
    np.testing.assert_allclose(_served(r, sample)["ctr"], model.predict(sample, verbose=0), atol=1e-5)
    with pytest.raises(ValueError, match="`sequences` need embedding='prunable' or 'plain'"):
        ked.models.build_mlp([5], sequences={"h": (5, 2)}, embedding=lambda v, d, n: ked.PrunableEmbedding(v, d))
    with pytest.raises(ValueError, match=r"`sequences` must map each name to \(vocabulary size >= 1, length >= 1 or "
                                          r"None\); received 'h': \(5, 0\)"):
        ked.models.build_mlp([5], sequences={"h": (5, 0)})
    with pytest.raises(ValueError, match="`sequences` names an input that is also a field; received 'field_0'"):
        ked.models.build_mlp([5], sequences={"field_0": (5, 2)})


def test_pooling_is_not_folded_where_its_output_is_read_whole(tmp_path):
    """A pooled output that is also a model output is not computed on kept columns: the
    searched layer serves its padded output there (the report says why), value by value."""
    hist = keras.Input((7,), dtype="int32", name="history")
    seq = ked.PrunableEmbedding(50, D, mask_zero=True, name="seq")
    pooled = keras.layers.GlobalAveragePooling1D(name="pool")(seq(hist))
    model = keras.Model(hist, {"ctr": keras.layers.Dense(1, name="ctr")(pooled), "user": pooled})
    seq.embedding_variable.assign(np.random.default_rng(3).standard_normal((50, D)).astype(np.float32))
    seq.set_dimension_mask([[1, 0, 1, 1, 0, 0]])
    x = _history_sample(np.random.default_rng(4))["history"]
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=x, verbose=0)
    assert r.folds["seq"]["folded_into"] == []
    assert r.folds["seq"]["padded"] == ("its output reaches 'pool' (GlobalAveragePooling1D), whose output does not "
                                        "fold: its output is a model output")
    got, want = _served(r, {"history": x}), model.predict(x, verbose=0)
    for name in ("ctr", "user"):
        np.testing.assert_allclose(got[name], want[name], atol=1e-6)


def test_one_search_feeding_two_heads_is_looked_up_once_and_named_outputs_stay(tmp_path):
    ids = keras.Input((3,), dtype="int32", name="ids")
    emb = ked.PrunableEmbedding(VOCAB, D, name="emb")
    flat = keras.layers.Flatten()(emb(ids))
    click = keras.layers.Dense(1, activation="sigmoid", name="click")(flat)
    other = keras.layers.Dense(1)(flat)  # an unnamed head: a stable output_<i> name
    model = keras.Model(ids, [click, other])
    _mask(emb, 6)
    x = _ids()
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=x, verbose=0)
    assert sorted(r.folds["emb"]["folded_into"]) == sorted(["click", other._keras_history[0].name])
    assert sorted(r.outputs) == ["click", "output_1"]
    got = _served(r, {"ids": x})
    want = model.predict(x, verbose=0)
    np.testing.assert_allclose(got["click"], want[0], atol=1e-5)
    np.testing.assert_allclose(got["output_1"], want[1], atol=1e-5)


def _gathers(r) -> int:
    """Table reads of the export's serving graph (row gathers from variables)."""
    graph = tf.saved_model.load(r.path).signatures["serving_default"].graph.as_graph_def()
    return sum(n.op == "ResourceGather" for f in graph.library.function for n in f.node_def)


def test_deepfm_folds_its_mlp_and_computes_the_fm_term_from_kept_values(tmp_path):
    """DeepFM: the embeddings reach the MLP and the FM term. The MLP's first Dense is folded onto
    the kept values, and the FM term is computed from them too (`export.fm`: column sums by a
    [k, D] 0/1 matrix, no padded embeddings): served == the model (TF1 and TF2 loaders)."""
    d = ked.data.make_synthetic_ctr(num_rows=500, num_fields=3, max_vocab=40, seed=1)
    model = ked.models.build_deepfm(d.vocab_sizes, d.field_names, embedding_dim=D, hidden=(4,))
    layer = ked.find_searchable_layers(model)[0]
    _mask(layer, 7)
    k = int(layer.dimension_mask().kept_dims.sum())
    sample = d.inputs(d.test[0][:60])
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=sample, verbose=0)
    assert r.folds == {"embedding": {"folded_into": ["deep_0", "fm"], "padded": None,
            "id_check": "on_invalid_id", "rank_folded": {}}}
    assert (k, 4) in _kernel_rows_stored(r) and (3 * D, 4) not in _kernel_rows_stored(r)
    assert (k, D) in _kernel_rows_stored(r)  # the FM's column matrix
    want = model.predict(sample, verbose=0)
    np.testing.assert_allclose(_served(r, sample)["ctr"], want, atol=1e-5)
    report = check_in_fresh_process(r.path, sample, {"ctr": want}, atol=1e-5)
    assert report["tf2_max_abs_diff"] <= 1e-5 and report["tf1_max_abs_diff"] <= 1e-5


@pytest.mark.parametrize("kind", ["mlp", "deepfm", "dcn", "dcn_low_rank", "tower"])
def test_a_searched_layer_that_keeps_nothing_serves_its_products_as_zeros(tmp_path, kind):
    """A layer that keeps no column (a whole-layer min_dim=0 outcome) gives the folded Dense,
    FM and cross products an empty inner dimension. Grappler fuses such a MatMul with its
    BiasAdd into oneDNN's inner product, which aborts the process (the export's own check, or
    TF Serving); they are served as zeros instead (`_utils.matmul`): served == the model."""
    d = ked.data.make_synthetic_ctr(num_rows=300, num_fields=3, max_vocab=40, seed=1)
    sample = d.inputs(d.test[0][:40])
    if kind == "mlp":
        model = ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=D, hidden=(4,))
    elif kind == "deepfm":
        model = ked.models.build_deepfm(d.vocab_sizes, d.field_names, embedding_dim=D, hidden=(4,))
    elif kind in ("dcn", "dcn_low_rank"):
        model = ked.models.build_dcn(d.vocab_sizes, d.field_names, embedding_dim=D, hidden=(4,),
                                     projection_dim=2 if kind == "dcn_low_rank" else None)
    else:  # a tower shared by a searched input that keeps nothing and one that keeps columns
        user, item = keras.Input((), dtype="int32", name="user"), keras.Input((), dtype="int32", name="item")
        x_in = keras.Input((D,))
        tower = keras.Model(x_in, keras.layers.Dense(3)(keras.layers.Dense(5, activation="relu")(x_in)))
        ue, ie = ked.PrunableEmbedding(40, D, name="user_emb"), ked.PrunableEmbedding(50, D, name="item_emb")
        score = keras.layers.Dot(axes=1)([tower(ue(user)), tower(ie(item))])
        model = keras.Model({"user": user, "item": item}, keras.layers.Dense(1, name="ctr")(score))
        _mask(ie, 3)
        sample = {"user": np.arange(40, dtype="int32"), "item": np.arange(40, dtype="int32")}
    layer = ked.find_searchable_layers(model)[0]
    layer.embedding_variable.assign(np.random.default_rng(0).standard_normal(
        tuple(layer.embedding_variable.shape)).astype(np.float32))
    layer.set_dimension_mask(np.zeros((layer.num_fields, layer.output_dim), bool))
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=sample, verbose=0)
    assert r.folds[layer.name]["folded_into"] and r.folds[layer.name]["padded"] is None
    want = model.predict(sample, verbose=0)
    got = _served(r, sample)
    for name, value in (want.items() if isinstance(want, dict) else [("ctr", want)]):
        np.testing.assert_allclose(got[name], value, atol=1e-5)
    if kind == "mlp":  # as TF Serving runs it too (the session loader's graph is optimized apart)
        report = check_in_fresh_process(r.path, sample, {"ctr": want}, atol=1e-5)
        assert report["tf2_max_abs_diff"] <= 1e-5 and report["tf1_max_abs_diff"] <= 1e-5


def test_fm_from_kept_values_equals_the_layer_on_padded_embeddings():
    """`export.fm` on kept values, with a value placed twice (its column sums and squares count
    it twice), equals `FMInteraction` on the padded [batch, F, D] tensor."""
    from keras_embdim.export import fm

    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    cols = np.array([0, -1, 2, 1, -1, 3, 3, -1, 0])  # F = 3, D = 3; values 0 and 3 placed twice
    padded = np.where(cols >= 0, x[:, np.maximum(cols, 0)], 0).reshape(5, 3, 3)
    want = ked.models.FMInteraction()(tf.constant(padded)).numpy()
    m, w = fm.fm_weights(cols, 3, 4)
    np.testing.assert_allclose(fm.fm(tf.constant(x), m, w, tf.float32).numpy(), want, rtol=1e-5, atol=1e-5)


def test_a_pooled_use_beside_a_folded_mlp_reads_each_table_once(tmp_path):
    """A use that cannot be computed from kept values (max pooling over fields) reads the padded
    output placed from the lookup the folded Dense reads: one row gather per stored table per
    request, as many as when only the Dense reads the layer; the report names the pooling."""
    ids = keras.Input((3,), dtype="int32", name="ids")
    emb = ked.PrunableEmbedding(VOCAB, D, name="emb")
    e = emb(ids)
    deep = keras.layers.Dense(1, name="deep")(keras.layers.Flatten()(e))
    pooled = keras.layers.Dense(1, name="pooled")(keras.layers.GlobalMaxPooling1D(name="pool")(e))
    model = keras.Model(ids, keras.layers.Add(name="logit")([pooled, deep]))
    _mask(emb, 4)
    x = _ids()
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=x, verbose=0)
    assert r.folds["emb"]["folded_into"] == ["deep"]
    assert r.folds["emb"]["padded"] == ("its output reaches 'pool' (GlobalMaxPooling1D), which pools over fields: "
                                        "served there padded, placed from the same lookup")
    tables = sum(1 for k in tf.train.load_checkpoint(os.path.join(r.path, "variables", "variables"))
                 .get_variable_to_shape_map() if k.startswith(TABLES_ATTRIBUTE) and k.endswith("VARIABLE_VALUE"))
    assert tables >= 2 and _gathers(r) == tables
    np.testing.assert_allclose(list(_served(r, {"ids": x}).values())[0], model.predict(x, verbose=0), atol=1e-5)


def test_outputs_of_searched_and_data_moving_layers_are_served_beside_a_folded_dense(tmp_path):
    """The searched layer's output and its Flatten's are model outputs as well as the input of a
    folded Dense: both are served (placed from the lookup the Dense reads), value by value."""
    ids = keras.Input((3,), dtype="int32", name="ids")
    emb = ked.PrunableEmbedding(VOCAB, D, name="emb")
    e = emb(ids)
    flat = keras.layers.Flatten(name="flat")(e)
    model = keras.Model(ids, {"ctr": keras.layers.Dense(1, name="ctr")(flat), "emb": e, "flat": flat})
    _mask(emb, 9)
    x = _ids()
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=x, verbose=0)
    assert r.folds["emb"]["folded_into"] == ["ctr"]
    assert r.folds["emb"]["padded"] == "its output is a model output: served there padded, placed from the same lookup"
    got, want = _served(r, {"ids": x}), model.predict(x, verbose=0)
    for name in ("ctr", "emb", "flat"):
        np.testing.assert_allclose(got[name], want[name], atol=1e-6)
    assert np.all(got["emb"][:, ~emb.dimension_mask().kept_dims.astype(bool)] == 0)


def test_a_dense_called_twice_is_not_folded(tmp_path):
    ids = keras.Input((3,), dtype="int32", name="ids")
    emb = ked.PrunableEmbedding(VOCAB, D, name="emb")
    shared = keras.layers.Dense(2, name="shared")
    flat = keras.layers.Flatten()(emb(ids))
    model = keras.Model(ids, keras.layers.Add()([shared(flat), shared(flat * 2.0)]))
    _mask(emb, 8)
    x = _ids()
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=x, verbose=0)
    assert not r.folds["emb"]["folded_into"] and r.folds["emb"]["padded"]
    np.testing.assert_allclose(list(_served(r, {"ids": x}).values())[0], model.predict(x, verbose=0), atol=1e-5)


def test_nested_functional_tower_folds_inside_and_subclassed_says_why(tmp_path):
    inner_in = keras.Input((3,), dtype="int32")
    emb = ked.PrunableEmbedding(VOCAB, D, name="emb")
    tower = keras.Model(inner_in, keras.layers.Dense(4, name="proj")(keras.layers.Flatten()(emb(inner_in))), name="tower")
    ids = keras.Input((3,), dtype="int32", name="ids")
    model = keras.Model(ids, keras.layers.Dense(1, name="out")(tower(ids)))
    _mask(emb, 9)
    x = _ids()
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=x, verbose=0)
    assert r.folds["emb"]["folded_into"] == ["proj"]
    np.testing.assert_allclose(_served(r, {"ids": x})["out"], model.predict(x, verbose=0), atol=1e-5)

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.emb = ked.PrunableEmbedding(VOCAB, D, name="sub_emb")
            self.out = keras.layers.Dense(1)

        def call(self, ids):
            return self.out(tf.reshape(self.emb(ids), [-1, 3 * D]))

    sub = Sub()
    sub(x)
    _mask(sub.emb, 10)
    s = ked.export_compact(sub, tmp_path / "s", input_signature=tf.TensorSpec([None, 3], tf.int32, name="ids"),
                           sample_inputs=x, verbose=0)
    assert "subclassed" in s.folds["sub_emb"]["padded"]
    assert s.max_abs_diff <= 1e-5


@pytest.mark.parametrize("tower", ["sequential", "functional"])
def test_an_mlp_sub_model_after_the_searched_layers_folds_inside(tmp_path, tower):
    """The MLP as a sub-model of its own (a `Sequential`, or a functional tower with a
    BatchNormalization first) applied to the concatenated fields and a price: the sub-model's
    calls are planned as the model's own (`fold._graph_nodes`), so its first Dense keeps only
    the kept rows (`[k + 2, 5]`, never `[3 D + 2, 5]`) and the rest of the sub-model runs as
    trained; served == trained (the `Sequential` one: the same ops, op type by op type, as the
    export of the same MLP written inline; the functional one: in a fresh TensorFlow-only
    process too, TF2 and TF1 loaders)."""
    ids = keras.Input((3,), dtype="int32", name="ids")
    price = keras.Input((2,), name="price")
    emb = ked.PrunableEmbedding(VOCAB, D, name="emb")
    x = keras.layers.Concatenate()([keras.layers.Flatten()(emb(ids)), price])
    if tower == "sequential":
        mlp = keras.Sequential([keras.layers.Dense(5, activation="relu", name="hidden"),
                                keras.layers.Dense(1, name="logit")], name="mlp")
        inline_emb = ked.PrunableEmbedding(VOCAB, D, name="emb")
        h = keras.layers.Dense(5, activation="relu", name="hidden")(
            keras.layers.Concatenate()([keras.layers.Flatten()(inline_emb(ids)), price]))
        inline = keras.Model({"ids": ids, "price": price},
                             keras.layers.Activation("sigmoid", name="ctr")(keras.layers.Dense(1, name="logit")(h)))
        _mask(inline_emb, 21)
    else:
        x_in = keras.Input((3 * D + 2,))
        norm = keras.layers.BatchNormalization(name="norm")
        h = keras.layers.Dense(5, activation="relu", name="hidden")(norm(x_in))
        mlp = keras.Model(x_in, keras.layers.Dense(1, name="logit")(h), name="mlp")
    model = keras.Model({"ids": ids, "price": price}, keras.layers.Activation("sigmoid", name="ctr")(mlp(x)))
    _mask(emb, 21)
    if tower == "functional":
        rng = np.random.default_rng(22)
        norm.set_weights([1 + 0.5 * rng.standard_normal(3 * D + 2), 0.3 * rng.standard_normal(3 * D + 2),
                          rng.standard_normal(3 * D + 2), 0.5 + rng.random(3 * D + 2)])
    k = int(emb.dimension_mask().kept_dims.sum())
    rng = np.random.default_rng(23)
    sample = {"ids": _ids(seed=24), "price": rng.standard_normal((50, 2)).astype("float32")}
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=sample, verbose=0)
    assert r.folds["emb"] == {"folded_into": ["hidden"], "padded": None, "id_check": "on_invalid_id", "rank_folded": {}}
    stored = _kernel_rows_stored(r)
    assert (k + 2, 5) in stored and (3 * D + 2, 5) not in stored and k < 3 * D, stored
    want = model.predict(sample, verbose=0)
    np.testing.assert_allclose(_served(r, sample)["ctr"], want, atol=1e-5)
    if tower == "sequential":  # the sub-model costs a request nothing: the same graph as inline
        inline.set_weights(model.get_weights())
        r_inline = ked.export_compact(inline, tmp_path / "inline", sample_inputs=sample, verbose=0)
        assert _op_types(r) == _op_types(r_inline)
        np.testing.assert_allclose(_served(r_inline, sample)["ctr"], want, atol=1e-5)
    else:
        report = check_in_fresh_process(r.path, sample, {"ctr": want}, atol=1e-5)
        assert report["tf2_max_abs_diff"] <= 1e-5 and report["tf1_max_abs_diff"] <= 1e-5


def _op_types(r) -> dict:
    """How many ops of each type the export's serving graph holds (its functions included)."""
    graph = tf.saved_model.load(r.path).signatures["serving_default"].graph.as_graph_def()
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return dict(collections.Counter(n.op for n in nodes))


def test_a_sub_model_called_with_a_mask_is_not_inlined(tmp_path):
    """A bag of ids (`mask_zero`) into a sub-model that averages it: the average inside gets
    its mask from the sub-model's call, which the sub-model's own graph does not record, so
    its calls are not planned as the outer graph's (an unmasked average would be folded
    instead); the export serves the model."""
    hist = keras.Input((5,), dtype="int32", name="history")
    seq = ked.PrunableEmbedding(50, D, mask_zero=True, name="seq")
    x_in = keras.Input((5, D))
    head = keras.layers.Dense(1, name="head")(keras.layers.GlobalAveragePooling1D()(x_in))
    model = keras.Model(hist, keras.Model(x_in, head, name="tower")(seq(hist)))
    _mask(seq, 35)
    rng = np.random.default_rng(36)
    history = rng.integers(1, 50, (50, 5)).astype("int32")
    history[:, 3:] = 0  # 3 ids, then 0s: the masked average differs from the unmasked one
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=history, verbose=0)
    assert r.folds["seq"]["folded_into"] == [] and "'tower'" in r.folds["seq"]["padded"], r.folds
    np.testing.assert_allclose(list(_served(r, {"history": history}).values())[0], model.predict(history, verbose=0),
                               atol=1e-5)


@pytest.mark.parametrize("other", ["item_emb", "dense", "nested"])
def test_a_tower_shared_by_two_inputs_folds_each_call_apart(tmp_path, other):
    """One tower (shared weights) applied to two searched outputs: each call is inlined as a copy
    of its own and its Dense folds with the kept rows of its own input (`[k_user, 3]` and
    `[k_item, 3]` stored, not the `[D, 3]` kernel); also when the second call is inside another
    sub-model (`nested`: one call per graph, the tower inlined twice all the same). Applied to a
    searched output and to a dense feature: the first call folds, the second runs the tower as
    it is (the kernel is stored for it). The tower's kernel rows also take its other input, so
    PME's rotation leaves it alone. Served == trained."""
    from keras_embdim.export import fold

    user, item = keras.Input((), dtype="int32", name="user"), keras.Input((), dtype="int32", name="item")
    feature = keras.Input((D,), name="feature")
    user_emb, item_emb = ked.PrunableEmbedding(40, D, name="user_emb"), ked.PrunableEmbedding(50, D, name="item_emb")
    x_in = keras.Input((D,))
    tower = keras.Model(x_in, keras.layers.Dense(3, activation="relu", name="proj")(x_in), name="tower")
    if other == "nested":  # the tower's second call inside another sub-model
        y_in = keras.Input((D,))
        right = keras.Model(y_in, keras.layers.Activation("tanh")(tower(y_in)), name="outer")(item_emb(item))
    else:
        right = tower(item_emb(item)) if other == "item_emb" else tower(feature)
    score = keras.layers.Dot(axes=1, name="score")([tower(user_emb(user)), right])
    inputs = {"user": user, "feature": feature} if other == "dense" else {"user": user, "item": item}
    model = keras.Model(inputs, score)
    _mask(user_emb, 25)
    if other != "dense":
        _mask(item_emb, 26)
    rng = np.random.default_rng(27)
    sample = {"user": rng.integers(0, 40, 50).astype("int32"), "item": rng.integers(0, 50, 50).astype("int32"),
              "feature": rng.standard_normal((50, D)).astype("float32")}
    sample = {k: sample[k] for k in inputs}
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=sample, verbose=0)
    k_user = int(user_emb.dimension_mask().kept_dims.sum())
    assert r.folds["user_emb"] == {"folded_into": ["proj"], "padded": None,
            "id_check": "on_invalid_id", "rank_folded": {}}
    stored = [s for s in _kernel_rows_stored(r) if s[1] == 3]
    if other != "dense":
        k_item = int(item_emb.dimension_mask().kept_dims.sum())
        assert r.folds["item_emb"] == r.folds["user_emb"]
        assert stored == sorted([(k_user, 3), (k_item, 3)]) and k_user < D and k_item < D, stored
    else:
        assert stored == sorted([(k_user, 3), (D, 3)]), stored
    np.testing.assert_allclose(_served(r, sample)["score"], model.predict(sample, verbose=0), atol=1e-5)
    assert fold.kernel_rows(model, user_emb) == ([], "Dense 'proj' is in a sub-model called more than once")


def test_folded_model_serves_an_empty_batch(tmp_path):
    ids = keras.Input((3,), dtype="int32", name="ids")
    emb = ked.PrunableEmbedding(VOCAB, D, name="emb")
    model = keras.Model(ids, keras.layers.Dense(1, name="o")(keras.layers.Flatten()(emb(ids))))
    _mask(emb, 11)
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=_ids(), verbose=0)
    assert _served(r, {"ids": np.zeros((0, 3), "int32")})["o"].shape == (0, 1)
    emb_bytes = sum(b for k, b in saved_variable_bytes(r.path).items() if k.startswith(TABLES_ATTRIBUTE))
    assert emb_bytes == 4 * emb.dimension_mask().kept_params


def _field_model(vocab, first_order: bool):
    """Named per-field inputs -> StackFields -> searched layer -> Dense; with `first_order`, the
    stacked ids also feed a plain first-order Embedding concatenated into the same Dense."""
    names = [f"f{i}" for i in range(len(vocab))]
    inputs = {n: keras.Input(shape=(), dtype="int32", name=n) for n in names}
    ids = ked.layers.StackFields(name="stack")([inputs[n] for n in names])
    emb = ked.PrunableEmbedding(vocab, D, name="emb")
    x = keras.layers.Flatten()(emb(ids))
    if first_order:
        shared = ked.layers.FieldOffsets(vocab)(ids)
        w = keras.layers.Flatten()(keras.layers.Embedding(sum(vocab), 1, name="w")(shared))
        x = keras.layers.Concatenate()([x, w])
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="ctr")(x))
    _mask(emb, 5)
    return model, emb, names


@pytest.mark.parametrize("first_order", [False, True])
def test_stacked_field_inputs_are_looked_up_per_width_group(tmp_path, first_order):
    """Behind `StackFields`, the folded lookup takes the per-field inputs (each width group
    stacks only its fields); the stack itself runs only if another layer uses it. Served
    int64 requests == the model; an int64 id past the int32 range is reported as sent."""
    from keras_embdim.export import fold as fold_lib
    from keras_embdim.export.compact import compact_layer

    vocab = [7, 30, 120, 5, 60]
    model, emb, names = _field_model(vocab, first_order)
    plan, report = fold_lib.plan(model, {emb: compact_layer(emb)})
    assert report.layers["emb"]["folded_into"] == ["ctr"]
    stack = model.get_layer("stack")
    assert [n.layer for n in plan.columns.values()] == [stack]
    stack_skipped = {n.layer for n in _compat_nodes(model) if id(n.raw) in plan.skip}
    assert (stack in stack_skipped) is (not first_order) and emb in stack_skipped
    x = _ids(vocab=vocab)
    request = {n: x[:, i].astype("int64") for i, n in enumerate(names)}
    r = ked.export_compact(model, tmp_path / "e", sample_inputs={n: x[:, i] for i, n in enumerate(names)}, verbose=0)
    np.testing.assert_allclose(_served(r, request)["ctr"], model.predict(request, verbose=0), atol=1e-6)
    # past the int32 range (with the first-order weights, whose shared-table gather would fail on
    # its own: an id that lands on another field's row there, caught only by our check)
    value = 130 if first_order else 2**40
    bad = dict(request, f2=np.full(len(x), value, "int64"))
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf'field_2\\?" received id {value},'):
        _served(r, bad)


def _compat_nodes(model):
    from keras_embdim import _compat

    return _compat.graph_nodes(_compat.graph_network(model))
