"""The docstring examples are runnable: run them."""

import doctest

import pytest

from keras_embdim import fields as field_layout, mask, methods, models, regularizers
from keras_embdim.export import compact, cross, exporter, fm, fold, lookup, serving_apis
from keras_embdim.layers import fields, hard_mask_embedding, mixed_dimension_embedding, prunable_embedding, twins_mask_layer
from keras_embdim.search import budget, entries, hard_mask, rotation


@pytest.mark.parametrize(
    "module",
    [prunable_embedding, hard_mask_embedding, twins_mask_layer, mixed_dimension_embedding, fields, models, budget,
     entries, hard_mask, rotation, field_layout, methods, regularizers, compact, cross, exporter, fm, fold,
     lookup, mask, serving_apis],
)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


def test_api_reference_is_generated_from_the_current_docstrings():
    """docs/reference/api.md is `python docs/reference/gen_api.py` of this code, in both Keras modes."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "docs" / "reference" / "gen_api.py"
    spec = importlib.util.spec_from_file_location("gen_api", path)
    gen_api = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_api)
    text = gen_api.render()
    assert "### `keras_embdim.SingleShotPruner(budget, min_dim=1" in text
    assert text == (path.parent / "api.md").read_text(), "docs/reference/api.md is stale: run python docs/reference/gen_api.py"
