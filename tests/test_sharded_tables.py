"""Reading a table sharded by a `variable_partitioner` (ParameterServerStrategy), in process."""

import numpy as np
import tensorflow as tf

from keras_embdim import _utils
from keras_embdim.search.probes import sum_over_workers


def sharded(table, sizes):
    parts, start = [], 0
    for n in sizes:
        parts.append(tf.Variable(table[start:start + n]))
        start += n
    return tf.__internal__.distribute.ShardedVariable(parts)


def test_gather_rows_of_a_sharded_table_keeps_the_order_of_the_ids():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(23, 4)).astype(np.float32)
    ids = rng.integers(0, 23, size=(7, 3))  # unsorted, repeated, 2-D
    var = sharded(table, [8, 8, 7])  # "div" sharding, as a variable_partitioner makes it
    np.testing.assert_array_equal(_utils.gather_rows(var, tf.constant(ids)).numpy(), table[ids])
    # the variable's own sparse read (what a graph-mode tf.gather on it uses) does not: it concatenates
    # the shards' reads in shard order. The reason
    # for gather_rows; if this starts to fail, TensorFlow fixed it and the stitching can go
    flat = ids.reshape(-1)
    assert not np.array_equal(var.sparse_read(tf.constant(flat)).numpy(), table[flat])
    plain = tf.Variable(table)
    np.testing.assert_array_equal(_utils.gather_rows(plain, tf.constant(ids)).numpy(), table[ids])


def test_gradient_of_a_sharded_lookup_reaches_the_right_rows():
    table = np.arange(20, dtype=np.float32).reshape(10, 2)
    var = sharded(table, [4, 6])
    ids = tf.constant([[7, 1], [1, 9]])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(_utils.gather_rows(var, ids) * tf.constant([[[1.0, 2.0], [3.0, 4.0]]]))
    grads = tape.gradient(loss, var.variables)
    dense = np.concatenate([tf.convert_to_tensor(g).numpy() for g in grads])
    expected = np.zeros_like(table)
    for (b, f), i in np.ndenumerate(ids.numpy()):
        expected[i] += [[1.0, 2.0], [3.0, 4.0]][f]
    np.testing.assert_array_equal(dense, expected)


def test_sum_over_workers_is_the_identity_on_one_worker():
    value = np.array([[1.0, -2.0]], np.float32)
    np.testing.assert_array_equal(sum_over_workers(tf.Variable(value)), value)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0"])
    np.testing.assert_array_equal(sum_over_workers(value, mirrored), value)
