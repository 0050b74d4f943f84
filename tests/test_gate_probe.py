import numpy as np
import tensorflow as tf

import keras_embdim as ked
from keras_embdim._compat import tf_variable


def _loss(out, w):
    return tf.reduce_mean(tf.square(tf.reduce_sum(out * w, axis=[-2, -1]) - 1.0))


def test_probe_gradient_equals_gradient_wrt_explicit_gates():
    rng = np.random.default_rng(0)
    layer = ked.PrunableEmbedding([6, 4], 5)
    ids = np.stack([rng.integers(0, 6, 16), rng.integers(0, 4, 16)], 1)
    layer(ids)
    w = tf.constant(rng.standard_normal((2, 5)), tf.float32)
    keep = np.ones((2, 5), bool)
    keep[1, 3] = False
    layer.set_dimension_mask(keep)
    probe = layer.attach_gate_probe()
    with tf.GradientTape() as tape:
        loss = _loss(layer(ids), w)
    tape.gradient(loss, tf_variable(layer.embedding_variable))
    layer.detach_probe()

    # second implementation: explicit gates alpha multiplying the masked output
    table = np.asarray(layer.embedding_variable)
    emb = tf.constant(np.stack([table[ids[:, 0]], table[ids[:, 1] + 6]], 1) * keep)
    alpha = tf.Variable(tf.ones((2, 5)))
    with tf.GradientTape() as tape:
        loss2 = _loss(emb * alpha, w)
    want = tape.gradient(loss2, alpha).numpy()
    np.testing.assert_allclose(probe.grad_sum.numpy(), want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(probe.scores("mean_abs"), np.abs(want), rtol=1e-5, atol=1e-7)
    assert probe.batches.numpy() == 1.0
    assert probe.grad_sum.numpy()[1, 3] == 0.0  # a removed column has no signal


def test_fisher_score_equals_half_the_mean_squared_per_example_gate_gradient():
    """The probe sees only the batch's upstream gradient; its Fisher score must equal the one
    computed from each example's own loss, example by example, over two batches of different sizes."""
    rng = np.random.default_rng(1)
    layer = ked.PrunableEmbedding([6, 4], 5)
    batches = [np.stack([rng.integers(0, 6, n), rng.integers(0, 4, n)], 1) for n in (16, 7)]
    layer(batches[0])
    w = tf.constant(rng.standard_normal((2, 5)), tf.float32)
    probe = layer.attach_gate_probe()
    for ids in batches:
        with tf.GradientTape() as tape:
            loss = _loss(layer(ids), w)
        tape.gradient(loss, tf_variable(layer.embedding_variable))
    layer.detach_probe()

    table = np.asarray(layer.embedding_variable)
    per_example = []
    for ids in batches:
        for row in ids:
            emb = tf.constant(np.stack([table[row[0]], table[row[1] + 6]])[None])
            alpha = tf.Variable(tf.ones((2, 5)))
            with tf.GradientTape() as tape:
                own = _loss(emb * alpha, w)  # this example's own loss
            per_example.append(tape.gradient(own, alpha).numpy())
    want = 0.5 * np.mean(np.square(per_example), axis=0)
    np.testing.assert_allclose(probe.scores("fisher"), want, rtol=1e-4, atol=1e-8)
    assert probe.examples.numpy() == 23.0


def test_mean_abs_and_abs_mean_differ_when_signs_cancel():
    from keras_embdim.search.probes import GateProbe

    p = GateProbe(1, 2)
    p.grad_sum.assign([[0.0, 2.0]])
    p.abs_sum.assign([[4.0, 2.0]])
    p.batches.assign(2.0)
    assert p.scores("mean_abs").tolist() == [[2.0, 1.0]]
    assert p.scores("abs_mean").tolist() == [[0.0, 1.0]]
    # signed: a positive dL/dalpha means removing the column lowers the loss
    assert p.scores("taylor").tolist() == [[0.0, -1.0]]


def test_probe_adds_no_weights():
    layer = ked.PrunableEmbedding([3, 3], 2)
    layer(np.zeros((1, 2), "int32"))
    n = len(layer.weights)
    layer.attach_gate_probe()
    assert len(layer.weights) == n
