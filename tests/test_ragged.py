import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from keras_embdim.export import layouts as ragged

import reference


def _index(packed, arrays):
    return ragged.lookup_index(arrays, packed.meta)


def _lookup(packed, ids, multi_field=True, jit=False, ranged=False):
    arrays = {k: tf.constant(v) for k, v in packed.arrays.items()}
    index = _index(packed, arrays)

    def fn(ids):
        return ragged.packed_lookup(
            arrays, ids, field_starts=packed.field_starts, output_dim=packed.output_dim,
            multi_field=multi_field, ranged=ranged, static=jit, index=index, **packed.meta,
        )

    if jit:
        fn = tf.function(fn, jit_compile=True)
    return fn(tf.constant(ids)).numpy()


def _stored(packed, sizes):
    """The sizes `unpack_sizes` gives back: a head layout's head rows at the head's width, the rows
    narrower than its base at the base's width (both stored zero-padded)."""
    if packed.layout != "head":
        return sizes
    return np.where(sizes >= packed.head_from, packed.head_width, np.maximum(sizes, packed.base_width))


def _sizes(rng, n, D, kind):
    if kind == "any":
        return rng.integers(0, D + 1, size=n)
    if kind == "one":
        return np.full(n, rng.integers(0, D + 1))
    if kind == "sorted":  # frequency-sorted vocabularies: sizes fall with the id
        return np.sort(rng.integers(0, D + 1, size=n))[::-1]
    choices = rng.choice(D + 1, size=min(D + 1, 2 if kind == "two" else 4), replace=False)
    return rng.choice(choices, size=n)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(1, 120), min_size=1, max_size=4),
    st.integers(1, 40),
    st.integers(0, 10_000),
    st.sampled_from(["any", "two", "one", "few", "sorted"]),
    st.sampled_from(ragged.LAYOUTS),
)
def test_packed_lookup_equals_prefix_reference(field_sizes, D, seed, kind, layout):
    rng = np.random.default_rng(seed)
    n = sum(field_sizes)
    table = rng.standard_normal((n, D)).astype(np.float32)
    sizes = _sizes(rng, n, D, kind)
    packed = ragged.pack(table, sizes, field_sizes=field_sizes, layout=layout)
    assert packed.layout == layout and packed.kept == sizes.sum()
    # numpy decoding (a second implementation) gives the sizes and the masked table back
    np.testing.assert_array_equal(ragged.unpack_sizes(packed), _stored(packed, sizes))
    np.testing.assert_array_equal(ragged.unpack(packed), reference.prefix_lookup(table, sizes, np.arange(n)))
    assert packed.nbytes == ragged.layout_bytes(sizes, D)[layout]
    # the TF lookup: local ids per field, several fields on the last axis
    ids = np.stack([rng.integers(0, f, size=(5, 3)) for f in field_sizes], axis=-1)
    want = reference.prefix_lookup(table, sizes, ids + packed.field_starts)
    np.testing.assert_array_equal(_lookup(packed, ids), want)
    np.testing.assert_array_equal(_lookup(packed, ids, ranged=True), want)  # the ragged-range reader
    # a single-field table takes ids of any shape
    one = ragged.pack(table, sizes, layout=layout)
    flat = rng.integers(0, n, size=(4, 2))
    np.testing.assert_array_equal(_lookup(one, flat, multi_field=False), reference.prefix_lookup(table, sizes, flat))


@pytest.mark.parametrize("layout", ragged.STATIC_ORDER)
def test_xla_compiled_lookup_is_identical(layout):
    rng = np.random.default_rng(1)
    table = rng.standard_normal((500, 16)).astype(np.float32)
    sizes = rng.integers(0, 17, 500)
    packed = ragged.pack(table, sizes, field_sizes=[100, 400], layout=layout)
    ids = np.stack([rng.integers(0, 100, 64), rng.integers(0, 400, 64)], -1)
    np.testing.assert_array_equal(_lookup(packed, ids, jit=True), _lookup(packed, ids))


@pytest.mark.parametrize("layout", ["planes", "sparse"])
def test_planes_are_decoded_word_by_word_not_broadcast(layout):
    """The bit planes' words are read plane by plane (`[N]` each): no elementwise op of the
    lookup works on the `[N, bits]` words with the row's shift broadcast along the planes
    (several times the op time of the same elements unbroadcast), and the lookup still
    gives the prefix reference."""
    rng = np.random.default_rng(3)
    table = rng.standard_normal((640, 16)).astype(np.float32)
    sizes = rng.integers(0, 17, 640)  # 5 bits of codes
    packed = ragged.pack(table, sizes, field_sizes=[140, 500], layout=layout)
    assert packed.bits >= 2
    arrays = {k: tf.constant(v) for k, v in packed.arrays.items()}
    index = _index(packed, arrays)
    fn = tf.function(lambda ids: ragged.packed_lookup(
        arrays, ids, field_starts=packed.field_starts, output_dim=16, multi_field=True, index=index, **packed.meta,
    )).get_concrete_function(tf.TensorSpec([None, 2], tf.int32))
    elementwise = {"BitwiseAnd", "RightShift", "LeftShift", "PopulationCount", "Mul", "Cast"}
    wide = [op.name for op in fn.graph.get_operations()
            if op.type in elementwise and op.outputs[0].shape.rank == 2 and op.outputs[0].shape[-1] == packed.bits]
    assert wide == []
    ids = np.stack([rng.integers(0, 140, 50), rng.integers(0, 500, 50)], -1)
    np.testing.assert_array_equal(fn(tf.constant(ids, tf.int32)).numpy(),
                                  reference.prefix_lookup(table, sizes, ids + packed.field_starts))


def test_layout_bytes_by_hand():
    n, D = 200, 16
    sizes = np.arange(n) % 4  # sizes 0..3, 300 kept values
    b = ragged.layout_bytes(sizes, D)
    values = 4 * (300 + 1)  # the kept values and the zero slot
    # offsets: uint8 per row + sentinel, int32 per block of 16 rows (201 rows -> 13 blocks)
    assert b["offsets"] == values + 201 + 4 * 13
    # runs: every row starts a run: int32 row + uint8 size + int32 start
    assert b["runs"] == values + 200 * 9
    # planes: codes 0..3 -> 2 bits; 4 blocks of 64 rows, each an int32 start and 2 uint64 words
    assert b["planes"] == values + 4 * (4 + 2 * 8)
    assert ragged.layout_bytes(np.full(n, 5), D)["runs"] == 4 * (1000 + 1) + 9  # one run
    assert ragged.layout_bytes(np.full(n, 5), D)["planes"] == 4 * (1000 + 1) + 4 * 4  # 0 bits: starts only
    # sizes {0, 16} (PME-like): offset 0, scale 16, one bit per row
    p = ragged.pack(np.ones((n, D), np.float32), np.arange(n) % 2 * 16, layout="planes")
    assert (p.size_offset, p.size_scale, p.bits) == (0, 16, 1)
    # sizes 1..16 (min_dim 1): offset 1, scale 1, four bits
    p = ragged.pack(np.ones((n, D), np.float32), np.arange(n) % 16 + 1, layout="planes")
    assert (p.size_offset, p.size_scale, p.bits) == (1, 1, 4)


def test_planes_words_by_hand():
    # 3 rows of sizes 2, 3, 0: codes (offset 0, scale 1) 2 = 10b, 3 = 11b, 0 = 00b
    p = ragged.pack(np.arange(12, dtype=np.float32).reshape(3, 4), np.array([2, 3, 0]), layout="planes")
    assert p.bits == 2
    # plane 0 holds bit 0 of each row's code (rows 0..2 -> bits 0, 1, 0): 0b010
    # plane 1 holds bit 1 (1, 1, 0): 0b011
    np.testing.assert_array_equal(p.arrays["planes"], np.array([[0b010, 0b011]], np.uint64))
    np.testing.assert_array_equal(p.arrays["base"], [0])
    np.testing.assert_array_equal(p.arrays["values"], [0, 1, 4, 5, 6, 0])


def test_sparse_words_by_hand():
    # 5 rows of sizes 0, 3, 0, 0, 1 (D = 4): 0 is the common size, rows 1 and 4 are listed; their
    # sizes 3 and 1 are 1 + 2 * code: codes 1, 0 in one plane
    p = ragged.pack(np.arange(20, dtype=np.float32).reshape(5, 4), np.array([0, 3, 0, 0, 1]), layout="sparse")
    assert p.common == 0 and (p.size_offset, p.size_scale, p.bits) == (1, 2, 1)
    np.testing.assert_array_equal(p.arrays["mark"], np.array([0b10010], np.uint64))
    np.testing.assert_array_equal(p.arrays["rank"], [0])
    np.testing.assert_array_equal(p.arrays["planes"], np.array([[0b01]], np.uint64))
    np.testing.assert_array_equal(p.arrays["base"], [0])
    np.testing.assert_array_equal(p.arrays["values"], [4, 5, 6, 16, 0])


def test_sparse_start_is_common_times_unlisted_plus_listed_sizes():
    # 200 rows of size 1 but rows 3, 70 and 130 of size 5: common 1, three listed rows of one size
    # (no planes: size_offset 5), one per block of 64 rows
    sizes = np.ones(200, np.int64)
    sizes[[3, 70, 130]] = 5
    p = ragged.pack(np.ones((200, 16), np.float32), sizes, layout="sparse")
    assert (p.common, p.bits, p.size_offset) == (1, 0, 5) and "planes" not in p.arrays
    np.testing.assert_array_equal(p.arrays["mark"], np.array([1 << 3, 1 << 6, 1 << 2, 0], np.uint64))
    np.testing.assert_array_equal(p.arrays["rank"], [0, 1, 2, 3])
    np.testing.assert_array_equal(p.arrays["base"], [0])  # the starts of the listed rows 0..3: 0, 5, 10, 15
    g = np.array([0, 3, 4, 70, 100, 130, 131, 199], np.int32)
    arrays = {k: tf.constant(v) for k, v in p.arrays.items()}
    start, size = ragged.start_and_size(arrays, tf.constant(g), **p.meta)
    # row 100: 98 rows of size 1 and 2 of size 5 before it
    np.testing.assert_array_equal(start.numpy(), [0, 3, 8, 74, 108, 138, 143, 211])
    np.testing.assert_array_equal(size.numpy(), [1, 5, 1, 5, 1, 5, 1, 1])
    np.testing.assert_array_equal(start.numpy(), np.concatenate([[0], np.cumsum(sizes)])[g])
    # bytes: 4 blocks of a uint64 word and an int32 count, one int32 start of the listed rows' planes
    assert p.nbytes == ragged.layout_bytes(sizes, 16)["sparse"] == 4 * (212 + 1) + 4 * 12 + 4


def test_head_words_by_hand():
    # 6 rows of sizes 0, 4, 2, 0, 4, 1 (D = 4): kept 11 values, 44 B, the limit 1.10x is 48.4 B. Nothing fits
    # (the smallest: no base, rows 1 and 4 in the head (3 x 4 x 4 = 48 B with its zero row), rows 2 and 5 in
    # `values` (3 + the zero slot = 16 B), a key per row wider than 0: steps 2, 1, 2, 1 (uint8, 4 B) and codes
    # 4, 2, 4, 1 (4: a head row; two per byte, 2 B): 70 B; a base of 1 column alone takes 24 B), so the
    # smallest is taken.
    sizes = np.array([0, 4, 2, 0, 4, 1])
    table = np.arange(24, dtype=np.float32).reshape(6, 4)
    p = ragged.pack(table, sizes, layout="head")
    assert (p.base_width, p.head_from, p.head_rows, p.head_width, p.head_kept, p.tail_kept) == (0, 4, 2, 4, 8, 3)
    np.testing.assert_array_equal(p.arrays["key_steps"], np.array([2, 1, 2, 1], np.uint8))
    np.testing.assert_array_equal(p.arrays["key_codes"], np.array([4 | 2 << 4, 4 | 1 << 4], np.uint8))
    np.testing.assert_array_equal(ragged.head_keys(p.arrays["key_steps"]), [1, 2, 4, 5])
    np.testing.assert_array_equal(p.arrays["head"], [[4, 5, 6, 7], [16, 17, 18, 19], [0, 0, 0, 0]])
    np.testing.assert_array_equal(p.arrays["values"], [8, 9, 20, 0])  # rows 2 and 5, then the zero slot
    assert "base" not in p.arrays
    assert p.nbytes == ragged.layout_bytes(sizes, 4)["head"] == 48 + 16 + 4 + 2
    # served: the hash table gives the head rows their place in `head` (0, 1), the tail rows
    # H + 1 + (start << 2 | size) (2 bits: sizes below head_from = 4): row 2 3 + (0 | 2), row 5
    # 3 + (2 << 2 | 1); every other row H = 2 (`head`'s zero row)
    index = ragged.lookup_index({k: tf.constant(v) for k, v in p.arrays.items()}, p.meta)
    np.testing.assert_array_equal(index.lookup(tf.constant([0, 1, 2, 3, 4, 5], tf.int32)).numpy(), [2, 0, 5, 2, 1, 12])
    np.testing.assert_array_equal(_lookup(p, np.arange(6), multi_field=False),
                                  reference.prefix_lookup(table, sizes, np.arange(6)))
    np.testing.assert_array_equal(ragged.unpack(p), reference.prefix_lookup(table, sizes, np.arange(6)))


def test_head_base_by_hand():
    # 8 rows of sizes 1, 1, 3, 1, 1, 1, 1, 2 (D = 3): kept 11 values, 44 B, 48.4 B allowed at 1.10x. Nothing
    # fits; the smallest: a base of 1 column (every row, 32 B), row 2 in the head (2 rows x 3 x 4 B with the
    # zero row: 24 B), row 7's second column in `values` (with the zero slot: 8 B), keys for rows 2 and 7
    # (steps 3, 5: 2 B; codes 2 (head_from - base) and 1 in one byte): 67 B. Without a base every row is
    # keyed (12 B of keys) and the six rows at 1 go to `values` (with row 7 and the zero slot: 36 B): 72 B.
    # At 2.0x (88 B) the plan with no tail row fits: the base, rows 2 and 7 whole in the head (36 B), the
    # zero slot, the same keys (both head rows: code 1): 75 B.
    sizes = np.array([1, 1, 3, 1, 1, 1, 1, 2])
    table = np.arange(24, dtype=np.float32).reshape(8, 3)
    want = reference.prefix_lookup(table, sizes, np.arange(8))
    for max_overhead, plan, head, codes, values in [
        (1.10, (1, 3, 1, 1, 67), [[6, 7, 8], [0, 0, 0]], 2 | 1 << 4, [22, 0]),
        (2.00, (1, 2, 2, 0, 75), [[6, 7, 8], [21, 22, 0], [0, 0, 0]], 1 | 1 << 4, [0]),
    ]:
        p = ragged.pack(table, sizes, layout="head", max_overhead=max_overhead)
        assert (p.base_width, p.head_from, p.head_rows, p.tail_kept, p.nbytes) == plan
        np.testing.assert_array_equal(p.arrays["base"], table[:, :1])
        np.testing.assert_array_equal(p.arrays["head"], head)  # whole rows (the base's column too), padded
        np.testing.assert_array_equal(p.arrays["key_steps"], np.array([3, 5], np.uint8))
        np.testing.assert_array_equal(p.arrays["key_codes"], np.array([codes], np.uint8))
        np.testing.assert_array_equal(p.arrays["values"], values)
        np.testing.assert_array_equal(_lookup(p, np.arange(8), multi_field=False), want)
        np.testing.assert_array_equal(_lookup(p, np.arange(8), multi_field=False, ranged=True), want)
        np.testing.assert_array_equal(ragged.unpack(p), want)
    np.testing.assert_array_equal(ragged.unpack_sizes(p), [1, 1, 3, 1, 1, 1, 1, 3])


def test_head_takes_the_near_widest_rows_when_their_padding_and_keys_fit():
    # 256 rows (D = 8): 64 at 8, 64 at 7, 128 empty; kept 960 values, 3,840 B. Every row wider than 0 is
    # keyed: 128 uint8 steps and 64 B of codes (two per byte). Rows >= 7 in the head: 129 x 8 x 4 = 4,128 B,
    # values the zero slot (4 B): 4,324 B (1.126x); rows of 8 only: 65 x 32 = 2,080 B, the 64 rows at 7 in
    # `values` ((448 + 1) x 4 = 1,796 B): 4,068 B (1.059x).
    rng = np.random.default_rng(0)
    sizes = rng.permutation(np.repeat([8, 7, 0], [64, 64, 128]))
    assert np.diff(np.flatnonzero(sizes), prepend=-1).max() < 256  # no filler key
    table = rng.standard_normal((256, 8)).astype(np.float32)
    ids = rng.integers(0, 256, (40, 1))
    want = reference.prefix_lookup(table, sizes, ids)
    for max_overhead, head_from, nbytes in [(1.20, 7, 4324), (1.15, 7, 4324), (1.10, 8, 4068)]:
        p = ragged.pack(table, sizes, layout="head", max_overhead=max_overhead)
        assert (p.base_width, p.head_from, p.head_width, p.head_rows, p.nbytes) == (
            0, head_from, 8, (sizes >= head_from).sum(), nbytes)
        assert p.nbytes == ragged.layout_bytes(sizes, 8, max_overhead)["head"]
        assert p.head_kept == sizes[sizes >= head_from].sum() and p.arrays["values"].size == 960 - p.head_kept + 1
        # a padded head row: its kept prefix, then zeros
        at7 = np.flatnonzero(sizes == 7)[0]
        if head_from == 7:
            stored = p.arrays["head"][np.count_nonzero(sizes[:at7] >= 7)]
            np.testing.assert_array_equal(stored, np.append(table[at7, :7], 0))
        np.testing.assert_array_equal(_lookup(p, ids, multi_field=False)[:, 0], want[:, 0])
        np.testing.assert_array_equal(ragged.unpack(p), reference.prefix_lookup(table, sizes, np.arange(256)))


@pytest.mark.parametrize("kind", ["empty_rows", "spread", "all_wide", "empty_or_wide", "ones_and_wide"])
def test_head_layout_over_each_kind_of_tail(kind):
    """PME-like sizes (most rows empty, a few whole), sizes spread evenly, every row at one size (all in
    the base, no hash table), rows empty or whole (no tail), most rows at 1 (a base of 1): the keys are
    exactly the rows wider than the base, and lookups (both readers, an empty request) equal the prefix
    reference."""
    rng = np.random.default_rng(4)
    n, D = 3000, 16
    if kind == "empty_rows":
        sizes = np.where(rng.random(n) < 0.1, rng.integers(1, D + 1, n), 0)
        sizes[rng.random(n) < 0.03] = D
    elif kind == "spread":
        sizes = np.where(rng.random(n) < 0.2, D, rng.integers(0, 4, n))
    elif kind == "all_wide":
        sizes = np.full(n, 7)
    elif kind == "empty_or_wide":
        sizes = np.where(rng.random(n) < 0.3, D, 0)
    else:
        sizes = np.where(rng.random(n) < 0.1, rng.integers(2, D + 1, n), 1)
    table = rng.standard_normal((n, D)).astype(np.float32)
    p = ragged.pack(table, sizes, field_sizes=[1000, 2000], layout="head")
    assert p.nbytes == ragged.layout_bytes(sizes, D)["head"]
    assert p.base_width == {"all_wide": 7, "ones_and_wide": 1}.get(kind, 0)
    np.testing.assert_array_equal(ragged.keyed_rows(p)[0], np.flatnonzero(sizes > p.base_width))
    assert p.arrays["head"].shape == (p.head_rows + 1, sizes.max())
    np.testing.assert_array_equal(ragged.unpack_sizes(p), _stored(p, sizes))
    ids = np.stack([rng.integers(0, 1000, (64, 3)), rng.integers(0, 2000, (64, 3))], -1)
    want = reference.prefix_lookup(table, sizes, ids + [0, 1000])
    np.testing.assert_array_equal(_lookup(p, ids), want)
    np.testing.assert_array_equal(_lookup(p, ids, ranged=True), want)
    np.testing.assert_array_equal(_lookup(p, np.zeros((0, 2), np.int64)), np.zeros((0, 2, D)))  # empty request
    if kind != "all_wide":
        with pytest.raises(ValueError, match="the head layout needs `index`"):  # no XLA: a hash table, a split
            _lookup(p, ids, jit=True)


@pytest.mark.parametrize("ranged", [False, True])
def test_head_layout_reads_the_tail_rows_below_head_from(ranged):
    """Sizes 1..13 and a few rows of 16: the tail rows are all narrower than `head_from`, so
    `prefix_rows` reads them `head_from - 1 - base_width` wide and pads them; one hash lookup and no
    index decoded (no popcount, no search)."""
    rng = np.random.default_rng(7)
    n, D = 4000, 16
    sizes = rng.integers(1, 14, n)
    sizes[rng.random(n) < 0.05] = D
    sizes[:13] = np.arange(1, 14)
    table = rng.standard_normal((n, D)).astype(np.float32)
    p = ragged.pack(table, sizes, layout="head")
    assert p.tail_kept and p.head_rows
    ids = np.concatenate([np.arange(13), rng.integers(0, n, 300)])
    want = reference.prefix_lookup(table, sizes, ids)
    arrays = {k: tf.constant(v) for k, v in p.arrays.items()}
    index = ragged.lookup_index(arrays, p.meta)
    fn = tf.function(lambda g: ragged.read_rows(arrays, g, D, ranged=ranged, index=index, **p.meta))
    np.testing.assert_array_equal(fn(tf.constant(ids, tf.int32)).numpy(), want)
    ops = [op.type for op in fn.get_concrete_function(tf.TensorSpec([None], tf.int32)).graph.get_operations()]
    pads = [op.inputs[0].shape[-1] for op in fn.get_concrete_function(
        tf.TensorSpec([None], tf.int32)).graph.get_operations() if op.type == "Pad"]
    assert pads == ([] if ranged else [p.head_from - 1 - p.base_width])
    assert ops.count("LookupTableFindV2") == 1 and "PopulationCount" not in ops and "LowerBound" not in ops


def test_head_key_steps_take_the_fewest_bytes():
    """Rows 0 and n - 1 keyed (size 2, every other row 0): steps 1 and n - 1 as uint8 up to 255; past
    it a filler key (code 0, not in the served table) every 255 (or 65,535) rows while that is
    smaller than wider steps: uint8 with one filler at n = 300, uint16 with one at 70,000, int32 at
    200,000 (uint16 would need three fillers: 5 x 2 B against 2 x 4 B)."""
    for n, steps, dtype in [(200, [1, 199], np.uint8), (300, [1, 255, 44], np.uint8),
                            (70_000, [1, 65535, 4464], np.uint16), (200_000, [1, 199_999], np.int32)]:
        sizes = np.zeros(n, np.int64)
        sizes[[0, n - 1]] = 2
        table = np.arange(2 * n, dtype=np.float32).reshape(n, 2)
        p = ragged.pack(table, sizes, layout="head")
        np.testing.assert_array_equal(p.arrays["key_steps"], np.array(steps, dtype))
        assert p.arrays["key_steps"].dtype == dtype
        np.testing.assert_array_equal(ragged.keyed_rows(p)[0], [0, n - 1])
        ids = np.array([0, 1, 100, n - 2, n - 1])
        np.testing.assert_array_equal(_lookup(p, ids, multi_field=False), reference.prefix_lookup(table, sizes, ids))
        index = ragged.lookup_index({k: tf.constant(v) for k, v in p.arrays.items()}, p.meta)
        assert int(index.size()) == 2  # the fillers are left out


def test_head_index_of_no_keyed_row():
    """A head layout with no row wider than its base: every size 0 (no base, no table, zeros), or
    every size 2 (a base of 2, no table; the empty head's zero row and the zero slot stored)."""
    p = ragged.pack(np.ones((5, 3), np.float32), np.zeros(5, np.int64), layout="head")
    assert p.head_rows == 0 and p.arrays["key_steps"].size == 0 and ragged.lookup_index(p.arrays, p.meta) is None
    np.testing.assert_array_equal(_lookup(p, np.arange(5), multi_field=False), np.zeros((5, 3)))
    table = np.arange(15, dtype=np.float32).reshape(5, 3)
    p = ragged.pack(table, np.full(5, 2), layout="head")
    assert (p.base_width, p.head_rows, p.nbytes) == (2, 0, 5 * 2 * 4 + 2 * 4 + 4)
    np.testing.assert_array_equal(_lookup(p, np.arange(5), multi_field=False),
                                  reference.prefix_lookup(table, np.full(5, 2), np.arange(5)))
    # no key at all: a table still initializes (an import of no key fails), every row gets the zero row
    index = ragged.head_index(tf.constant(np.zeros(0, np.uint8)), tf.constant(np.zeros(0, np.uint8)), head_rows=0,
                              head_from=1, base_width=0, tail_kept=0)
    np.testing.assert_array_equal(index.lookup(tf.constant([0, 3], tf.int32)).numpy(), [0, 0])


def test_wide_rows_use_smaller_blocks_and_wider_local_offsets():
    rng = np.random.default_rng(0)
    for D, shift, local in [(16, 4, np.uint8), (17, 4, np.uint8), (18, 3, np.uint8), (64, 2, np.uint8), (128, 4, np.uint16), (300, 4, np.uint16)]:
        table = rng.standard_normal((40, D)).astype(np.float32)
        sizes = rng.integers(0, D + 1, 40)
        p = ragged.pack(table, sizes, layout="offsets")
        assert p.shift == shift and p.arrays["local"].dtype == local
        np.testing.assert_array_equal(_lookup(p, np.arange(40), multi_field=False), reference.prefix_lookup(table, sizes, np.arange(40)))


def test_int64_offsets_when_the_values_need_them(monkeypatch):
    monkeypatch.setattr(ragged, "_index_dtype", lambda total: np.int64)
    rng = np.random.default_rng(0)
    table = rng.standard_normal((300, 16)).astype(np.float32)
    sizes = rng.integers(0, 17, 300)
    ids = np.stack([rng.integers(0, 100, 30), rng.integers(0, 200, 30)], -1)
    for layout in ragged.STATIC_ORDER:
        p = ragged.pack(table, sizes, field_sizes=[100, 200], layout=layout)
        assert p.arrays["run_start" if layout == "runs" else "base"].dtype == np.int64
        np.testing.assert_array_equal(_lookup(p, ids), reference.prefix_lookup(table, sizes, ids + [0, 100]))
    # the head layout: int64 hash values when a tail row's start, shifted past its size bits, needs them
    p = ragged.pack(table, sizes, field_sizes=[100, 200], layout="head")
    assert p.tail_kept and ragged.lookup_index(p.arrays, p.meta).value_dtype == tf.int32
    wide = dict(p.meta, tail_kept=2**30)
    arrays = {k: tf.constant(v) for k, v in p.arrays.items()}
    index = ragged.lookup_index(arrays, wide)
    assert index.value_dtype == tf.int64
    out = ragged.packed_lookup(arrays, ids, field_starts=p.field_starts, output_dim=16, multi_field=True, index=index,
                               **wide)
    np.testing.assert_array_equal(out.numpy(), reference.prefix_lookup(table, sizes, ids + [0, 100]))


def test_auto_takes_the_fastest_layout_within_the_byte_limit():
    rng = np.random.default_rng(0)
    n, D = 100_000, 16
    scattered = np.clip(rng.poisson(3.2, n), 0, D)  # 12.8 B/row kept: offsets' 1.25 B/row fits 1.10
    assert ragged.choose_layout(scattered, D) == "offsets"
    low = np.clip(rng.poisson(1.6, n), 1, D)  # 1.25 B/row would be 1.19x: the planes (4 bits) fit
    assert ragged.choose_layout(low, D) == ragged.choose_layout(low, D, static=True) == "planes"
    assert ragged.choose_layout(np.sort(low)[::-1], D) == "runs"  # frequency-sorted ids: a few runs
    # the head layout would fit (a base of 1: every row keeps one; the wider rows keyed), but only 33 rows
    # could be padded into its head (275 of 180,661 kept values, < HEAD_MIN_SHARE): nearly every keyed
    # lookup would take its split, so auto leaves it out
    plan = ragged.head_plan(low, D)
    assert (plan.base_width, plan.head_rows, plan.head_kept, low.sum()) == (1, 33, 275, 180_661)
    assert plan.nbytes <= 1.10 * 4 * low.sum()
    # with twice the kept bytes allowed, offsets fit, and the head can pad enough rows to be taken
    assert ragged.choose_layout(low, D, max_overhead=2.0, static=True) == "offsets"
    assert ragged.head_plan(low, D, 2.0).head_kept >= ragged.HEAD_MIN_SHARE * low.sum()
    assert ragged.choose_layout(low, D, max_overhead=2.0) == "head"
    # PME at budget 0.05 with min_dim=0: 90 % of the rows at 0, the rest 1..16 (5-bit planes: 1.21x);
    # the head's rows hold >= HEAD_MIN_SHARE of the kept values: the head layout, unless the lookup is
    # XLA-compiled (static shapes), where the sparse one is the only one within 1.10x
    mixed = np.where(rng.random(n) < 0.1, rng.integers(1, D + 1, n), 0)
    assert ragged.choose_layout(mixed, D) == "head"
    assert ragged.choose_layout(mixed, D, static=True) == "sparse"
    # 10 % of the rows at 1..3 and 50 at 16: padding any of the narrow rows to 16 is over 1.10x, so the
    # head would hold the rows at 16 only, < 5 % of the kept values: no head (most lookups would split)
    few = np.where(rng.random(n) < 0.1, rng.integers(1, 4, n), 0)
    few[:50] = 16
    plan = ragged.head_plan(few, D)
    assert plan.head_from == 16 and plan.head_kept < ragged.HEAD_MIN_SHARE * few.sum()
    assert ragged.choose_layout(few, D) == "sparse"
    tiny = np.zeros(1000, np.int64)  # nothing kept: no layout fits, the smallest is taken
    assert ragged.choose_layout(tiny, D) == "runs"
    for sizes in (scattered, low):
        p = ragged.pack(np.zeros((n, D), np.float32), sizes)
        assert p.overhead <= 1.10, (p.layout, p.overhead)


@pytest.mark.parametrize("mean_dims", [0.8, 1.6, 3.2, 8.0])
@pytest.mark.parametrize("spread", ["scattered", "pme_like", "mixed", "sorted"])
def test_auto_bytes_stay_within_ten_percent(mean_dims, spread):
    rng = np.random.default_rng(0)
    n, D = 100_000, 16
    if spread == "pme_like":  # most values at 0, the frequent ones at 16
        sizes = np.where(rng.random(n) < mean_dims / 16, 16, 0)
    elif spread == "mixed":  # most values at 0, the others anywhere in 1..16 (PME at low budgets, min_dim=0)
        sizes = np.where(rng.random(n) < mean_dims / 8.5, rng.integers(1, D + 1, n), 0)
    else:  # sizes 1..16 (min_dim = 1): 4-bit codes at worst
        sizes = np.clip(rng.poisson(mean_dims, size=n), 1, D)
        if spread == "sorted":
            sizes = np.sort(sizes)[::-1]
    p = ragged.pack(np.ones((n, D), np.float32), sizes)
    assert p.overhead <= 1.10, (p.layout, p.overhead)


def test_bad_input_names_the_argument():
    t = np.zeros((10, 4), np.float32)
    with pytest.raises(ValueError, match=r"sizes must be 10 integers in \[0, 4\]"):
        ragged.pack(t, np.full(10, 5))
    with pytest.raises(ValueError, match="sizes must be 10 integers"):
        ragged.pack(t, np.full(9, 1))
    with pytest.raises(ValueError, match="sizes must be 10 integers"):
        ragged.pack(t, np.full(10, 1.5))
    with pytest.raises(ValueError, match="layout must be 'auto' or one of"):
        ragged.pack(t, np.full(10, 1), layout="buckets")
    with pytest.raises(ValueError, match="field_sizes must add up to the table's 10 rows"):
        ragged.pack(t, np.full(10, 1), field_sizes=[3, 3])
    with pytest.raises(ValueError, match="table must be"):
        ragged.pack(np.zeros(10), np.full(10, 1))


@pytest.mark.parametrize("layout", ragged.LAYOUTS)
@pytest.mark.parametrize("kind", ["any", "sorted", "one"])
def test_index_built_in_chunks_equals_one_chunk(monkeypatch, layout, kind):
    """The index is built a chunk of rows at a time (bounded memory): chunk boundaries must not show."""
    rng = np.random.default_rng(3)
    n, D = 64 * 9 + 5, 16
    sizes = _sizes(rng, n, D, kind).astype(np.int32)
    table = rng.standard_normal((n, D)).astype(np.float32)
    whole = ragged.pack(table, sizes, field_sizes=[100, n - 100], layout=layout)
    monkeypatch.setattr(ragged, "_CHUNK", 64)  # a multiple of every block size, as the real one
    chunked = ragged.pack(table, sizes, field_sizes=[100, n - 100], layout=layout)
    assert whole.arrays.keys() == chunked.arrays.keys()
    for k in whole.arrays:
        np.testing.assert_array_equal(whole.arrays[k], chunked.arrays[k])
    np.testing.assert_array_equal(ragged.unpack_sizes(chunked), _stored(chunked, sizes))
