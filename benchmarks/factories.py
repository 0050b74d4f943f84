"""How the benchmarks build each method's model parts: one place, on `keras_embdim.methods`.

`embedding_and_callbacks(method, budget, data)` gives the `embedding=` argument
of `keras_embdim.models`, the embedding width and the callbacks of every method
of the grid: the four searches (by the registry), their `min_dim=0` variants
below 1/D, and the baselines (full, uniform, MDE, the frequency heuristic,
dropping whole fields).
"""

from __future__ import annotations

import time

import numpy as np

import keras_embdim as ked
from baselines import frequency_value_dims, mixed_dimension_dims
from grid_spec import ALL_METHODS, D
from keras_embdim import keras


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._t)


class EpochAUC(keras.callbacks.Callback):
    """Validation and test AUC after every epoch, with early stopping (patience 1).

    `best()` is the epoch (0-based) of the best validation AUC among those that
    end with the model at its budget (`search.result` set; every epoch when
    `search` is None). Training stops at the first such epoch that does not
    improve on the best one before it.

    Args:
        data: a `keras_embdim.data.CTRData` (its `valid` and `test` splits).
        search: the search callback of the run, or None.
    """

    def __init__(self, data, search=None):
        super().__init__()
        self.data, self.search = data, search
        self.valid, self.test, self.eligible = [], [], []

    def on_epoch_end(self, epoch, logs=None):
        from keras_embdim.metrics import roc_auc

        for (x, y), into in ((self.data.valid, self.valid), (self.data.test, self.test)):
            into.append(float(roc_auc(y, self.model.predict(self.data.inputs(x), batch_size=8192,
                                                            verbose=0).reshape(-1))))
        self.eligible.append(self.search is None or self.search.result is not None)
        best_before = [self.valid[e] for e in range(epoch) if self.eligible[e]]
        if self.eligible[-1] and best_before and self.valid[-1] <= max(best_before):
            self.model.stop_training = True

    def best(self) -> int:
        ok = [e for e, good in enumerate(self.eligible) if good]
        if not ok:
            raise RuntimeError("the search did not end within the epochs")
        return max(ok, key=lambda e: self.valid[e])


class StepTimer(keras.callbacks.Callback):
    """Wall time of every training step (`times`, seconds)."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._t = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._t)


class DropFields(ked.SingleShotPruner):
    """Baseline "drop the least important fields": SSEDS' gate scores summed per
    field rank the fields; in that order each field keeps its one best column
    while the budget allows (a field that does not fit is skipped), the others
    are dropped whole."""

    def __init__(self, budget: float, **kwargs):
        super().__init__(budget, min_dim=0, **kwargs)

    def select_dimensions(self, scores, costs, target, valid, ranking="score"):
        s = np.where(valid, np.nan_to_num(scores), 0.0)
        keep, spent = np.zeros(s.shape, bool), 0
        for f in np.argsort(-s.sum(1), kind="stable"):
            if spent + costs[f] <= target:
                keep[f, int(np.argmax(s[f]))] = True
                spent += int(costs[f])
        return keep


def _masked(dims_or_sizes, per_value: bool):
    """A layer factory whose PrunableEmbedding starts with fixed dims (no search)."""
    def build(v, dim, names):
        layer = ked.PrunableEmbedding(v, dim, field_names=names, name="embedding")
        layer.build()
        if per_value:
            layer.set_value_sizes(dims_or_sizes.astype(np.int32))
        else:
            layer.set_dimension_mask(np.arange(dim)[None, :] < dims_or_sizes[:, None])
        return layer

    return build


def embedding_and_callbacks(method: str, budget: float, data):
    """(embedding argument of `ked.models`, embedding dim, callbacks) of a method of the grid."""
    base = method[:-1] if method.endswith("0") and method[:-1] in ked.METHODS else method
    if base in ked.METHODS:  # a search, by the registry; "<name>0": min_dim=0 (below 1/D)
        m = ked.get_method(base)
        zero = base != method
        layer_kwargs = {"min_dim": 0} if zero and m.callback is ked.TwinsMaskSearch else {}
        search_kwargs = {"min_dim": 0} if zero and m.callback is not ked.TwinsMaskSearch else {}
        if m.callback is ked.PMEPruner:  # the grid's PME rows were measured on the tables' own axes, before
            search_kwargs["rotate"] = False  # rotate="auto" (planted.py's pme_mid_epoch and pme_rotation.py: with it)
        return (lambda v, dim, names: m.embedding(v, dim, names, **layer_kwargs), D,
                [m.search(budget, verbose=0, **search_kwargs)])
    if method == "full":
        return "plain", D, []
    if method == "uniform":  # floor(b * D) dims for every field: never over the budget
        return "plain", max(1, int(budget * D)), []
    if method == "uniform1":  # one dim per field, whatever the budget (it costs 1/D)
        return "plain", 1, []
    if method == "drop":
        return "prunable", D, [DropFields(budget, verbose=0)]
    if method == "freq":  # per-value sizes from training counts, no search (frequency heuristic)
        return _masked(frequency_value_dims(np.concatenate(data.value_counts), D, budget, min_dim=0), True), D, []
    if method in ("mde", "mde0"):
        dims = mixed_dimension_dims(data.vocab_sizes, D, budget, min_dim=0 if method == "mde0" else 1)
        return _masked(dims, False), D, []
    raise ValueError(f"method must be one of {ALL_METHODS}; received {method!r}.")
