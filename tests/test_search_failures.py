"""A loss that goes NaN during a search stops it clearly and keeps the last good masks."""

import logging

import numpy as np
import pytest

import keras_embdim as ked
from keras_embdim import keras


class Poison(keras.callbacks.Callback):
    """After `at` training steps, writes NaN into the output layer: the next loss is NaN."""

    def __init__(self, at):
        super().__init__()
        self.at, self.step = at, 0

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step == self.at:
            kernel = self.model.get_layer("ctr").kernel
            kernel.assign(np.full(kernel.shape, np.nan, np.float32))


def _ham(v, dim, names):
    return ked.HardMaskEmbedding(v, dim, field_names=names, name="embedding")


def _twins(v, dim, names):
    return ked.TwinsMaskLayer(ked.PrunableEmbedding(v, dim, field_names=names), name="embedding")


CASES = {
    "sseds": ("prunable", lambda: ked.SingleShotPruner(0.2, warmup_steps=10, scoring_steps=5, verbose=0)),
    "pme": ("prunable", lambda: ked.PMEPruner(0.2, search_epochs=2, verbose=0)),
    "ham": (_ham, lambda: ked.HardMaskSearch(0.2, search_epochs=2, verbose=0)),
    "amtl": (_twins, lambda: ked.TwinsMaskSearch(0.2, search_epochs=2, verbose=0)),
}


@pytest.mark.parametrize("method", sorted(CASES))
def test_nan_loss_stops_the_search_with_the_last_good_masks(method, small_data, caplog):
    keras.utils.set_random_seed(0)
    emb, make = CASES[method]
    d = small_data
    model = ked.models.compile_ctr(ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=8, hidden=(16,),
                                                        embedding=emb))
    cb = make()
    steps = -(-len(d.train[1]) // 500)
    at = steps + 3 if method != "sseds" else 5  # second epoch for the epoch-long searches, warm-up for sseds
    x, y = d.train
    with caplog.at_level(logging.ERROR, logger="keras_embdim"):
        hist = model.fit(d.inputs(x), y, batch_size=500, epochs=3, verbose=0, callbacks=[Poison(at), cb])
    assert cb.phase == "failed" and "loss became nan" in cb.error and cb.error in caplog.text
    assert len(hist.history["loss"]) == (2 if method != "sseds" else 1)  # stopped in the failing epoch
    layer = ked.find_searchable_layers(model)[0]
    mask = layer.dimension_mask()
    if method == "sseds":  # failed in warm-up: never pruned
        assert mask.is_full and "the start of the search" in cb.error
    else:  # the masks of the end of epoch 1, fixed
        assert "the end of epoch 1" in cb.error
        want = ked.dimension_history(layer)[-1]["kept_dims"] if method == "ham" else None
        if want is not None:
            np.testing.assert_array_equal(mask.kept_dims, want)
    assert cb.result.params_after == mask.kept_params
    # a second search on the same model is refused or finds nothing to undo: the model stays usable
    assert model.stop_training


@pytest.mark.parametrize("callback,blocked_by", [
    (lambda: ked.SingleShotPruner(0.1), "scoring_data="),
    (lambda: ked.SingleShotPruner(0.1, scoring_data=([np.zeros((4, 2), np.int64)], np.zeros(4)), warmup_steps=3),
     "warmup_steps"),
    (lambda: ked.SingleShotPruner(0.1, scoring_data=([np.zeros((4, 2), np.int64)], np.zeros(4))), None),
    (lambda: ked.HardMaskSearch(0.1), "search_epochs >= 2"),
    (lambda: ked.HardMaskSearch(0.1, search_epochs=2), None),
    (lambda: ked.PMEPruner(0.1), None),
    (lambda: ked.TwinsMaskSearch(0.1), None),
])
def test_what_blocks_each_search_under_parameter_server_strategy(callback, blocked_by):
    # the cluster itself runs in tests/test_parameter_server.py (tf_keras); which options it refuses is
    # decided before any cluster exists, in both Keras modes
    why = callback().parameter_server_blocker()
    if blocked_by is None:
        assert why is None
    else:
        assert blocked_by in why
