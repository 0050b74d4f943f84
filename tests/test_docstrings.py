"""The docstring examples are runnable: run them."""

import doctest

import pytest

from keras_embdim import budget, models
from keras_embdim.layers import fields, hard_mask_embedding, mixed_dimension_embedding, prunable_embedding, twins_mask_layer


@pytest.mark.parametrize(
    "module",
    [prunable_embedding, hard_mask_embedding, twins_mask_layer, mixed_dimension_embedding, fields, models, budget],
)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
