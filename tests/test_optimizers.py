"""Row-sparse optimizers (keras_embdim.optimizers) against a numpy reference of the lazy update."""

import numpy as np
import pytest
import tensorflow as tf

import keras_embdim as ked
from keras_embdim import keras
from keras_embdim._compat import optimizer_slot


def _lazy_adam_reference(table, m, v, grads, steps, lr=0.01, b1=0.9, b2=0.999, eps=1e-7):
    """numpy: per step, duplicate rows summed, only those rows' moments and values updated."""
    table, m, v = table.copy(), m.copy(), v.copy()
    for t, (rows, values) in enumerate(grads, start=1):
        g = {}
        for r, val in zip(rows, values):
            g[r] = g.get(r, 0.0) + val
        alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        for r, val in g.items():
            m[r] = b1 * m[r] + (1 - b1) * val
            v[r] = b2 * v[r] + (1 - b2) * val ** 2
            table[r] -= alpha * m[r] / (np.sqrt(v[r]) + eps)
    return table, m, v


def _embedding_model(vocab=50, dim=4, layer=None):
    ids = keras.Input((3,), dtype="int32")
    emb = layer or keras.layers.Embedding(vocab, dim, name="emb")
    out = keras.layers.Dense(1, name="out")(keras.layers.Flatten()(emb(ids)))
    return keras.Model(ids, out), emb


def test_lazy_adam_equals_the_numpy_reference_and_leaves_unseen_rows_alone():
    keras.utils.set_random_seed(0)
    model, emb = _embedding_model()
    opt = ked.LazyAdam(0.01)
    model.compile(optimizer=opt, loss="mse")
    rng = np.random.default_rng(0)
    batches = [np.array([[1, 1, 7], [3, 7, 7]]), np.array([[2, 3, 3], [9, 9, 1]]), np.array([[1, 2, 3], [4, 5, 6]])]
    table0 = np.asarray(emb.embeddings).copy()
    grads, dense_weights = [], []
    for x in batches:  # the gradients each step applies, computed before the step
        y = rng.standard_normal((2, 1)).astype("float32")
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x) - y))
        g = tape.gradient(loss, emb.trainable_weights)[0]
        assert isinstance(g, tf.IndexedSlices)  # what an embedding lookup gives: the lazy path
        grads.append((g.indices.numpy(), g.values.numpy()))
        dense_weights.append([w.numpy().copy() for w in model.get_layer("out").weights])
        model.train_on_batch(x, y)
    want_table, want_m, want_v = _lazy_adam_reference(table0, np.zeros_like(table0), np.zeros_like(table0), grads, 3)
    np.testing.assert_allclose(np.asarray(emb.embeddings), want_table, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(optimizer_slot(opt, "_momentums", emb.embeddings)), want_m, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(np.asarray(optimizer_slot(opt, "_velocities", emb.embeddings)), want_v, rtol=1e-4, atol=1e-12)
    never = np.setdiff1d(np.arange(50), np.concatenate([b.ravel() for b in batches]))
    np.testing.assert_array_equal(np.asarray(emb.embeddings)[never], table0[never])  # not even decayed


def test_dense_variables_follow_the_base_optimizer_exactly():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(1).standard_normal((32, 5)).astype("float32")
    y = np.random.default_rng(2).standard_normal((32, 1)).astype("float32")
    out = {}
    for name, opt in (("base", keras.optimizers.Adam(0.01, amsgrad=True)), ("lazy", ked.LazyAdam(0.01, amsgrad=True))):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3), keras.layers.Dense(1)])
        model.compile(optimizer=opt, loss="mse")
        model.fit(x, y, batch_size=8, epochs=2, verbose=0)
        out[name] = model.get_weights()
    for a, b in zip(out["base"], out["lazy"]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["adagrad", "sgd", "sgd_momentum", "sgd_nesterov"])
def test_lazy_adagrad_and_sgd_update_only_the_batch_rows(kind):
    keras.utils.set_random_seed(0)
    model, emb = _embedding_model()
    opt = {"adagrad": ked.LazyAdagrad(0.1), "sgd": ked.LazySGD(0.1), "sgd_momentum": ked.LazySGD(0.1, momentum=0.9),
           "sgd_nesterov": ked.LazySGD(0.1, momentum=0.9, nesterov=True)}[kind]
    model.compile(optimizer=opt, loss="mse")
    x = np.array([[1, 1, 4]])
    table0 = np.asarray(emb.embeddings).copy()
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x) - 1.0))
    g = tf.convert_to_tensor(tape.gradient(loss, emb.trainable_weights)[0]).numpy()  # dense [50, 4]
    model.train_on_batch(x, np.ones((1, 1), "float32"))
    got = np.asarray(emb.embeddings)
    if kind == "adagrad":  # accumulator starts at Keras' initial value 0.1
        acc = 0.1 + g ** 2
        want = table0 - 0.1 * g / np.sqrt(acc + 1e-7)
    elif kind == "sgd":
        want = table0 - 0.1 * g
    else:
        m = -0.1 * g
        want = table0 + (0.9 * m - 0.1 * g if kind == "sgd_nesterov" else m)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    untouched = np.setdiff1d(np.arange(50), [1, 4])
    np.testing.assert_array_equal(got[untouched], table0[untouched])


def _apply(opt, steps, V, D, sparse):
    """Apply `steps` of (rows, values) gradients to a ones table: as IndexedSlices, or dense with zeros."""
    w = keras.Variable(np.ones((V, D), "float32")) if ked.KERAS_3 else tf.Variable(np.ones((V, D), "float32"))
    for rows, vals in steps:
        if sparse:
            g = tf.IndexedSlices(tf.constant(vals), tf.constant(rows.astype("int64")), tf.constant([V, D]))
        else:
            g = np.zeros((V, D), "float32")
            g[rows] = vals
            g = tf.constant(g)
        opt.apply_gradients([(g, w)])
    return np.asarray(w)


@pytest.mark.parametrize("kind", ["adam", "sgd_momentum", "sgd_nesterov"])
def test_catch_up_gives_dense_results_from_row_sparse_steps(kind):
    """With catch_up, a row updated at the last step holds what Keras' own dense optimizer gives,
    whatever steps skipped it (gaps up to ~100 steps: the 32-step window and the geometric tail)."""
    rng = np.random.default_rng(0)
    V, D = 20, 3
    steps = [np.unique(rng.integers(0, V, 4)) for _ in range(150)]
    steps.append(np.arange(V))  # every row at the end, so that every row is caught up
    steps = [(r, rng.standard_normal((len(r), D)).astype("float32")) for r in steps]
    make = {
        "adam": lambda lazy, cu: (ked.LazyAdam(0.01, catch_up=cu) if lazy else keras.optimizers.Adam(0.01)),
        "sgd_momentum": lambda lazy, cu: (ked.LazySGD(0.05, momentum=0.9, catch_up=cu) if lazy
                                          else keras.optimizers.SGD(0.05, momentum=0.9)),
        "sgd_nesterov": lambda lazy, cu: (ked.LazySGD(0.05, momentum=0.9, nesterov=True, catch_up=cu) if lazy
                                          else keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True)),
    }[kind]
    dense = _apply(make(False, False), steps, V, D, sparse=False)
    caught_up = _apply(make(True, True), steps, V, D, sparse=True)
    lazy = _apply(make(True, False), steps, V, D, sparse=True)
    np.testing.assert_allclose(caught_up, dense, rtol=0, atol=2e-5)
    assert np.abs(lazy - dense).max() > 0.05  # the lazy semantics really differ here


def test_catch_up_is_saved_converted_and_refused_with_amsgrad(tmp_path):
    opt = ked.row_sparse(keras.optimizers.Adam(0.02), catch_up=True)
    assert type(opt) is ked.LazyAdam and opt.catch_up and opt.get_config()["catch_up"] is True
    assert ked.row_sparse(keras.optimizers.SGD(0.1, momentum=0.5), catch_up=True).catch_up
    with pytest.raises(ValueError, match="`catch_up=True` does not combine with amsgrad=True"):
        ked.LazyAdam(0.01, amsgrad=True, catch_up=True)
    keras.utils.set_random_seed(0)
    model, emb = _embedding_model()
    model.compile(optimizer=ked.LazyAdam(0.01, catch_up=True), loss="mse")
    model.fit(np.array([[1, 2, 3], [4, 5, 6]]), np.ones((2, 1)), verbose=0)
    last = np.asarray(optimizer_slot(model.optimizer, "_last_steps", emb.embeddings))
    assert last.shape == (50,) and last[[1, 2, 3, 4, 5, 6]].tolist() == [1.0] * 6 and not last[7:].any()
    path = str(tmp_path / "m.keras")
    model.save(path)
    back = keras.models.load_model(path)
    assert back.optimizer.catch_up
    np.testing.assert_array_equal(np.asarray(optimizer_slot(back.optimizer, "_last_steps", back.layers[1].embeddings)),
                                  last)


def test_row_sparse_converts_and_refuses_clearly():
    for base, lazy in ((keras.optimizers.Adam(0.02, beta_1=0.8), ked.LazyAdam),
                       (keras.optimizers.Adagrad(0.3), ked.LazyAdagrad), (keras.optimizers.SGD(0.1, momentum=0.5), ked.LazySGD)):
        opt = ked.row_sparse(base)
        extra = {} if lazy is ked.LazyAdagrad else {"catch_up": False}
        assert type(opt) is lazy and opt.get_config() == {**base.get_config(), "name": opt.get_config()["name"],
                                                          **extra}
        assert ked.row_sparse(opt) is opt
    with pytest.raises(ValueError, match="`optimizer` must be a keras.optimizers.Adam, Adagrad or SGD"):
        ked.row_sparse(keras.optimizers.RMSprop())


@pytest.mark.parametrize("method", ["sseds", "pme"])
def test_searched_tables_keep_removed_entries_and_slots_at_zero(small_data, method):
    """Row-sparse training with every kind of search: what a search removed stays exactly zero."""
    d = small_data
    model = ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=8, hidden=(8,))
    model.compile(optimizer=ked.LazyAdam(1e-2), loss="binary_crossentropy")
    x, y = d.train
    cb = ked.get_method(method).search(0.3, verbose=0)
    model.fit(d.inputs(x), y, batch_size=500, epochs=2, verbose=0, callbacks=[cb])
    layer = ked.find_searchable_layers(model)[0]
    mask = layer.dimension_mask()
    if method == "sseds":
        keep = np.repeat(mask.keep, d.vocab_sizes, axis=0)
    else:
        keep = np.arange(8)[None, :] < np.concatenate(mask.value_sizes)[:, None]
    assert not keep.all()
    for var in (layer.embedding_variable, optimizer_slot(model.optimizer, "_momentums", layer.embedding_variable),
                optimizer_slot(model.optimizer, "_velocities", layer.embedding_variable)):
        assert not np.asarray(var)[~keep].any()


def test_a_model_compiled_with_a_lazy_optimizer_saves_and_loads(tmp_path):
    keras.utils.set_random_seed(0)
    model, _ = _embedding_model()
    model.compile(optimizer=ked.LazyAdam(0.01), loss="mse")
    model.fit(np.array([[1, 2, 3]]), np.ones((1, 1)), verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    back = keras.models.load_model(path)
    assert type(back.optimizer).__name__ == "LazyAdam"
    np.testing.assert_array_equal(back.predict(np.array([[1, 2, 3]]), verbose=0),
                                  model.predict(np.array([[1, 2, 3]]), verbose=0))
