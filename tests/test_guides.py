"""The Python snippets of README.md and docs/guides/ run as written.

Each guide's snippets run in order in one namespace (a later one uses what an
earlier one built), after a prelude that defines what the prose assumes (a
model, `train`, `vocab_sizes`, ...) on small generated data, in a fresh folder;
a check then looks at what the snippet promised (an export at `models/ctr/1`,
...). Every snippet is listed here: one that cannot run here (a TF Serving
server, a cluster) says which test covers it instead, and a new snippet fails
`test_every_snippet_is_listed` until it is listed.
"""

from __future__ import annotations

import json
import os
import pathlib
import re

import numpy as np
import pytest
import tensorflow as tf

import keras_embdim as ked
from keras_embdim import keras

ROOT = pathlib.Path(__file__).resolve().parents[1]
FILES = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs" / "guides").glob("*.md"))


def snippets(path: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / path).read_text(), re.S)


def _data():
    return ked.data.make_synthetic_ctr(num_rows=3000, num_fields=3, min_vocab=20, max_vocab=120, seed=0)


def ctr_prelude(embedding="prunable") -> dict:
    """A compiled MLP over 3 generated fields, its `train` dataset and the names the prose uses."""
    data = _data()
    model = ked.models.compile_ctr(ked.models.build_mlp(data.vocab_sizes, data.field_names, embedding_dim=16,
                                                        hidden=(16,), embedding=embedding))
    return {"ked": ked, "keras": keras, "tf": tf, "np": np, "model": model, "train": data.dataset("train", 256),
            "vocab": 100, "vocab_sizes": data.vocab_sizes, "names": data.field_names,
            "validation_rows": data.inputs(data.split("valid")[0][:128])}


def ham_prelude() -> dict:
    return ctr_prelude(lambda v, d, n: ked.HardMaskEmbedding(v, d, field_names=n))


def amtl_prelude() -> dict:
    ns = ctr_prelude("plain")
    ns["trained_model"] = ns.pop("model")
    ns["trained_model"].fit(ns["train"], epochs=1, verbose=0)
    return ns


def getting_started_prelude() -> dict:
    rng = np.random.default_rng(0)
    vocab = {"user": 50_000, "item": 20_000, "city": 300, "device": 8}
    x = {f: rng.integers(0, n, 2048).astype(np.int32) for f, n in vocab.items()}
    y = ((x["city"] % 3 == 0) ^ (x["device"] % 2 == 0)).astype(np.float32)
    return {"train_ds": tf.data.Dataset.from_tensor_slices((x, y)).batch(256)}


def tfrs_prelude() -> dict:
    if ked.KERAS_3:
        pytest.skip("TFRS runs on tf_keras only: the suite's Keras 2 run runs this guide")
    import tensorflow_recommenders as tfrs
    data = _data()
    x, y = data.split("train")
    train = tf.data.Dataset.from_tensor_slices((data.inputs(x), y.astype(np.float32))).batch(256)
    return {"ked": ked, "keras": keras, "tf": tf, "tfrs": tfrs, "train": train,
            "some_test_features": data.inputs(data.split("test")[0][:64]),
            "field_names": data.field_names, "vocab_sizes": data.vocab_sizes}


def _exported(base: str):
    def check(ns):
        assert sorted(os.listdir(base)) == ["1"], os.listdir(base)
        assert os.path.isfile(os.path.join(base, "1", "saved_model.pb"))

    return check


def _folded_into(path: str, layer: str) -> None:
    """The export at `path` folded its searched layer into `layer` (its dimensions.json says)."""
    with open(os.path.join(path, "dimensions.json")) as fh:
        folds = json.load(fh)["export"]["folds"]
    assert any(layer in rec["folded_into"] for rec in folds.values()), folds


def _kept_within(budget: float):
    def check(ns):
        for layer in ked.find_searchable_layers(ns["model"]):
            mask = layer.dimension_mask()
            assert mask.kept_params <= budget * mask.full_params

    return check


# (file, index) -> ("run", prelude, check) | ("skip", why). A guide's snippets share one namespace:
# the prelude of its first snippet; the others take None.
SNIPPETS = {
    ("README.md", 0): ("run", ctr_prelude, _exported("export/ctr")),
    ("README.md", 1): ("skip", "a sketch of a request (`...` for the other fields); test_deploy serves exports"),
    ("docs/guides/amtl.md", 0): ("run", amtl_prelude, _kept_within(0.4)),
    ("docs/guides/deployment.md", 0): ("run", ctr_prelude, _exported("models/ctr")),
    ("docs/guides/deployment.md", 1): ("skip", "a gRPC request to a running TF Serving; test_deploy loads exports as "
                                               "TF Serving does"),
    ("docs/guides/deployment.md", 2): ("skip", "a gRPC Regress request to a running TF Serving; test_deploy builds "
                                               "the same request and runs it as TF Serving does"),
    ("docs/guides/distribution.md", 0): ("skip", "a sketch (`compile(...)`); tests/test_distribute.py runs it"),
    ("docs/guides/distribution.md", 1): ("skip", "needs worker processes; tests/test_multiworker.py runs them"),
    ("docs/guides/distribution.md", 2): ("skip", "needs a cluster; tests/test_parameter_server.py runs one"),
    ("docs/guides/getting_started.md", 0): ("run", getting_started_prelude, None),
    ("docs/guides/getting_started.md", 1): ("run", None, None),
    ("docs/guides/getting_started.md", 2): ("run", None, _exported("models/ctr")),
    ("docs/guides/getting_started.md", 3): ("run", None, lambda ns: os.path.isfile("dims.png")
                                            and len(ns["df"]) == 4),
    ("docs/guides/ham.md", 0): ("run", ham_prelude, _kept_within(0.1 * 1.000001)),
    ("docs/guides/pme.md", 0): ("run", ctr_prelude, _exported("models/ctr")),
    ("docs/guides/scaling.md", 0): ("run", ctr_prelude, lambda ns: ns["model"].fit(ns["train"], epochs=1, verbose=0)),
    ("docs/guides/scaling.md", 1): ("run", None, lambda ns: ns["model"].fit(ns["train"], epochs=1, verbose=0)),
    ("docs/guides/sseds.md", 0): ("run", ctr_prelude, _kept_within(0.1 * 1.000001)),
    ("docs/guides/tfrs.md", 0): ("run", tfrs_prelude, _exported("models/ranking")),
    ("docs/guides/tfrs.md", 1): ("run", None, lambda ns: _folded_into("models/ranking/2", "cross_1")),
    ("docs/guides/tfrs.md", 2): ("skip", "its towers are examples/tfrs_retrieval.py's; tests/test_tfrs.py runs it"),
}


def test_every_snippet_is_listed():
    found = {(f, i) for f in FILES for i in range(len(snippets(f)))}
    assert found == set(SNIPPETS), {"not listed": sorted(found - set(SNIPPETS)),
                                    "no longer in the docs": sorted(set(SNIPPETS) - found)}


GUIDES = sorted({f for (f, _), entry in SNIPPETS.items() if entry[0] == "run"})


@pytest.mark.parametrize("path", GUIDES)
def test_snippets_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    for i, code in enumerate(snippets(path)):
        entry = SNIPPETS.get((path, i), ("skip", "not listed: test_every_snippet_is_listed fails"))
        if entry[0] == "skip":
            continue
        _, prelude, check = entry
        if prelude is not None:
            ns = prelude()
        exec(compile(code, f"{path} snippet {i}", "exec"), ns)  # noqa: S102 - the docs' own code
        if check is not None:
            assert check(ns) is not False, f"{path} snippet {i}"
