"""`rebuild_mixed` (a natively mixed-dimension model from a report) and `ByteBudget`."""

import numpy as np
import pytest

import keras_embdim as ked
from keras_embdim import keras
from keras_embdim.export import saved_variable_bytes


@pytest.fixture(scope="module")
def pruned(small_data):
    keras.utils.set_random_seed(0)
    d = small_data
    model = ked.models.compile_ctr(ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=8, hidden=(16,)))
    x, y = d.train
    model.fit(d.inputs(x), y, batch_size=500, epochs=1, verbose=0,
              callbacks=[ked.SingleShotPruner(0.2, warmup_steps=10, scoring_steps=5, verbose=0)])
    return d, model


@pytest.mark.parametrize("source", ["model", "dataframe", "dimensions.json"])
def test_rebuild_mixed_has_the_searched_dims_and_trains(pruned, tmp_path, source):
    d, model = pruned
    mask = ked.find_searchable_layers(model)[0].dimension_mask()
    if source == "model":
        report = None
    elif source == "dataframe":
        report = ked.dimension_report(model)
    else:
        ked.export_compact(model, str(tmp_path / "e"), verbose=0)
        report = str(tmp_path / "e")
    slim = ked.rebuild_mixed(model, report)
    layer = slim.get_layer("embedding")
    assert isinstance(layer, ked.MixedDimensionEmbedding)
    assert layer.dims == [int(k) for k in mask.kept_dims]
    assert sum(int(np.prod(w.shape)) for w in layer.weights) == mask.kept_params  # native: no full table
    ked.models.compile_ctr(slim)
    x, y = d.train
    hist = slim.fit(d.inputs(x), y, batch_size=500, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    # the padded columns are exact zeros, the shape is the searched layer's
    out = layer(d.test[0][:5]).numpy()
    assert out.shape == (5, d.num_fields, 8)
    for f, k in enumerate(layer.dims):
        assert np.all(out[:, f, k:] == 0)
    # .keras round trip and an export whose embedding bytes are the kept params
    path = str(tmp_path / "slim.keras")
    slim.save(path)
    back = keras.models.load_model(path)
    sample = d.inputs(d.test[0][:200])
    np.testing.assert_allclose(back.predict(sample, verbose=0), slim.predict(sample, verbose=0), atol=1e-6)
    r = ked.export_compact(slim, str(tmp_path / "slim"), sample_inputs=sample, verbose=0)
    stored = saved_variable_bytes(r.path)
    assert sum(stored.values()) == 4 * slim.count_params()  # every variable once, the tables at their own width


def test_rebuild_mixed_from_per_value_sizes_keeps_each_fields_params(small_data):
    keras.utils.set_random_seed(0)
    d = small_data
    model = ked.models.compile_ctr(ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=8, hidden=(16,)))
    x, y = d.train
    model.fit(d.inputs(x), y, batch_size=500, epochs=1, verbose=0, callbacks=[ked.PMEPruner(0.2, verbose=0)])
    m = ked.find_searchable_layers(model)[0].dimension_mask()
    slim = ked.rebuild_mixed(model)
    want = [int(round(p / n)) for p, n in zip(m.field_kept_params(), m.vocab_sizes)]
    assert slim.get_layer("embedding").dims == want


def test_rebuild_mixed_bad_input(pruned):
    d, model = pruned
    with pytest.raises(ValueError, match="no fields for the searchable layers"):
        ked.rebuild_mixed(model, [{"layer": "other", "kept_dims": 1, "vocab": 3}])
    plain = ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=4, hidden=(4,), embedding="plain")
    with pytest.raises(ValueError, match="no searchable layer"):
        ked.rebuild_mixed(plain)
    with pytest.raises(ValueError, match="`dims` must be 2 integers in"):
        ked.MixedDimensionEmbedding([3, 4], [1, 9], 8)


def test_byte_budget_keeps_at_most_its_bytes(small_data):
    keras.utils.set_random_seed(0)
    d = small_data
    model = ked.models.compile_ctr(ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=8, hidden=(16,)))
    full = sum(d.vocab_sizes) * 8
    nbytes = int(0.3 * full * 4)
    cb = ked.SingleShotPruner(ked.ByteBudget(nbytes), warmup_steps=10, scoring_steps=5, verbose=0)
    x, y = d.train
    model.fit(d.inputs(x), y, batch_size=500, epochs=1, verbose=0, callbacks=[cb])
    kept = ked.find_searchable_layers(model)[0].dimension_mask().kept_params
    assert 4 * kept <= nbytes and 4 * kept >= nbytes - 4 * max(d.vocab_sizes)  # within one field-dimension
    # in float16, the same bytes buy twice the parameters
    assert ked.ByteBudget(nbytes, bytes_per_param=2).fraction(full) == pytest.approx(2 * 0.3, rel=1e-3)


def test_byte_budget_bad_input(small_data):
    for bad in (0, -5, 1.5, True, "1MB"):
        with pytest.raises(ValueError, match="`nbytes` must be a positive integer"):
            ked.ByteBudget(bad)
    with pytest.raises(ValueError, match="`bytes_per_param` must be 1, 2 or 4"):
        ked.ByteBudget(100, bytes_per_param=3)
    d = small_data
    model = ked.models.compile_ctr(ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=8, hidden=(16,)))
    x, y = d.train
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match=r"raise budget to at least [\d,]+ B"):  # smaller than min_dim=1 everywhere
        model.fit(d.inputs(x[:500]), y[:500], epochs=1, verbose=0,
                  callbacks=[ked.SingleShotPruner(ked.ByteBudget(100), verbose=0)])
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
