import numpy as np
import pytest

import keras_embdim as ked
from keras_embdim import keras
from keras_embdim.search.orthogonality import (
    mean_abs_column_correlation,
    orthogonality_penalty,
    orthogonality_penalty_numpy,
)


def test_hand_examples():
    # orthogonal columns: zero; two identical columns: off-diagonal cosines 1 and 1 -> 2
    assert float(orthogonality_penalty(np.array([[1.0, 0.0], [0.0, 2.0]]))) == pytest.approx(0.0, abs=1e-6)
    assert float(orthogonality_penalty(np.array([[1.0, 1.0], [2.0, 2.0]]))) == pytest.approx(2.0, rel=1e-6)
    # columns at 60 degrees: cos = 0.5 -> 2 * 0.25
    c = np.array([[1.0, 0.5], [0.0, np.sqrt(3) / 2]])
    assert float(orthogonality_penalty(c)) == pytest.approx(0.5, rel=1e-5)
    # a removed column counts for nothing
    assert float(orthogonality_penalty(np.array([[1.0, 1.0], [2.0, 2.0]]), keep=[1, 0])) == pytest.approx(0.0, abs=1e-6)


def test_matches_numpy_reference_per_field():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(64, 3, 5)).astype(np.float32)
    keep = rng.random((3, 5)) < 0.7
    got = float(orthogonality_penalty(rows, keep))
    assert got == pytest.approx(orthogonality_penalty_numpy(rows, keep), rel=1e-4)


def _train(d, callbacks, seed=0):
    keras.utils.set_random_seed(seed)
    model = ked.models.compile_ctr(ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=8, hidden=(32,)))
    x, y = d.train
    model.fit(d.inputs(x), y, batch_size=512, epochs=2, verbose=0, callbacks=callbacks)
    return model


def test_callback_lowers_column_correlation_and_detaches(small_data):
    d = small_data
    f = int(np.argmax(d.vocab_sizes))
    start = int(np.sum(d.vocab_sizes[:f]))

    def corr(model):
        table = np.asarray(ked.find_searchable_layers(model)[0].embedding_variable)
        return mean_abs_column_correlation(table[start : start + d.vocab_sizes[f]])

    plain = _train(d, [])
    reg = ked.OrthogonalRegularizer(0.05)
    ortho = _train(d, [reg])
    print("correlation", corr(plain), corr(ortho))
    assert corr(ortho) < 0.8 * corr(plain)
    assert ked.find_searchable_layers(ortho)[0]._penalties == []


def test_schedule_and_logs(small_data):
    d = small_data
    reg = ked.OrthogonalRegularizer(1.0, schedule=lambda epoch: 0.1 * (epoch + 1))
    model = ked.models.compile_ctr(ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=4, hidden=(4,)))
    x, y = d.train
    hist = model.fit(d.inputs(x[:2048]), y[:2048], batch_size=512, epochs=2, verbose=0, callbacks=[reg])
    assert hist.history["embdim_orthogonal_strength"] == pytest.approx([0.1, 0.2])


def test_as_embeddings_regularizer_on_a_plain_layer():
    reg = ked.OrthogonalEmbeddingRegularizer(0.5, sample_rows=64)
    layer = keras.layers.Embedding(100, 4, embeddings_regularizer=reg)
    layer(np.array([1, 2]))
    value = float(reg(layer.embeddings))
    assert value >= 0
    # correlated columns cost more than orthogonal ones
    corr = np.tile(np.arange(100, dtype=np.float32)[:, None] + 1, (1, 4))
    assert float(reg(corr)) == pytest.approx(0.5 * 12, rel=1e-3)
    clone = ked.OrthogonalEmbeddingRegularizer.from_config(reg.get_config())
    assert clone.strength == 0.5 and clone.sample_rows == 64
    restored = keras.regularizers.deserialize(keras.regularizers.serialize(reg))
    assert isinstance(restored, ked.OrthogonalEmbeddingRegularizer) and restored.get_config() == reg.get_config()


@pytest.mark.parametrize("kwargs", [{"strength": -1}, {"strength": float("nan")}, {"schedule": 3}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ked.OrthogonalRegularizer(**kwargs)


@pytest.mark.parametrize("kwargs", [{"strength": -1}, {"sample_rows": 1}, {"sample_rows": 2.5}])
def test_bad_regularizer_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ked.OrthogonalEmbeddingRegularizer(**kwargs)
