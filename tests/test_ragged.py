import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from keras_embdim.export import layouts as ragged

import reference


def _index(packed, arrays):
    return ragged.head_index(arrays["key_steps"]) if packed.layout == "head" else None


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
    """The sizes `unpack_sizes` gives back: a head layout's head rows at the head's width."""
    if packed.layout != "head":
        return sizes
    return np.where(sizes >= packed.head_from, packed.head_width, sizes)


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


@pytest.mark.parametrize("layout", ["planes", "sparse"])  # (and a head layout's tail of either: the same decode)
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
    # 6 rows of sizes 0, 4, 2, 0, 4, 1 (D = 4): kept 11 values, 44 B, the limit 1.10x is 48.4 B. A head
    # of the rows >= 4 (rows 1 and 4) takes 3 x 4 x 4 = 48 B with its zero row, and 2 B of keys (their
    # steps 2 and 3, uint8): no head fits, so the head keeps the widest rows only and the smallest tail
    # index is taken. The tail: sizes
    # 0, 0, 2, 0, 0, 1 (the head rows at 0), values 3 + the zero slot = 16 B; offsets 7 uint8 local
    # offsets and one int32 block start = 11 B (runs: 4 runs x 9 B; planes: 2 bits, 4 + 16 B; sparse:
    # a 12 B mark and 12 B of planes).
    sizes = np.array([0, 4, 2, 0, 4, 1])
    p = ragged.pack(np.arange(24, dtype=np.float32).reshape(6, 4), sizes, layout="head")
    assert (p.head_from, p.head_rows, p.head_width, p.head_kept, p.tail_layout) == (4, 2, 4, 8, "offsets")
    np.testing.assert_array_equal(p.arrays["key_steps"], np.array([2, 3], np.uint8))
    np.testing.assert_array_equal(ragged.head_keys(p.arrays["key_steps"]), [1, 4])
    np.testing.assert_array_equal(p.arrays["head"], [[4, 5, 6, 7], [16, 17, 18, 19], [0, 0, 0, 0]])
    np.testing.assert_array_equal(p.arrays["values"], [8, 9, 20, 0])  # rows 2 and 5, then the zero slot
    np.testing.assert_array_equal(p.arrays["base"], [0])
    np.testing.assert_array_equal(p.arrays["local"], [0, 0, 0, 2, 2, 2, 3])  # tail starts, and the end
    assert p.nbytes == ragged.layout_bytes(sizes, 4)["head"] == 16 + 48 + 2 + 4 + 7
    # served: the hash table gives the head rows their place in `head`, every other row the zero row
    index = ragged.head_index(tf.constant(p.arrays["key_steps"]))
    np.testing.assert_array_equal(index.lookup(tf.constant([0, 1, 2, 3, 4, 5], tf.int32)).numpy(), [2, 0, 2, 2, 1, 2])
    np.testing.assert_array_equal(_lookup(p, np.arange(6), multi_field=False),
                                  reference.prefix_lookup(np.arange(24, dtype=np.float32).reshape(6, 4), sizes,
                                                          np.arange(6)))


def test_head_takes_the_near_widest_rows_when_their_padding_and_keys_fit():
    # 256 rows (D = 8): 64 at 8, 64 at 7, 128 empty; kept 960 values, 3,840 B.
    # Rows >= 7 in the head: the head 129 x 8 x 4 = 4,128 B and 128 keys as uint8 steps (128 B); the tail is
    # empty (every row 0 there): values the zero slot (4 B) and, fastest first, offsets 257 + 17 x 4 = 325 B
    # or one run (9 B): 4,585 or 4,269 B. Rows of 8 only: head 65 x 32 = 2,080 + 64 B of keys, the tail 64
    # rows at 7 ((448 + 1) x 4 = 1,796 B of values) with offsets (325 B): 4,265 B, or 1-bit planes (0 or 7;
    # 4 blocks x 12 B): 3,988 B.
    rng = np.random.default_rng(0)
    sizes = rng.permutation(np.repeat([8, 7, 0], [64, 64, 128]))
    table = rng.standard_normal((256, 8)).astype(np.float32)
    ids = rng.integers(0, 256, (40, 1))
    want = reference.prefix_lookup(table, sizes, ids)
    for max_overhead, head_from, tail, nbytes in [(1.20, 7, "offsets", 4585), (1.15, 7, "runs", 4269),
                                                  (1.10, 8, "planes", 3988)]:
        p = ragged.pack(table, sizes, layout="head", max_overhead=max_overhead)
        assert (p.head_from, p.head_width, p.head_rows, p.tail_layout, p.nbytes) == (
            head_from, 8, (sizes >= head_from).sum(), tail, nbytes)
        assert p.nbytes == ragged.layout_bytes(sizes, 8, max_overhead)["head"]
        assert p.head_kept == sizes[sizes >= head_from].sum() and p.arrays["values"].size == 960 - p.head_kept + 1
        # a padded head row: its kept prefix, then zeros
        at7 = np.flatnonzero(sizes == 7)[0]
        if head_from == 7:
            stored = p.arrays["head"][np.count_nonzero(sizes[:at7] >= 7)]
            np.testing.assert_array_equal(stored, np.append(table[at7, :7], 0))
        np.testing.assert_array_equal(_lookup(p, ids, multi_field=False)[:, 0], want[:, 0])
        np.testing.assert_array_equal(ragged.unpack(p), reference.prefix_lookup(table, sizes, np.arange(256)))


@pytest.mark.parametrize("kind", ["empty_rows", "spread", "all_wide", "empty_or_wide"])
def test_head_layout_over_each_kind_of_tail(kind):
    """PME-like sizes (most rows empty, a few whole), sizes spread evenly, every row at the widest size
    (no other row), rows empty or whole (the other rows read nothing: a zero-width tail): the head lists
    exactly its rows, and lookups (both readers, an empty request) equal the prefix reference."""
    rng = np.random.default_rng(4)
    n, D = 3000, 16
    if kind == "empty_rows":
        sizes = np.where(rng.random(n) < 0.1, rng.integers(1, D + 1, n), 0)
        sizes[rng.random(n) < 0.03] = D
    elif kind == "spread":
        sizes = np.where(rng.random(n) < 0.2, D, rng.integers(0, 4, n))
    elif kind == "all_wide":
        sizes = np.full(n, 7)
    else:
        sizes = np.where(rng.random(n) < 0.3, D, 0)
    table = rng.standard_normal((n, D)).astype(np.float32)
    p = ragged.pack(table, sizes, field_sizes=[1000, 2000], layout="head")
    assert p.tail_layout in ragged.STATIC_ORDER and p.nbytes == ragged.layout_bytes(sizes, D)["head"]
    np.testing.assert_array_equal(ragged.head_keys(p.arrays["key_steps"]), np.flatnonzero(sizes >= p.head_from))
    assert p.arrays["head"].shape == (p.head_rows + 1, sizes.max())
    np.testing.assert_array_equal(ragged.unpack_sizes(p), _stored(p, sizes))
    ids = np.stack([rng.integers(0, 1000, (64, 3)), rng.integers(0, 2000, (64, 3))], -1)
    want = reference.prefix_lookup(table, sizes, ids + [0, 1000])
    np.testing.assert_array_equal(_lookup(p, ids), want)
    np.testing.assert_array_equal(_lookup(p, ids, ranged=True), want)
    np.testing.assert_array_equal(_lookup(p, np.zeros((0, 2), np.int64)), np.zeros((0, 2, D)))  # empty request
    with pytest.raises(ValueError, match="the head layout needs `index`"):  # no XLA: a hash table, a split
        _lookup(p, ids, jit=True)


@pytest.mark.parametrize("ranged", [False, True])
def test_head_layout_reads_the_non_head_rows_below_head_from(ranged):
    """Sizes 1..13 and a few rows of 16: the non-head rows are all narrower than `head_from`, so
    `prefix_rows` reads them `head_from - 1` wide (whatever their index could code) and pads them to D;
    one hash lookup."""
    rng = np.random.default_rng(7)
    n, D = 4000, 16
    sizes = rng.integers(1, 14, n)
    sizes[rng.random(n) < 0.05] = D
    sizes[:13] = np.arange(1, 14)
    table = rng.standard_normal((n, D)).astype(np.float32)
    p = ragged.pack(table, sizes, layout="head")
    assert 1 < p.head_from < D
    ids = np.concatenate([np.arange(13), rng.integers(0, n, 300)])
    want = reference.prefix_lookup(table, sizes, ids)
    arrays = {k: tf.constant(v) for k, v in p.arrays.items()}
    index = ragged.head_index(arrays["key_steps"])
    fn = tf.function(lambda g: ragged.read_rows(arrays, g, D, ranged=ranged, index=index, **p.meta))
    np.testing.assert_array_equal(fn(tf.constant(ids, tf.int32)).numpy(), want)
    ops = fn.get_concrete_function(tf.TensorSpec([None], tf.int32)).graph.get_operations()
    # prefix: read `head_from - 1` wide, then padded; ranged: only the kept values, straight to D
    assert [op.inputs[0].shape[-1] for op in ops if op.type == "Pad"] == ([] if ranged else [p.head_from - 1])
    assert [op.type for op in ops].count("LookupTableFindV2") == 1


def test_head_key_steps_take_the_narrowest_dtype():
    """The head rows 0 and n - 1 (size 2, every other row 0): steps 1 and n - 1, stored as uint8 up to
    255, uint16 up to 65,535, int32 past it; the served table sums them back to the rows."""
    for n, dtype in [(200, np.uint8), (300, np.uint16), (70_000, np.int32)]:
        sizes = np.zeros(n, np.int64)
        sizes[[0, n - 1]] = 2
        table = np.arange(2 * n, dtype=np.float32).reshape(n, 2)
        p = ragged.pack(table, sizes, layout="head")
        np.testing.assert_array_equal(p.arrays["key_steps"], np.array([1, n - 1], dtype))
        assert p.arrays["key_steps"].dtype == dtype
        ids = np.array([0, 1, n - 2, n - 1])
        np.testing.assert_array_equal(_lookup(p, ids, multi_field=False), reference.prefix_lookup(table, sizes, ids))


def test_head_index_of_no_head_row():
    """A head layout with no head row (every size 0): the hash table still initializes (an import of
    no key fails), every row reads the zero row."""
    p = ragged.pack(np.ones((5, 3), np.float32), np.zeros(5, np.int64), layout="head")
    assert p.head_rows == 0 and p.arrays["key_steps"].size == 0
    np.testing.assert_array_equal(_lookup(p, np.arange(5), multi_field=False), np.zeros((5, 3)))


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
    for layout in ragged.LAYOUTS:
        p = ragged.pack(table, sizes, field_sizes=[100, 200], layout=layout)
        assert p.arrays["run_start" if layout == "runs" else "base"].dtype == np.int64
        ids = np.stack([rng.integers(0, 100, 30), rng.integers(0, 200, 30)], -1)
        np.testing.assert_array_equal(_lookup(p, ids), reference.prefix_lookup(table, sizes, ids + [0, 100]))


def test_auto_takes_the_fastest_layout_within_the_byte_limit():
    rng = np.random.default_rng(0)
    n, D = 100_000, 16
    scattered = np.clip(rng.poisson(3.2, n), 0, D)  # 12.8 B/row kept: offsets' 1.25 B/row fits 1.10
    assert ragged.choose_layout(scattered, D) == "offsets"
    low = np.clip(rng.poisson(1.6, n), 1, D)  # 1.25 B/row would be 1.19x: the planes (4 bits) fit
    assert ragged.choose_layout(low, D) == "planes"
    assert ragged.choose_layout(np.sort(low)[::-1], D) == "runs"  # frequency-sorted ids: a few runs
    assert ragged.choose_layout(low, D, max_overhead=2.0) == "offsets"
    # PME at budget 0.05 with min_dim=0: 90 % of the rows at 0, the rest 1..16 (5-bit planes: 1.21x);
    # the rows at 16 hold 16 / 136 of the kept values (>= HEAD_MIN_SHARE): the head layout, unless
    # the lookup is XLA-compiled (static shapes), where the sparse one is the only one within 1.10x
    mixed = np.where(rng.random(n) < 0.1, rng.integers(1, D + 1, n), 0)
    assert ragged.choose_layout(mixed, D) == "head"
    assert ragged.choose_layout(mixed, D, static=True) == "sparse"
    # the same sizes capped at 15 with a few rows at 16: the widest rows hold < 5 %, no head
    few = np.minimum(mixed, 15)
    few[:50] = 16
    assert 16 * 50 < ragged.HEAD_MIN_SHARE * few.sum() and ragged.choose_layout(few, D) == "sparse"
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
