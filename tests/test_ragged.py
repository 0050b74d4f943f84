import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from keras_embdim import ragged


def _lookup(field, ids):
    return ragged.ragged_lookup(
        tf.constant(field.values), tf.constant(field.sizes), tf.constant(field.block_offsets), tf.constant(ids),
        num_rows=field.num_rows, output_dim=field.output_dim, size_bits=field.size_bits, size_base=field.size_base,
    ).numpy()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.integers(1, 17), st.integers(0, 10_000), st.sampled_from(["any", "no_zero", "full"]))
def test_ragged_lookup_equals_prefix_reference(n, D, seed, kind):
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((n, D)).astype(np.float32)
    low = 1 if kind == "no_zero" else 0
    sizes = rng.integers(low, D + 1, size=n) if kind != "full" else np.full(n, D)
    field = ragged.pack_field(table, sizes)
    np.testing.assert_array_equal(ragged.unpack_sizes(field), sizes)
    ids = rng.integers(0, n, size=(5, 3))
    np.testing.assert_array_equal(_lookup(field, ids), ragged.prefix_lookup_reference(table, sizes, ids))


def test_size_encoding_choices():
    t = np.zeros((4, 16), np.float32)
    assert ragged.pack_field(t, [1, 16, 3, 5]).size_bits == 4  # stored as d - 1
    assert ragged.pack_field(t, [0, 15, 3, 5]).size_bits == 4  # stored as d
    assert ragged.pack_field(t, [0, 16, 3, 5]).size_bits == 8  # 17 values need a byte


@pytest.mark.parametrize("mean_dims", [1.6, 3.2, 8.0])
def test_bytes_within_ten_percent_of_kept_values(mean_dims):
    rng = np.random.default_rng(0)
    n, D = 100_000, 16
    # sizes with the given mean, in [1, 16] (sizes 0 and 16 together would need 8 bits)
    sizes = np.clip(rng.poisson(mean_dims - 1, size=n) + 1, 1, D)
    field = ragged.pack_field(np.ones((n, D), np.float32), sizes)
    kept_bytes = 4 * int(sizes.sum())
    print(mean_dims, field.nbytes / kept_bytes)
    assert field.nbytes <= 1.10 * kept_bytes
