"""The package's structure and a first day with it: the protocol is the whole contract, the
registry names the methods, demo code loads lazily, and the searches say what they do."""

import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import keras_embdim as ked
from keras_embdim.searchable import DimensionSearchable

PACKAGE = os.path.dirname(ked.__file__)


def _model(d, embedding="prunable", dim=4):
    return ked.models.compile_ctr(ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=dim, hidden=(4,),
                                                       embedding=embedding))


# ------------------------------------------------------------------ protocol
GLUE = ["callbacks/search_callback.py", "report.py", "plots.py", "convert.py", *[
    f"export/{f}" for f in os.listdir(os.path.join(PACKAGE, "export")) if f.endswith(".py")]]
# what every Keras layer has (not ours to declare)
KERAS_LAYER = {"name", "built", "build", "output_dim", "get_weights", "set_weights", "get_config", "weights",
               "compute_dtype", "kernel", "bias", "activation", "trainable_weights", "call", "compute_mask",
               "supports_masking"}
# add_twins fills the TwinsMaskLayer it has just built (its own class, not the protocol)
OWN_CLASS = {"embedding"}
# what Keras' StringLookup / IntegerLookup / Hashing have: the fold reads the range of the ids they give
# (`export.fold._id_bound`), never a searchable layer's
KERAS_ID_LAYER = {"output_mode", "invert", "vocabulary_size", "num_bins"}


def test_generic_glue_uses_only_declared_protocol_members():
    """Callbacks' base, exporter, reports and conversions touch a searchable layer only
    through `DimensionSearchable`'s members (no hasattr probing, no private attributes)."""
    declared = {n for n in dir(DimensionSearchable) if not n.startswith("__")}
    used = set()
    for rel in GLUE:
        src = open(os.path.join(PACKAGE, rel)).read()
        assert "hasattr(" not in src, f"{rel} probes with hasattr"
        used |= set(re.findall(r"\blayer\.([A-Za-z_]\w*)", src))
    private = sorted(u for u in used if u.startswith("_"))
    assert not private, f"private layer attributes read by the glue: {private}"
    undeclared = sorted(used - declared - KERAS_LAYER - OWN_CLASS - KERAS_ID_LAYER)
    assert not undeclared, f"layer members used by the glue but not declared in DimensionSearchable: {undeclared}"


def test_every_searchable_layer_implements_the_abstract_members():
    d = ked.data.make_synthetic_ctr(num_rows=500, num_fields=2, max_vocab=30, seed=0)
    for method in ked.METHODS.values():
        layer = method.embedding(d.vocab_sizes, 4, d.field_names)
        layer(np.zeros((2, 2), "int32"))
        assert isinstance(layer, DimensionSearchable)
        assert layer.field_vocab_sizes == tuple(d.vocab_sizes) and layer.field_names == tuple(d.field_names)
        assert layer.multi_field and layer.num_fields == 2
        assert layer.dimension_mask().full_params == sum(d.vocab_sizes) * 4
        assert tuple(layer.embedding_variable.shape) == (sum(d.vocab_sizes), 4)
        assert layer.serving_ids(np.array([[1, 2]])).shape == (1, 2)
        assert float(layer.search_penalty()) >= 0.0


# ------------------------------------------------------------------ registry
def test_registry_names_layer_and_callback_of_every_method():
    assert sorted(ked.METHODS) == ["amtl", "ham", "pme", "sseds"]
    expect = {"sseds": (ked.PrunableEmbedding, ked.SingleShotPruner, "field"),
              "ham": (ked.HardMaskEmbedding, ked.HardMaskSearch, "field"),
              "amtl": (ked.TwinsMaskLayer, ked.TwinsMaskSearch, "value"),
              "pme": (ked.PrunableEmbedding, ked.PMEPruner, "value")}
    for name, (layer_cls, cb_cls, granularity) in expect.items():
        m = ked.get_method(name)
        assert (m.layer, m.callback, m.granularity) == (layer_cls, cb_cls, granularity)
        assert isinstance(m.embedding([5, 7], 4, ["a", "b"]), layer_cls)
        assert isinstance(m.search(0.5, verbose=0), cb_cls)
    with pytest.raises(ValueError, match=r"`method` must be one of \['amtl', 'ham', 'pme', 'sseds'\]"):
        ked.get_method("autodim")


def test_import_does_not_load_the_demo_code():
    """`import keras_embdim` loads neither the datasets (pandas) nor plots (matplotlib) nor the
    model zoo; they load on first use."""
    code = ("import sys, keras_embdim as ked\n"
            "demo = ['keras_embdim.data', 'keras_embdim.plots', 'keras_embdim.models', 'keras_embdim.quickstart']\n"
            "print(sorted(m for m in demo if m in sys.modules))\n"
            "ked.data.make_synthetic_ctr\n"
            "print('keras_embdim.data' in sys.modules)\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:2] == ["[]", "True"]


# ----------------------------------------------------------- a first day
def test_each_search_says_what_it_will_do_and_warns_when_nothing_is_left_to_finetune(small_data, caplog, capsys):
    d = small_data
    model = _model(d)
    x, y = d.train
    with caplog.at_level(logging.INFO, logger="keras_embdim"):
        model.fit(d.inputs(x), y, batch_size=1000, epochs=1, verbose=0,
                  callbacks=[ked.SingleShotPruner(0.3, scoring_steps=4)])
    text = caplog.text
    steps = int(np.ceil(len(x) / 1000))  # 16: warm-up to step 12, then 4 scoring batches
    assert "SingleShotPruner: budget 30.00% (" in text
    assert f"{steps - 4} warm-up steps, then gate gradients (fisher_joint) on 4 batches of the next training batches" in text
    assert (f"the search ends at step {steps} of fit's {steps} (1 epoch x {steps} steps), so only 0 steps of "
            "finetune follow it") in text
    assert re.search(r"kept [\d,]+ of [\d,]+ embedding parameters \(\d+\.\d+%, budget 30\.00%\) in \d+\.\d s", text)
    assert "WARNING: SingleShotPruner: the search ends" in capsys.readouterr().out  # printed, verbose=1
    # three epochs leave two thirds of the steps: no warning
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="keras_embdim"):
        ham = _model(d, embedding=lambda v, dim, names: ked.get_method("ham").embedding(v, dim, names))
        ham.fit(d.inputs(x), y, batch_size=1000, epochs=3, verbose=0, callbacks=[ked.HardMaskSearch(0.3, verbose=0)])
    assert "1 search epoch of hard masks" in caplog.text and "follow it" not in caplog.text


class _StopAfterFirstEpoch(ked.keras.callbacks.Callback):
    """What EarlyStopping does: fit ends after this epoch, whatever `epochs` said."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = True


def test_a_search_that_fit_cuts_short_ends_on_what_it_saw_and_says_what_did_not_follow(small_data, caplog):
    d = small_data
    x, y = d.train
    steps = int(np.ceil(len(x) / 1000))
    ham = _model(d, embedding=lambda v, dim, names: ked.get_method("ham").embedding(v, dim, names))
    search = ked.HardMaskSearch(0.3, search_epochs=2, after="retrain", verbose=0)
    with caplog.at_level(logging.INFO, logger="keras_embdim"):
        ham.fit(d.inputs(x), y, batch_size=1000, epochs=4, verbose=0, callbacks=[search, _StopAfterFirstEpoch()])
    text = caplog.text
    assert search.result is not None and search.result.step == steps  # ended, at the one epoch fit ran
    assert re.search(r"HardMaskSearch: searched \d+ steps .*; kept [\d,]+ of [\d,]+ embedding parameters "
                     r"\([^)]*\) in \d+\.\d s, as fit ended\.\n", text)  # not "then retrain": nothing did
    assert (f"HardMaskSearch: fit ended before the search did (step {steps} of the {2 * steps} it planned); the "
            "search ended there, on what it had seen, and the weights were rewound to the start of the search "
            "(after='retrain') and nothing retrained them: fit again to retrain.") in text
    # a search that ends with fit's last step says nothing of the kind
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="keras_embdim"):
        other = _model(d, embedding=lambda v, dim, names: ked.get_method("ham").embedding(v, dim, names))
        other.fit(d.inputs(x), y, batch_size=1000, epochs=2, verbose=0, callbacks=[ked.HardMaskSearch(0.3, verbose=0)])
    assert "then finetune." in caplog.text and "fit ended before" not in caplog.text
    # SSEDS: scoring cut short by the end of fit
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="keras_embdim"):
        sseds = _model(d)
        sseds.fit(d.inputs(x), y, batch_size=1000, epochs=1, verbose=0,
                  callbacks=[ked.SingleShotPruner(0.3, warmup_steps=steps - 2, scoring_steps=6, verbose=0)])
    assert (f"SingleShotPruner: fit ended before the search did (step {steps} of the {steps + 4} it planned); the "
            "search ended there, on what it had seen, and no finetune followed it") in caplog.text


def test_a_callback_for_another_kind_of_layer_says_which_one_fits(small_data):
    d = small_data
    x, y = d.train
    model = _model(d)
    with pytest.raises(ValueError, match=r"HardMaskSearch found PrunableEmbedding layers: use PMEPruner or "
                                         r"SingleShotPruner, or build the embeddings with HardMaskEmbedding"):
        model.fit(d.inputs(x[:100]), y[:100], epochs=1, verbose=0, callbacks=[ked.HardMaskSearch(0.3)])
    plain = _model(d, embedding="plain")
    with pytest.raises(ValueError, match=r"has only plain keras.layers.Embedding layers \['embedding'\]; make them "
                                         r"searchable with ked.make_searchable\(model\)"):
        plain.fit(d.inputs(x[:100]), y[:100], epochs=1, verbose=0, callbacks=[ked.SingleShotPruner(0.3)])


def test_per_value_reports_show_the_mean_size_beside_the_largest():
    layer = ked.PrunableEmbedding([4, 3], 8, field_names=["a", "b"], name="emb")
    layer.build()
    layer.set_value_sizes([np.array([8, 1, 1, 2]), np.array([0, 0, 3])])
    text = ked.format_report([layer])
    row_a = next(line for line in text.splitlines() if line.split()[1:2] == ["a"])
    assert "8/8" in row_a and "3.00" in row_a  # largest 8, mean (8 + 1 + 1 + 2) / 4
    row_b = next(line for line in text.splitlines() if line.split()[1:2] == ["b"])
    assert "3/8" in row_b and "1.00" in row_b


def test_search_result_has_the_same_fields_for_every_method(small_data):
    d = small_data
    x, y = d.train
    for name in ("sseds", "pme"):
        model = _model(d)
        cb = ked.get_method(name).search(0.3, verbose=0)
        model.fit(d.inputs(x[:4000]), y[:4000], batch_size=500, epochs=1, verbose=0, callbacks=[cb])
        r = cb.result
        assert isinstance(r, ked.SearchResult) and r.method == type(cb).__name__
        assert r.params_after == ked.find_searchable_layers(model)[0].dimension_mask().kept_params
        assert r.params_after <= 0.3 * r.params_full and r.kept_fraction == r.params_after / r.params_full
        assert r.batches and r.seconds > 0 and cb.phase is ked.Phase.DONE and cb.phase == "done"
        assert (r.masks if name == "sseds" else r.sizes).keys() == {"embedding"}
