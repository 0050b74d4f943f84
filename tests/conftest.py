import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_shared = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "KERAS_EMBDIM_DATA" not in os.environ and _shared.exists():
    os.environ["KERAS_EMBDIM_DATA"] = str(_shared)

import pytest  # noqa: E402

import keras_embdim as ked  # noqa: E402
from keras_embdim import keras  # noqa: E402


def pytest_report_header(config):
    return f"keras_embdim: Keras {'3' if ked.KERAS_3 else '2 (tf_keras)'} {ked.keras.__version__}"


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield
    # Keras 3's clear_session also runs a full gc.collect() by default: 0.65 s per test on average
    # with TensorFlow's heap loaded (455 s of a Keras 3 run, --durations), where tf_keras' does not
    # collect at all. Python's own collector still frees cycles as it goes.
    keras.backend.clear_session(**({"free_memory": False} if ked.KERAS_3 else {}))


@pytest.fixture(scope="session")
def data_root():
    root = os.environ.get("KERAS_EMBDIM_DATA")
    if not root or not os.path.isdir(root):
        pytest.skip("real data not found: set KERAS_EMBDIM_DATA (../shared/data)")
    return root


@pytest.fixture(scope="session")
def small_data():
    return ked.data.make_synthetic_ctr(num_rows=20_000, num_fields=6, max_vocab=500, seed=3)


@pytest.fixture(scope="module")
def searched():
    """`(data, model, sample)`: a 4-field MLP whose per-field mask is set at random (a searched model to
    export; one per test module, which may train it further) and 200 test rows to verify on."""
    import numpy as np

    keras.utils.set_random_seed(0)
    d = ked.data.make_synthetic_ctr(num_rows=3000, num_fields=4, max_vocab=200, seed=7)
    model = ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=8, hidden=(8,))
    layer = ked.find_searchable_layers(model)[0]
    layer.set_dimension_mask(np.random.default_rng(0).random((4, 8)) < 0.5)
    return d, model, d.inputs(d.test[0][:200])


@pytest.fixture
def move_output_bias_after_save(monkeypatch):
    """`move(model, by=1.0)`: the model's last Dense bias moves by `by` right after each SavedModel
    is written; the export's verification then compares the model with what it no longer
    computes. Returns a function that puts the bias back (also done when the test ends)."""
    import numpy as np

    from keras_embdim.export import exporter

    restores = []

    def move(model, by: float = 1.0):
        bias = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][-1].bias
        original = np.array(bias.numpy())
        real = exporter.writer.saved_variable_bytes

        def written(path):
            bias.assign(original + by)
            return real(path)

        monkeypatch.setattr(exporter.writer, "saved_variable_bytes", written)
        restores.append(lambda: bias.assign(original))
        return restores[-1]

    yield move
    for restore in reversed(restores):
        restore()
