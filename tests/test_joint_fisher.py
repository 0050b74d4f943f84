import itertools

import numpy as np
import pytest
import tensorflow as tf

import keras_embdim as ked
from keras_embdim._compat import tf_variable
from keras_embdim.search import joint


def _psd(rng, d, rank=None):
    a = rng.standard_normal((rank or d, d))
    return a.T @ a


def test_elimination_cost_is_the_quadratic_form_of_the_removed_columns():
    rng = np.random.default_rng(0)
    m = _psd(rng, 6)
    order, cost = joint.elimination_order(m)
    assert sorted(order.tolist()) == list(range(6))
    for k in range(7):
        s = np.zeros(6)
        s[order[k:]] = 1.0
        assert cost[k] == pytest.approx(s @ m @ s, rel=1e-12, abs=1e-12)


def test_each_elimination_step_removes_the_cheapest_column():
    """A second implementation: at every step try every remaining column by brute force."""
    rng = np.random.default_rng(1)
    m = _psd(rng, 5, rank=3)
    order, _ = joint.elimination_order(m)
    removed: list[int] = []
    for step in range(5):
        left = [j for j in range(5) if j not in removed]
        values = []
        for j in left:
            s = np.zeros(5)
            s[removed + [j]] = 1.0
            values.append(s @ m @ s)
        removed.append(left[int(np.argmin(values))])
    assert removed[::-1] == order.tolist()


def test_a_field_spread_over_columns_outranks_one_the_diagonal_prefers():
    """Field 0 carries one signal split over 4 columns (each example's gradient alike in all four):
    one column alone looks cheap to remove (diagonal Fisher 0.5 each) but all four cost
    0.5 x 4^2 = 8. Field 1 has one column of diagonal Fisher 2. The diagonal keeps field 1's column
    first; the joint score keeps one of field 0's first (it saves 8 - 4.5 = 3.5 > 2)."""
    pair = np.zeros((2, 4, 4))
    pair[0] = np.ones((4, 4)) * 2.0  # P'P of p_x = (1, 1, 1, 1) over 2 examples
    pair[1, 0, 0] = 8.0
    diagonal = np.stack([np.diag(p) for p in pair]) / (2 * 2)
    assert np.unravel_index(np.argmax(diagonal), diagonal.shape) == (1, 0)
    s = joint.nested_removal_scores(pair, examples=2)
    assert np.unravel_index(np.argmax(s), s.shape)[0] == 0
    # the saving of each next column of field 0: costs 8, 4.5, 2, 0.5, 0 from keeping 0..4 columns
    np.testing.assert_allclose(np.sort(s[0])[::-1], [3.5, 2.5, 1.5, 0.5], rtol=1e-6)
    assert s[1, 0] == pytest.approx(2.0)


def test_scores_decrease_along_the_order_so_any_budget_keeps_a_prefix():
    rng = np.random.default_rng(2)
    pair = np.stack([_psd(rng, 8, rank=r) for r in (1, 3, 8)])
    s = joint.nested_removal_scores(pair, examples=10)
    for f in range(3):
        order, _ = joint.elimination_order(pair[f])
        assert np.all(np.diff(s[f, order]) < 0)
    # every budget of a global ranking keeps, per field, a prefix of that field's order
    flat = np.argsort(-s, axis=None, kind="stable")
    for k in range(1, s.size + 1):
        kept = np.zeros(s.shape, bool)
        kept[np.unravel_index(flat[:k], s.shape)] = True
        for f in range(3):
            order, _ = joint.elimination_order(pair[f])
            n = int(kept[f].sum())
            assert set(order[:n].tolist()) == set(np.flatnonzero(kept[f]).tolist())


def test_pooled_savings_are_the_lower_hull_slopes():
    # costs 10, 9, 3, 0 from keeping 0..3: savings 1, 6, 3 are pooled to 3.5, 3.5, 3
    assert joint._non_increasing(np.array([1.0, 6.0, 3.0])).tolist() == [3.5, 3.5, 3.0]
    for values in itertools.permutations([4.0, 1.0, 2.0, 8.0]):
        out = joint._non_increasing(np.array(values))
        assert np.all(np.diff(out) <= 1e-12) and out.sum() == pytest.approx(sum(values))


def test_probe_pair_sum_equals_the_per_example_outer_products():
    """Second implementation: each example's own gate gradient, explicitly."""
    rng = np.random.default_rng(3)
    layer = ked.PrunableEmbedding([6, 4], 3)
    batches = [np.stack([rng.integers(0, 6, n), rng.integers(0, 4, n)], 1) for n in (9, 5)]
    layer(batches[0])
    w = tf.constant(rng.standard_normal((2, 3)), tf.float32)

    def loss(out):
        return tf.reduce_mean(tf.square(tf.reduce_sum(out * w, axis=[-2, -1]) - 1.0))

    probe = layer.attach_gate_probe()
    probe.reset()
    probe.record_pairs(True)
    for ids in batches:
        with tf.GradientTape() as tape:
            value = loss(layer(ids))
        tape.gradient(value, tf_variable(layer.embedding_variable))
    layer.detach_probe()
    table = np.asarray(layer.embedding_variable)
    want = np.zeros((2, 3, 3))
    for ids in batches:
        for row in ids:
            emb = tf.constant(np.stack([table[row[0]], table[row[1] + 6]])[None])
            alpha = tf.Variable(tf.ones((2, 3)))
            with tf.GradientTape() as tape:
                own = loss(emb * alpha)
            p = tape.gradient(own, alpha).numpy()
            want += np.einsum("fi,fj->fij", p, p)
    np.testing.assert_allclose(probe.pair_sum.numpy(), want, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(probe.scores("fisher_joint"), joint.nested_removal_scores(want, 14), rtol=1e-3,
                               atol=1e-9)


def test_fisher_joint_needs_the_pairs_recorded():
    from keras_embdim.search.probes import GateProbe

    p = GateProbe(1, 2)
    p.batches.assign(1.0)
    with pytest.raises(ValueError, match="record_pairs"):
        p.scores("fisher_joint")


def test_pruner_with_fisher_joint_keeps_the_budget_and_prefixes_of_its_order():
    data = ked.data.make_planted_ctr(6_000, [4, 4, 1, 1, 0], vocab_sizes=[60, 60, 60, 60, 80], seed=0)
    model = ked.models.compile_ctr(ked.models.build_mlp(data.vocab_sizes, data.field_names, embedding_dim=8,
                                                        hidden=(16,), embedding="prunable"))
    cb = ked.SingleShotPruner(0.3, score="fisher_joint", rotate=True, warmup_steps=5, scoring_steps=4, verbose=0)
    x, y = data.train
    model.fit(data.inputs(x), y, batch_size=256, epochs=1, verbose=0, callbacks=[cb])
    layer = ked.find_searchable_layers(model)[0]
    mask = layer.dimension_mask()
    full = sum(data.vocab_sizes) * 8
    assert mask.kept_params <= 0.3 * full
    assert mask.kept_params > 0.3 * full - max(data.vocab_sizes)
    scores = cb.result.scores[layer.name]
    for f in range(len(data.vocab_sizes)):  # what is kept is what scores highest within the field
        kept = mask.kept_dims[f]
        assert set(np.argsort(-scores[f], kind="stable")[:kept].tolist()) == set(
            np.flatnonzero(np.asarray(mask.keep)[f]).tolist())
