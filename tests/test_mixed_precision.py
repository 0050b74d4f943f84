"""Mixed precision: a model under a float16 / bfloat16 compute policy searches.

Keras computes a mixed-precision layer in the 16-bit dtype and reads its float
variables cast to it. The search state (masks, logits, temperatures, the twins
and their counts) is read at float32 whatever the policy.
"""

import numpy as np
import pytest
import tensorflow as tf

import keras_embdim as ked
from keras_embdim import keras

@pytest.fixture
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    try:
        yield request.param
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16", "mixed_float16"], indirect=True)
def test_twins_size_decision_reads_its_state_at_float32(policy):
    """The size chosen from `z_k - size_bias * size_k / D` with a size bias that float16 and
    bfloat16 round to 1: read at float32 it picks size 1, read at the compute dtype size 4."""
    layer = ked.TwinsMaskLayer(ked.PrunableEmbedding(10, 4, embeddings_initializer="ones"), min_dim=1)
    ids = np.array([0, 3], np.int32)
    layer(ids)
    bias, c = 1.0004, 0.75015  # size 1: -0.25 * bias = -0.2501 > c - bias = -0.25025 (size 4)
    assert float(tf.cast(tf.constant(bias), tf.bfloat16)) == float(tf.cast(tf.constant(bias), tf.float16)) == 1.0
    layer.size_bias.assign(bias)
    for branch in (layer.twins.high, layer.twins.low):
        _w1, _b1, w2, b2 = branch
        w2.assign(np.zeros(w2.shape, np.float32))  # both twins answer their bias: z = logit_scale * b2
        b2.assign(np.array([0.0, 0.0, 0.0, c / layer.logit_scale], np.float32))
    out = np.asarray(tf.cast(layer(ids), tf.float32))
    assert layer.compute_dtype == ("float32" if policy == "float32" else policy.split("_")[1])
    np.testing.assert_array_equal(out, [[1, 0, 0, 0], [1, 0, 0, 0]])
