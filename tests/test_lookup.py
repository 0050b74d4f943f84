"""Serving lookups of compacted layers against numpy references (keras_embdim.export.lookup)."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import assume, given, settings, strategies as st

import keras_embdim as ked
from keras_embdim.export import layouts
from keras_embdim.export.compact import DENSE_FIELD_SLACK, compact_layer, dense_field_plan, group_widths
from keras_embdim.mask import DimensionMask

import reference


def _layer(vocab, D, seed, keep=None, sizes=None, names=None):
    rng = np.random.default_rng(seed)
    layer = ked.PrunableEmbedding(list(vocab), D, name="emb", field_names=names)
    layer.build()
    table = rng.standard_normal((sum(vocab), D)).astype(np.float32)
    layer.embedding_variable.assign(table)
    if keep is not None:
        layer.set_dimension_mask(keep, zero_pruned=False)
    if sizes is not None:
        layer.set_value_sizes(sizes, zero_pruned=False)
    return layer, table


def test_mask_param_accounting():
    m = DimensionMask([10, 100], np.array([[1, 1, 0], [1, 0, 0]]))
    assert m.kept_dims.tolist() == [2, 1]
    assert m.kept_params == 10 * 2 + 100
    assert m.full_params == 330
    recs = m.to_records()
    assert recs[1]["params_after"] == 100 and recs[0]["kept_columns"] == [0, 1]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=1, max_size=5), st.integers(1, 8), st.floats(0.0, 1.0),
       st.integers(0, 10_000), st.booleans())
def test_field_lookup_equals_masked_reference(vocab, D, keep_p, seed, jit):
    """Padded and folded outputs of the per-field lookup against the numpy reference
    (fields and whole layers may keep nothing); bytes are the kept parameters plus the
    padding `group_widths` allows (at most 1 %)."""
    rng = np.random.default_rng(seed)
    keep = rng.random((len(vocab), D)) < keep_p
    layer, table = _layer(vocab, D, seed, keep=keep)
    lookup = compact_layer(layer, jit_compile=jit).lookup
    mask = layer.dimension_mask()
    stored = group_widths(mask.kept_dims, mask.vocab_sizes)
    padding = int((stored - mask.kept_dims) @ np.asarray(mask.vocab_sizes))
    assert lookup.padding_params == padding <= 0.01 * mask.kept_params
    assert lookup.nbytes == 4 * (mask.kept_params + padding)
    assert len(lookup.groups) == len(set(stored[stored > 0].tolist()))  # one table per stored width
    ids = np.stack([rng.integers(0, n, size=(3, 4)) for n in vocab], axis=-1)
    want = reference.masked_lookup(table, mask, ids, multi_field=True)  # [3, 4, F, D]
    np.testing.assert_array_equal(lookup.padded(tf.constant(ids)).numpy(), want)
    # folded: [batch, P] in the lookup's own order; each column is the padded entry its code names,
    # a padding column (code -1) is zero
    folded = lookup.folded(tf.constant(ids)).numpy()
    codes = lookup.folded_codes(4)
    assert folded.shape == (3, codes.size) and codes.size == 4 * int(stored.sum())
    np.testing.assert_array_equal(folded[:, codes >= 0], want.reshape(3, -1)[:, codes[codes >= 0]])
    assert (codes >= 0).sum() == 4 * int(mask.kept_dims.sum()) and not folded[:, codes < 0].any()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 16), st.integers(1, 10_000)), min_size=1, max_size=12),
       st.floats(0.0, 0.1))
def test_group_widths_pads_within_the_slack_and_only_upwards(fields, slack):
    widths = np.array([w for w, _ in fields])
    rows = np.array([n for _, n in fields])
    stored = group_widths(widths, rows, slack)
    assert np.all(stored >= widths) and np.all((stored == 0) == (widths == 0))
    assert (stored - widths) @ rows <= slack * (widths @ rows)
    assert set(stored[stored > 0].tolist()) <= set(widths[widths > 0].tolist())  # a group is a kept width
    for w in set(widths.tolist()):  # fields of one kept width share one table
        assert len(set(stored[widths == w].tolist())) == 1
    if slack == 0:
        np.testing.assert_array_equal(stored, widths)


def test_small_fields_join_a_wider_table_for_free():
    # a 7-row field of width 2 pads into the width-5 table (21 zero entries, 0.4 % of the 5,014 kept)
    assert group_widths(np.array([2, 5]), np.array([7, 1000])).tolist() == [5, 5]
    # padding 1000 rows by 3 columns would be 60 % more: two tables
    assert group_widths(np.array([2, 5]), np.array([1000, 1000])).tolist() == [2, 5]


def test_single_field_lookup_takes_ids_of_any_shape():
    keep = np.array([[True, False, True]])
    layer = ked.PrunableEmbedding(4, 3)
    layer.build()
    layer.embedding_variable.assign(np.arange(12, dtype=np.float32).reshape(4, 3))
    layer.set_dimension_mask(keep)
    lookup = compact_layer(layer).lookup
    got = lookup.padded(tf.constant([[0, 3], [2, 2]])).numpy()
    assert got.shape == (2, 2, 3) and got[0, 1].tolist() == [9.0, 0.0, 11.0]
    assert lookup.folded(tf.constant([[0, 3], [2, 2]])).numpy()[0].tolist() == [0.0, 2.0, 9.0, 11.0]
    assert lookup.folded_codes(2).tolist() == [0, 2, 3, 5]


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=4), st.integers(1, 12), st.integers(0, 10_000),
       st.sampled_from(["auto", "head", "offsets", "runs", "planes", "sparse"]),
       st.sampled_from(["xla", "auto", "prefix", "ranged"]))
def test_value_lookup_equals_prefix_reference(vocab, D, seed, layout, read):
    assume(not (read == "xla" and layout == "head"))  # the head layout is not compiled (`check_layout`)
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, D + 1, sum(vocab))
    layer, table = _layer(vocab, D, seed, sizes=sizes)
    jit = read == "xla"
    lookup = compact_layer(layer, value_layout=layout, jit_compile=jit, value_read="prefix" if jit else read,
                           value_dense_fields=False).lookup  # the packed layouts alone: every field packed
    assert lookup.read == ("prefix" if jit else read)
    ids = np.stack([rng.integers(0, n, size=(5,)) for n in vocab], axis=-1)
    rows = ids + ked.fields.field_offsets(vocab)
    want = reference.prefix_lookup(table, sizes, rows)  # [5, F, D]
    np.testing.assert_array_equal(lookup.padded(tf.constant(ids)).numpy(), want)
    # folded: each field padded only to the layer's widest value; columns past a field's widest are -1 (zero)
    folded, codes = lookup.folded(tf.constant(ids)).numpy(), lookup.folded_codes(1)
    assert folded.shape == (5, len(vocab) * lookup.width)
    assert lookup.width == sizes.max()
    np.testing.assert_array_equal(folded[:, codes >= 0], want.reshape(5, -1)[:, codes[codes >= 0]])
    assert not folded[:, codes < 0].any()


def test_invalid_ids_error_names_layer_field_value_and_vocabulary():
    layer, _ = _layer([10, 20], 4, 0, keep=np.ones((2, 4), bool), names=["user", "item"])
    lookup = compact_layer(layer).lookup
    with pytest.raises(tf.errors.InvalidArgumentError, match=r'layer "emb": field "item" received id 20, '
                       r"outside its vocabulary of 20 ids \[0, 20\)"):
        lookup.folded(tf.constant([[1, 2], [3, 20]]))
    with pytest.raises(tf.errors.InvalidArgumentError, match='field "user" received id -1'):
        lookup.padded(tf.constant([[-1, 2]]))
    big = tf.constant([[2**33 + 1, 2]], tf.int64)  # would wrap to 1 as int32: still an error
    with pytest.raises(tf.errors.InvalidArgumentError, match="received id 8589934593"):
        lookup.padded(big)


@pytest.mark.parametrize("per_value", [False, True])
def test_zero_policy_serves_zero_vectors_for_invalid_ids_only(per_value):
    rng = np.random.default_rng(0)
    kw = {"sizes": rng.integers(0, 5, 30)} if per_value else {"keep": rng.random((2, 4)) < 0.7}
    layer, _ = _layer([10, 20], 4, 0, **kw)
    good = compact_layer(layer).lookup
    zero = compact_layer(layer, on_invalid_id="zero").lookup
    ids = np.array([[1, 2], [3, 25], [-4, 7]])
    clean = np.where((ids >= 0) & (ids < [10, 20]), ids, 0)
    want = good.padded(tf.constant(clean)).numpy()
    want[1, 1] = 0.0
    want[2, 0] = 0.0
    np.testing.assert_array_equal(zero.padded(tf.constant(ids)).numpy(), want)
    codes = zero.folded_codes(1)
    got = zero.folded(tf.constant(ids)).numpy()
    np.testing.assert_array_equal(got[:, codes >= 0], want.reshape(3, -1)[:, codes[codes >= 0]])


@pytest.mark.parametrize("per_value", [False, True])
@pytest.mark.parametrize("table_dtype", ["float16", "int8"])
def test_stored_values_swap_in_and_back_exactly(per_value, table_dtype):
    rng = np.random.default_rng(1)
    kw = {"sizes": rng.integers(0, 5, 30)} if per_value else {"keep": rng.random((2, 4)) < 0.7}
    layer, table = _layer([10, 20], 4, 1, **kw)
    compact = compact_layer(layer, table_dtype=table_dtype)
    ids = np.stack([np.arange(10), np.arange(10) * 2], -1)
    served = compact.lookup.padded(tf.constant(ids)).numpy()
    before = np.asarray(layer.embedding_variable).copy()
    with compact.stored_values():
        # the training lookup now reads exactly what the export serves
        np.testing.assert_allclose(np.asarray(layer(ids)), served, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(layer.embedding_variable), before)
    assert compact.nbytes < 4 * layer.dimension_mask().kept_params + 4 * 31


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=2, max_size=6), st.integers(1, 6), st.floats(0.0, 1.0),
       st.integers(0, 10_000), st.booleans(), st.booleans(), st.sampled_from(["error", "zero", "unchecked"]),
       st.sampled_from([(7,), (4, 3)]))
def test_per_field_columns_serve_what_the_stacked_ids_serve(vocab, D, keep_p, seed, jit, per_value, policy, shape):
    """`folded_fields` (one id tensor per field, each width group stacking only its own
    fields; the exporter's path behind `StackFields`) against `folded` of the stacked ids,
    value by value: int32 and int64 columns mixed, fields that keep nothing, one-field
    groups, sequences of ids per field, and invalid ids under the "zero" policy ("unchecked":
    valid ids only, both paths with no check built)."""
    rng = np.random.default_rng(seed)
    kw = {"sizes": rng.integers(0, D + 1, sum(vocab))} if per_value else {"keep": rng.random((len(vocab), D)) < keep_p}
    layer, _ = _layer(vocab, D, seed, **kw)
    lookup = compact_layer(layer, jit_compile=jit, on_invalid_id=policy).lookup
    ids = np.stack([rng.integers(0, n, shape) for n in vocab], axis=-1)
    if policy == "zero":  # some ids outside their field's vocabulary, both sides
        bad = rng.random(ids.shape) < 0.3
        ids = np.where(bad, rng.choice([-5, -1, 40, 2**40], ids.shape), ids)
    columns = [tf.constant(ids[..., f], tf.int64 if f % 2 or abs(ids[..., f]).max() >= 2**31 else tf.int32)
               for f in range(len(vocab))]
    want = lookup.folded(tf.constant(ids, tf.int64)).numpy()
    np.testing.assert_array_equal(lookup.folded_fields(columns).numpy(), want)


def test_per_field_columns_check_every_field_and_name_the_exact_id():
    keep = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 1]], bool)  # field "b" keeps nothing
    layer, table = _layer([10, 20, 30], 4, 0, keep=keep, names=["a", "b", "c"])
    lookup = compact_layer(layer).lookup

    def cols(*fields):
        return [tf.constant(f, tf.int64) for f in fields]

    got = lookup.folded_fields(cols([1, 9], [0, 19], [3, 29])).numpy()
    want = reference.masked_lookup(table, layer.dimension_mask(), np.array([[1, 0, 3], [9, 19, 29]]), multi_field=True)
    codes = lookup.folded_codes(1)
    np.testing.assert_array_equal(got[:, codes >= 0], want.reshape(2, -1)[:, codes[codes >= 0]])
    # a field in no table is still checked; an int64 id is reported as sent, not clipped to int32
    with pytest.raises(tf.errors.InvalidArgumentError, match='field "b" received id 20, outside its vocabulary of 20'):
        lookup.folded_fields(cols([1], [20], [3]))
    with pytest.raises(tf.errors.InvalidArgumentError, match='field "c" received id 1099511627776'):
        lookup.folded_fields(cols([1], [2], [2**40]))
    # the first field with a bad id, and its largest bad id (a negative id counts as the largest)
    with pytest.raises(tf.errors.InvalidArgumentError, match='field "a" received id -1,'):
        lookup.folded_fields(cols([1, -1], [2, 2], [99, 3]))
    with pytest.raises(tf.errors.InvalidArgumentError, match='field "c" received id 99,'):
        lookup.folded_fields(cols([1, 2], [2, 2], [99, 31]))
    with pytest.raises(tf.errors.InvalidArgumentError, match='field "c" received id -2,'):
        lookup.folded_fields([tf.constant([1, 2]), tf.constant([2, 2]), tf.constant([-2, 31])])  # int32
    with pytest.raises(ValueError, match="one id tensor per field"):
        lookup.folded_fields(cols([1], [2]))
    # ids of any integer dtype gather as int32 / int64 would, in both policies
    odd = [tf.constant([1, 9], tf.int16), tf.constant([0, 19], tf.uint8), tf.constant([3, 29], tf.uint32)]
    np.testing.assert_array_equal(lookup.folded_fields(odd).numpy(), got)
    zero = compact_layer(layer, on_invalid_id="zero").lookup
    np.testing.assert_array_equal(zero.folded_fields(odd).numpy(), got)
    with pytest.raises(tf.errors.InvalidArgumentError, match='field "a" received id -2,'):
        lookup.folded_fields([tf.constant([-2, 9], tf.int16)] + odd[1:])


@pytest.mark.parametrize("stacked", [False, True])
def test_id_check_compares_each_fields_largest_id_not_every_id(stacked):
    """The "error" check reduces each field's ids to their largest (unsigned: a negative id is
    the largest) and compares F values with the vocabularies: no comparison of every id, whose
    cost grows with the batch. Per-field inputs (`check_stacked`) and stacked ids (`IdGuard`)."""
    keep = np.array([[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 1]], bool)
    layer, _ = _layer([10, 20, 30], 4, 0, keep=keep, names=["a", "b", "c"])
    lookup = compact_layer(layer).lookup
    if stacked:
        fn = tf.function(lookup.folded).get_concrete_function(tf.TensorSpec([None, 3], tf.int64))
        call = lambda ids: fn(tf.constant(ids, tf.int64))  # noqa: E731
    else:
        fn = tf.function(lambda *c: lookup.folded_fields(list(c))).get_concrete_function(
            *[tf.TensorSpec([None], tf.int64)] * 3)
        call = lambda ids: fn(*[tf.constant(np.asarray(ids)[:, f], tf.int64) for f in range(3)])  # noqa: E731
    less = [n for n in fn.graph.get_operations() if n.type == "Less"]
    assert [op.outputs[0].shape.as_list() for op in less] == [[3]]
    assert call([[1, 2, 3], [9, 19, 29]]).shape == (2, lookup.kept_width)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r'field .{0,2}b.{0,2} received id -4,'):
        call([[1, 2, 3], [9, -4, 30]])
    # ids narrower than 32 bits: the largest bad id is reported as sent
    guard = lookup.guard
    with pytest.raises(tf.errors.InvalidArgumentError, match='field "c" received id -7,'):
        guard.check_stacked(tf.constant([[1, 2], [3, 4], [5, -7]], tf.int16), np.array([0, 1, 2]))


def test_local_columns_of_a_shared_id_space_by_hand():
    layout = ked.fields.FieldLayout((3, 5), ("a", "b"), multi_field=True, global_ids=True)
    got = layout.local_columns([tf.constant([0, 2]), tf.constant([3, 7], tf.int64)], "emb")
    assert [c.numpy().tolist() for c in got] == [[0, 2], [0, 4]] and got[1].dtype == tf.int64
    single = ked.fields.FieldLayout((3,), ("a",), multi_field=False)
    with pytest.raises(ValueError, match="layer 'emb' embeds 1 field"):
        single.local_columns([tf.constant([0])], "emb")


def test_stack_fields_stacks_as_the_per_field_path_reads_ids():
    """`StackFields` (training graph) and the exporter's per-field path share `stack_columns`:
    mixed dtypes meet at int64 (a large int64 id is clipped to int32, never wrapped into range),
    float ids are cast, `[batch, 1]` inputs squeezed."""
    got = ked.layers.StackFields()([tf.constant([[1], [2]], tf.int32), tf.constant([3, 2**32 + 5], tf.int64),
                                    tf.constant([4.0, 7.9])])
    assert got.dtype == tf.int32 and got.numpy().tolist() == [[1, 3, 4], [2, 2**31 - 1, 7]]
    assert ked.fields.stack_columns([tf.constant([1], tf.int32), tf.constant([2**40], tf.int64)]).numpy().tolist() \
        == [[1, 2**40]]


def test_dense_field_plan_by_hand():
    """A field is stored whole when padding its values to its widest size costs at most 10 % of its
    own kept values, and while the layer's bytes stay within `max_overhead` x the kept bytes."""
    assert DENSE_FIELD_SLACK == 0.10
    uniform = np.full(50, 16)  # 800 values, no padding
    spread = np.r_[np.ones(990), np.full(10, 16)]  # 1,150 values; whole: 16,000 entries
    empty = np.zeros(30, int)  # keeps nothing: an empty table
    assert dense_field_plan([uniform, spread, empty], 16).tolist() == [True, False, True]
    # 90 rows at 10 and 10 at 1: 910 values, 90 zeros whole (9.9 %); 91 % would be 100 zeros (11 %)
    near = np.r_[np.full(90, 10), np.ones(10, int)]
    assert dense_field_plan([near], 16).tolist() == [True]
    assert dense_field_plan([np.r_[np.full(89, 10), np.ones(11, int)]], 16).tolist() == [False]
    # within 1.10x both fields whole: 4 x (800 + 1,000) = 7,200 B <= 1.10 x 4 x 1,710 = 7,524 B;
    # within 1.03x (7,045 B) the padded field is packed again, if its packed bytes fit beside
    packed_near = layouts.layout_bytes(near, 16)[layouts.choose_layout(near, 16, 1.03)]
    assert 4 * 800 + packed_near <= 1.03 * 4 * 1710 < 4 * 1800
    assert dense_field_plan([uniform, near], 16).tolist() == [True, True]
    assert dense_field_plan([uniform, near], 16, max_overhead=1.03).tolist() == [True, False]
    # nothing fits: every field packed
    assert dense_field_plan([uniform, near], 16, max_overhead=0.5).tolist() == [False, False]


def test_dense_field_plan_narrows_the_sizes_without_wrapping_them():
    """The packed fields' sizes are planned from a copy in the narrowest integers that hold D
    (int8 up to 127, 1 B per row): at D = 200 a size of 200 stays 200 (an int8 copy would make
    it -56, which the layout refuses), and a size outside [0, D] is refused before any cast."""
    whole = np.full(100, 200)
    spread = np.r_[np.ones(990, int), np.full(10, 200)]
    assert dense_field_plan([whole, spread], 200).tolist() == [True, False]
    with pytest.raises(ValueError, match=r"value sizes must lie in \[0, 16\]; field 1 has sizes in \[0, 300\]"):
        dense_field_plan([np.full(10, 4), np.array([0, 300])], 16)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.sampled_from(["uniform", "near", "random", "empty"])),
                min_size=2, max_size=5),
       st.integers(2, 10), st.integers(0, 10_000), st.sampled_from(["auto", "offsets", "sparse"]), st.booleans(),
       st.sampled_from(["error", "zero", "unchecked"]))
def test_split_lookup_equals_prefix_reference(fields, D, seed, layout, jit, policy):
    """A per-value layer with some fields stored whole (`SplitLookup`) serves what the layer
    computes: padded, folded (codes mapped to the layer's fields) and per-field columns, value
    by value; invalid ids get zeros under "zero"; bytes are the kept values plus the padding
    its `padding_params` counts (the whole-stored fields' rows padded to their widest size, and
    `group_widths`' padding)."""
    assume(not (jit and layout == "head"))
    rng = np.random.default_rng(seed)
    vocab = [n for n, _ in fields]
    sizes = []
    for n, kind in fields:
        w = int(rng.integers(1, D + 1))
        sizes.append({"uniform": np.full(n, w), "empty": np.zeros(n, int), "random": rng.integers(0, D + 1, n),
                      "near": np.where(rng.random(n) < 0.05, rng.integers(0, w + 1, n), w)}[kind])
    layer, table = _layer(vocab, D, seed, sizes=np.concatenate(sizes))
    lookup = compact_layer(layer, value_layout=layout, jit_compile=jit, on_invalid_id=policy).lookup
    dense = dense_field_plan(sizes, D, layout=layout, static=jit)
    if not dense.any():
        expected = layouts.choose_layout(np.concatenate(sizes), D, static=jit) if layout == "auto" else layout
        assert lookup.layout == expected and lookup.dense_fields == []
        return
    assert lookup.dense_fields == [layer.field_names[f] for f in np.flatnonzero(dense)]
    widths = np.array([s.max() for s in sizes])
    whole_padding = sum(len(sizes[f]) * widths[f] - sizes[f].sum() for f in np.flatnonzero(dense))
    stored = group_widths(widths[dense], np.asarray(vocab)[dense])
    group_padding = int((stored - widths[dense]) @ np.asarray(vocab)[dense])
    assert lookup.padding_params == whole_padding + group_padding
    assert lookup.layout.startswith("field")
    if not dense.all():  # the packed part's layout is chosen on the packed fields' rows only
        rest = np.concatenate([sizes[f] for f in np.flatnonzero(~dense)])
        expected = layouts.choose_layout(rest, D, static=jit) if layout == "auto" else layout
        assert lookup.layout == f"field+{expected}"
    ids = np.stack([rng.integers(0, n, size=(4, 3)) for n in vocab], axis=-1)
    if policy == "zero":
        bad = rng.random(ids.shape) < 0.2
        ids = np.where(bad, rng.choice([-3, 41, 2**33], ids.shape), ids)
    valid = (ids >= 0) & (ids < np.asarray(vocab))
    rows = np.where(valid, ids, 0) + ked.fields.field_offsets(vocab)
    want = reference.prefix_lookup(table, np.concatenate(sizes), rows) * valid[..., None]  # [4, 3, F, D]
    np.testing.assert_array_equal(lookup.padded(tf.constant(ids, tf.int64)).numpy(), want)
    folded, codes = lookup.folded(tf.constant(ids, tf.int64)).numpy(), lookup.folded_codes(3)
    assert folded.shape == (4, codes.size)
    np.testing.assert_array_equal(folded[:, codes >= 0], want.reshape(4, -1)[:, codes[codes >= 0]])
    assert not folded[:, codes < 0].any()
    assert np.unique(codes[codes >= 0]).size == (codes >= 0).sum()  # each entry once
    columns = [tf.constant(ids[..., f], tf.int64 if f % 2 or abs(ids[..., f]).max() >= 2**31 else tf.int32)
               for f in range(len(vocab))]
    np.testing.assert_array_equal(lookup.folded_fields(columns).numpy(), folded)


def test_split_lookup_checks_every_field_once_and_names_the_bad_id():
    """Under "error" the ids of all fields are checked once (one comparison of F largest ids),
    whether the bad id is in a whole-stored field or a packed one."""
    sizes = [np.full(6, 3), np.r_[np.zeros(900, int), np.full(100, 4)], np.full(4, 2)]
    layer, _ = _layer([6, 1000, 4], 4, 0, sizes=np.concatenate(sizes), names=["a", "b", "c"])
    lookup = compact_layer(layer).lookup
    assert lookup.dense_fields == ["a", "c"] and lookup.layout.startswith("field+")
    fn = tf.function(lambda *c: lookup.folded_fields(list(c))).get_concrete_function(
        *[tf.TensorSpec([None], tf.int64)] * 3)
    less = [n for n in fn.graph.get_operations() if n.type == "Less"]
    assert [op.outputs[0].shape.as_list() for op in less] == [[3]]

    def call(a, b, c):
        return fn(*[tf.constant(x, tf.int64) for x in (a, b, c)])

    assert call([1, 5], [0, 999], [3, 0]).shape[0] == 2
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r'field .{0,2}c.{0,2} received id 4, outside its vocabulary of 4'):
        call([1, 5], [0, 999], [3, 4])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r'field .{0,2}b.{0,2} received id 1000,'):
        call([1, 5], [1000, 99], [3, 4])
    with pytest.raises(tf.errors.InvalidArgumentError, match='field "a" received id -1,'):
        lookup.padded(tf.constant([[-1, 2, 3]]))


@pytest.mark.parametrize("dense", [False, True])
def test_a_per_value_layer_that_keeps_nothing_folds_to_no_columns(dense):
    """Every value at size 0: the folded output has no columns but keeps the batch (a reshape to
    `[-1, 0]` cannot infer it), packed or stored whole; ids are still checked."""
    layer, _ = _layer([1, 1], 1, 168, sizes=np.zeros(2, int))
    lookup = compact_layer(layer, value_dense_fields=dense).lookup
    ids = tf.constant(np.zeros((5, 2), np.int64))
    assert lookup.folded(ids).shape == (5, 0) and lookup.folded_codes(1).size == 0
    assert lookup.padded(ids).numpy().tolist() == np.zeros((5, 2, 1)).tolist()
    with pytest.raises(tf.errors.InvalidArgumentError, match="received id 1, outside its vocabulary of 1"):
        lookup.folded(tf.constant([[0, 1]], tf.int64))
