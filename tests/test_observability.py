"""What a user watches while a search runs: TensorBoard, the report DataFrame, the plot.

For every search callback with `log_dir=`: scalars of kept params and of kept
dims per field (one point per epoch), the search penalty per search epoch
where the method has one, and histograms of the per-value sizes for the
per-value methods; `ked.dimension_report(model)` agrees with the masks; and
`ked.plots.plot_dims_per_field` writes a PNG.
"""

import os

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import keras_embdim as ked
from keras_embdim import keras

VOCAB = [30, 20, 10]
NAMES = ["user", "item", "city"]


def _model(method):
    inp = keras.Input(shape=(3,), dtype="int32", name="ids")
    if method == "ham":
        emb = ked.HardMaskEmbedding(VOCAB, 8, field_names=NAMES, name="emb")
    elif method == "amtl":
        emb = ked.TwinsMaskLayer(ked.PrunableEmbedding(VOCAB, 8, field_names=NAMES), name="emb")
    else:
        emb = ked.PrunableEmbedding(VOCAB, 8, field_names=NAMES, name="emb")
    out = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(emb(inp)))
    model = keras.Model(inp, out)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    return model


def _search(method, tb):
    if method == "sseds":
        return ked.SingleShotPruner(0.4, warmup_steps=4, scoring_steps=4, log_dir=tb, verbose=0)
    if method == "ham":
        return ked.HardMaskSearch(0.4, search_epochs=2, log_dir=tb, verbose=0)
    if method == "amtl":
        return ked.TwinsMaskSearch(0.4, search_epochs=2, log_dir=tb, verbose=0)
    return ked.PMEPruner(0.4, search_epochs=2, log_dir=tb, verbose=0)


def _events(tb):
    acc = EventAccumulator(tb, size_guidance={"tensors": 0, "histograms": 0})
    acc.Reload()
    return acc


@pytest.mark.parametrize("method", ["sseds", "ham", "amtl", "pme"])
def test_tensorboard_report_and_plot(method, tmp_path):
    rng = np.random.default_rng(0)
    ids = np.stack([rng.integers(0, v, 1024) for v in VOCAB], 1).astype("int32")
    y = (ids[:, 0] % 2).astype("float32")
    tb = str(tmp_path / "tb")
    model = _model(method)
    search = _search(method, tb)
    model.fit(ids, y, batch_size=128, epochs=3, verbose=0, callbacks=[search])
    layer = ked.find_searchable_layers(model)[0]
    mask = layer.dimension_mask()

    acc = _events(tb)
    tags = set(acc.Tags()["tensors"])
    kept = acc.Tensors("embdim/kept_params")
    assert len(kept) >= 3  # one per epoch at least
    from tensorflow import make_ndarray

    assert float(make_ndarray(kept[-1].tensor_proto)) == mask.kept_params
    for f, name in enumerate(NAMES):
        last = acc.Tensors(f"kept_dims/emb/{name}")[-1]
        assert int(make_ndarray(last.tensor_proto)) == int(mask.kept_dims[f])
    if method in ("ham", "amtl"):  # a penalty per search epoch
        assert len(acc.Tensors("embdim/penalty/emb")) == 2
    else:
        assert "embdim/penalty/emb" not in tags
    if method in ("amtl", "pme"):  # per-value sizes as histograms
        hist_tags = set(acc.Tags()["tensors"]) | set(acc.Tags().get("histograms", []))
        assert {f"value_sizes/emb/{n}" for n in NAMES} <= hist_tags

    df = ked.dimension_report(model)
    assert list(df["field"]) == NAMES
    assert int(df["params_after"].sum()) == mask.kept_params
    assert df["params_before"].tolist() == [v * 8 for v in VOCAB]

    png = ked.plots.plot_dims_per_field(model, tmp_path / "dims.png")
    assert os.path.getsize(png) > 1000
    with open(png, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
