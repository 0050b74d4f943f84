"""Rank folding (keras_embdim.export.fold.fold_ranks, compact.rank_fold): a field of fewer ids than
kept columns is served in the basis of its rows, the basis multiplied into the folded Dense kernel.

Random tables and masks (the algebra is exact, no training needed); every export is compared with
the Keras model value by value, and the stored shapes and bytes with a hand count.
"""

import os
import weakref

import numpy as np
import tensorflow as tf

import keras_embdim as ked
from keras_embdim import keras
from keras_embdim.export import TABLES_ATTRIBUTE, compact as compact_lib
from keras_embdim.serving import check_in_fresh_process

VOCAB = [3, 40, 5, 2]
D = 8
# kept columns per field: field 0 keeps 8 of its rank <= 3, field 2 keeps 6 of its rank <= 5,
# field 3 keeps 1 (<= its 2 ids: nothing to fold), field 1 keeps 4 of 40 ids
KEPT = [8, 4, 6, 1]


def _model(extra_output: bool = False):
    ids = keras.Input((len(VOCAB),), dtype="int32", name="ids")
    emb = ked.PrunableEmbedding(VOCAB, D, name="emb")
    e = emb(ids)
    h = keras.layers.Dense(5, activation="relu", name="hidden")(keras.layers.Flatten()(e))
    ctr = keras.layers.Dense(1, activation="sigmoid", name="ctr")(h)
    outputs = {"ctr": ctr, "emb_out": keras.layers.Flatten(name="emb_out")(e)} if extra_output else ctr
    model = keras.Model(ids, outputs)
    rng = np.random.default_rng(3)
    emb.embedding_variable.assign(rng.standard_normal(tuple(emb.embedding_variable.shape)).astype(np.float32))
    mask = np.zeros((len(VOCAB), D), bool)
    for f, k in enumerate(KEPT):
        mask[f, rng.permutation(D)[:k]] = True
    emb.set_dimension_mask(mask)
    return model, emb


def _ids(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, v, n) for v in VOCAB], 1).astype("int32")


def _stored_shapes(r):
    reader = tf.train.load_checkpoint(os.path.join(r.path, "variables", "variables"))
    return {k: tuple(s) for k, s in reader.get_variable_to_shape_map().items() if "VARIABLE_VALUE" in k}


def test_small_fields_are_served_in_the_basis_of_their_rows(tmp_path):
    model, emb = _model()
    names = emb.dimension_mask().field_names
    x = _ids()
    want = model.predict(x, verbose=0)
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=x, verbose=0)
    assert r.folds["emb"]["rank_folded"] == {names[0]: {"kept": 8, "served": 3}, names[2]: {"kept": 6, "served": 5}}
    assert r.folds["emb"]["folded_into"] == ["hidden"]
    served = tf.saved_model.load(r.path).signatures["serving_default"](ids=tf.constant(x, tf.int64))["ctr"].numpy()
    np.testing.assert_allclose(served, want, atol=1e-5)
    report = check_in_fresh_process(r.path, {"ids": x.astype(np.int64)}, {"ctr": want}, atol=1e-5)
    assert report["tf2_max_abs_diff"] <= 1e-5 and report["tf1_max_abs_diff"] <= 1e-5
    # the tables hold 3 x 3 + 40 x 4 + 5 x 5 + 2 x 1 values, not the kept 3 x 8 + 40 x 4 + 5 x 6 + 2 x 1;
    # no padding: merging any two widths (3, 4, 5, 1) pads more than 1 % of the 196 stored values
    kept = sum(v * k for v, k in zip(VOCAB, KEPT))
    assert r.kept_params == kept and r.embedding_padding_bytes == 0
    assert r.embedding_bytes == 4 * (3 * 3 + 40 * 4 + 5 * 5 + 2 * 1)
    assert r.embedding_rank_folded_bytes == 4 * (3 * (8 - 3) + 5 * (6 - 5))  # = kept x 4 B - embedding_bytes
    shapes = _stored_shapes(r)
    assert sorted(s for k, s in shapes.items() if k.startswith(TABLES_ATTRIBUTE)) == [(2, 1), (3, 3), (5, 5), (40, 4)]
    # the folded kernel has a row per served column, 3 + 4 + 5 + 1, not per kept one (19)
    assert sorted(s for k, s in shapes.items() if not k.startswith(TABLES_ATTRIBUTE) and len(s) == 2) == [
        (5, 1), (13, 5)]
    # the same predictions as the unfolded export (the padded lookup and the whole kernel)
    p = ked.export_compact(model, tmp_path / "p", sample_inputs=x, verbose=0, fold=False)
    assert p.folds["emb"]["rank_folded"] == {}
    assert p.embedding_bytes == 4 * kept + p.embedding_padding_bytes and p.embedding_rank_folded_bytes == 0
    got = tf.saved_model.load(p.path).signatures["serving_default"](ids=tf.constant(x, tf.int64))["ctr"].numpy()
    np.testing.assert_allclose(got, served, atol=1e-5)


def test_not_where_the_columns_themselves_are_read_or_the_tables_are_quantized(tmp_path):
    model, emb = _model(extra_output=True)  # the searched output is also a model output: served padded
    x = _ids()
    want = model.predict(x, verbose=0)
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=x, verbose=0)
    assert r.folds["emb"]["folded_into"] == ["hidden"] and r.folds["emb"]["padded"]
    assert r.folds["emb"]["rank_folded"] == {}
    assert r.embedding_bytes == 4 * r.kept_params + r.embedding_padding_bytes
    served = tf.saved_model.load(r.path).signatures["serving_default"](ids=tf.constant(x, tf.int64))
    for name in ("ctr", "emb_out"):
        np.testing.assert_allclose(served[name].numpy(), want[name], atol=1e-5)
    model, emb = _model()
    q = ked.export_compact(model, tmp_path / "q", sample_inputs=x, verbose=0, table_dtype="float16")
    assert q.folds["emb"]["rank_folded"] == {}  # the stored values are the kept ones, rounded


def test_sequence_positions_and_the_lookup_expansion(tmp_path):
    """A one-field layer looked up at 4 positions, flattened into a Dense: each position's columns
    are folded; and the rank-folded lookup's own outputs against the plain one's."""
    ids = keras.Input((4,), dtype="int32", name="ids")
    emb = ked.PrunableEmbedding(3, D, name="seq")
    h = keras.layers.Dense(2, name="hidden")(keras.layers.Flatten()(emb(ids)))
    model = keras.Model(ids, h)
    rng = np.random.default_rng(5)
    emb.embedding_variable.assign(rng.standard_normal((3, D)).astype(np.float32))
    emb.set_dimension_mask(np.arange(D)[None, :] < 7)  # 7 kept columns, rank 3
    x = rng.integers(0, 3, (32, 4)).astype("int32")
    want = model.predict(x, verbose=0)
    r = ked.export_compact(model, tmp_path / "e", sample_inputs=x, verbose=0)
    assert r.folds["seq"]["rank_folded"] == {emb.dimension_mask().field_names[0]: {"kept": 7, "served": 3}}
    served = tf.saved_model.load(r.path).signatures["serving_default"](ids=tf.constant(x, tf.int64))
    np.testing.assert_allclose(next(iter(served.values())).numpy(), want, atol=1e-5)
    assert sorted(s for k, s in _stored_shapes(r).items() if not k.startswith(TABLES_ATTRIBUTE)) == [(2,), (12, 2)]

    # the lookups themselves: the rank-folded one's folded values times its expansion are the plain
    # one's padded output, and its own padded output is too
    plain = compact_lib.compact_layer(emb)
    folded = compact_lib.compact_layer(emb)
    assert compact_lib.rank_fold(folded) and folded.lookup.rank_folded and folded.lookup.kept_width == 3
    assert folded.lookup.rank_saved_params == 3 * (7 - 3)
    t = tf.constant(x)
    want_padded = plain.lookup.padded(t).numpy()  # [32, 4, D]
    np.testing.assert_allclose(folded.lookup.padded(t).numpy(), want_padded, atol=1e-5)
    col, code, coef = folded.lookup.folded_expansion(4)
    expand = np.zeros((4 * 3, 4 * D))
    np.add.at(expand, (col, code), coef)
    np.testing.assert_allclose(folded.lookup.folded(t).numpy() @ expand, want_padded.reshape(32, -1), atol=1e-5)
    # the plain lookup's expansion is its folded codes, with coefficient 1
    col, code, coef = plain.lookup.folded_expansion(2)
    codes = plain.lookup.folded_codes(2)
    assert np.array_equal(code, codes[col]) and np.all(coef == 1) and np.all(codes[col] >= 0)
    # no field of fewer ids than kept columns: nothing to fold
    emb.set_dimension_mask(np.arange(D)[None, :] < 3)
    unfolded = compact_lib.compact_layer(emb)
    lookup = unfolded.lookup
    assert not compact_lib.rank_fold(unfolded) and unfolded.lookup is lookup


def test_rank_fold_keeps_unchanged_tables_and_frees_the_others():
    """Fields 1 and 3 keep their tables (same fields, same width): not read again; the tables of
    widths 8 and 6 (fields 0 and 2, now served at 3 and 5) are freed before the new ones are built."""
    _, emb = _model()
    compact = compact_lib.compact_layer(emb)
    want = compact.lookup.padded(tf.constant(_ids())).numpy()
    old = {g.width: (g.fields.tolist(), g.table) for g in compact.lookup.groups}
    assert sorted((w, f) for w, (f, _) in old.items()) == [(1, [3]), (4, [1]), (6, [2]), (8, [0])]
    refs = {w: weakref.ref(t) for w, (_, t) in old.items()}
    kept = {w: old[w][1] for w in (1, 4)}
    old = None
    assert compact_lib.rank_fold(compact)
    new = {g.width: g for g in compact.lookup.groups}
    assert sorted(new) == [1, 3, 4, 5]
    assert all(new[w].table is kept[w] for w in (1, 4))
    assert refs[8]() is None and refs[6]() is None  # released, not held beside the new tables
    np.testing.assert_allclose(compact.lookup.padded(tf.constant(_ids())).numpy(), want, atol=1e-5)
    assert not compact_lib.rank_fold(compact)  # folded once: nothing more to fold
