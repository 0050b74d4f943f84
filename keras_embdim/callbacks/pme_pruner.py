"""`PMEPruner`: pruning-based multi-size embedding (PME) as a callback."""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from keras_embdim import _compat, budget as budget_lib
from keras_embdim.layers.searchable_embedding import SearchableEmbedding
from keras_embdim.callbacks.search_callback import EpochBoundedSearch
from keras_embdim.mask import total_params

logger = logging.getLogger("keras_embdim")


def select_entries(importances: list[np.ndarray], target: int, min_size: int = 0) -> list[np.ndarray]:
    """Keep the `target` most important entries over all tables; rows keep >= `min_size`.

    Returns per table the number of surviving entries of each row (its capacity).
    """
    counts = []
    floor_total = 0
    marked = []
    for imp in importances:
        k = min(min_size, imp.shape[1])
        m = np.zeros(imp.shape, bool)
        if k:
            top = np.argpartition(-imp, k - 1, axis=1)[:, :k]
            np.put_along_axis(m, top, True, axis=1)
        marked.append(m)
        floor_total += int(m.sum())
    if floor_total > target:
        raise ValueError(
            f"the budget of {target} entries is smaller than min_dim={min_size} per value alone ({floor_total})."
        )
    rest = target - floor_total
    # candidates: every entry not already kept by min_size (those are -inf here)
    parts = []
    for imp, m in zip(importances, marked):
        part = np.nan_to_num(np.asarray(imp, np.float32), nan=-1.0, copy=True).ravel()
        part[m.ravel()] = -np.inf
        parts.append(part)
    flat = parts[0] if len(parts) == 1 else np.concatenate(parts)
    del parts
    chosen = np.zeros(flat.shape, bool)
    if rest > 0:
        # the rest-th largest value, then everything above it and the first of its ties:
        # no index array of the whole table (a million-row table has 64M entries)
        kth = np.partition(flat, flat.size - rest)[flat.size - rest]
        np.greater(flat, kth, out=chosen)
        missing = rest - int(chosen.sum())
        if missing > 0:
            ties = np.flatnonzero(flat == kth)[:missing]
            chosen[ties] = True
    start = 0
    for imp, m in zip(importances, marked):
        c = chosen[start : start + imp.size].reshape(imp.shape) | m
        start += imp.size
        counts.append(c.sum(axis=1).astype(np.int32))
    return counts


class PMEPruner(EpochBoundedSearch):
    """Per-value sizes by pruning entries, then capacity transfer (PME).

    Search: during the first `search_epochs` epochs every searchable layer
    accumulates the importance `|w * dL/dw|` of each table entry on the
    training steps `fit` runs (`keras_embdim.gate_probe.EntryProbe`). Pruning:
    at the end of the search the `budget` most important entries over all
    tables survive (one global ranking; each value keeps at least `min_dim`).
    Capacity transfer: value i, with c_i surviving entries, gets size
    `d_i = c_i` (its first c_i columns) and training continues on those
    (`after="finetune"`, the trained values of the first c_i columns are kept)
    or restarts from the initial weights with them (`after="retrain"`). The
    kept parameters equal the surviving entries by construction.

    Args:
        budget: kept fraction of embedding parameters, in (0, 1].
        search_epochs: epochs over which importance is accumulated (default 1).
        min_dim: entries every value keeps at least (default 1). With 0 a
            value may keep nothing and embed to zeros, which reaches budgets
            below 1/D but costs accuracy: on MovieLens-100K at budget 0.1,
            AUC 0.7355 with 0 vs 0.7648 with 1 (docs/pme_min_dim_movielens.md).
        after, layers, log_dir, verbose: as for `SingleShotPruner`.

    Example:

    ```python
    model.fit(train, epochs=3, callbacks=[ked.PMEPruner(budget=0.1)])
    ```
    """

    layer_types = (SearchableEmbedding,)  # gate probes and per-field masks

    def __init__(
        self,
        budget: float,
        *,
        search_epochs: int = 1,
        min_dim: int = 1,
        after: str = "finetune",
        layers: Sequence[str] | None = None,
        log_dir: Any = None,
        verbose: int = 1,
    ):
        super().__init__(
            budget, search_epochs=search_epochs, min_dim=min_dim, after=after, layers=layers, log_dir=log_dir, verbose=verbose
        )
        self._started = 0.0

    def on_train_begin(self, logs=None):
        if self.phase == "done":
            return
        self._discover()
        self._sync_layers()
        if self._completed_in_layers():
            self._adopt_finished_search("the start of fit")
            return
        with_mask = [l.name for l in self._layers if not l.dimension_mask().is_full]
        if with_mask:
            raise ValueError(f"PMEPruner: layers {with_mask} are searched already (a mask is set).")
        for layer in self._layers:
            layer.attach_entry_probe().reset()
        _compat.force_retrace(self.model)
        self._started = time.perf_counter()

    def _completed_in_layers(self) -> bool:
        return any(layer.per_value and not layer.dimension_mask().is_full for layer in self._layers)

    def _resume_search(self, epoch: int) -> None:
        logger.warning(
            "PMEPruner: resumed at epoch %d of a %d-epoch search: the entry importance of the epochs "
            "before it is not in the checkpoint, so only epochs %d..%d are scored (with search_epochs=1 "
            "or a checkpoint taken after the search, the result is the uninterrupted one).",
            epoch, self.search_epochs, epoch, self.search_epochs - 1,
        )

    def _on_batch(self, batch, logs=None):
        if self.phase == "search":
            self._step += 1

    def _finish(self):
        search_seconds = time.perf_counter() - self._started
        probes = [l._gate_probe for l in self._layers]
        importances = [_compat.to_numpy(p.importance) for p in probes]
        batches = int(probes[0].batches.numpy())
        for layer in self._layers:
            layer.detach_gate_probe()
        kept_before, full = total_params(self._layers)
        target = budget_lib.budget_params(self.budget, full)
        sizes = select_entries(importances, target, self.min_dim)
        self._rewind()
        optimizer = getattr(self.model, "optimizer", None)
        for layer, s in zip(self._layers, sizes):
            layer.set_value_sizes(s, optimizer=optimizer)
        _compat.force_retrace(self.model)
        kept_after, _ = total_params(self._layers)
        self.phase = "done"
        self.result = {
            "budget": self.budget,
            "params_before": int(kept_before),
            "params_full": int(full),
            "params_after": int(kept_after),
            "surviving_entries": int(sum(int(s.sum()) for s in sizes)),
            "kept_fraction": kept_after / full,
            "step": self._step,
            "search_batches": batches,
            "search_seconds": search_seconds,
            "sizes": {l.name: s for l, s in zip(self._layers, sizes)},
            "scores": {},
        }
        if self._writer is not None:
            with self._writer.as_default():
                for layer in self._layers:
                    m = layer.dimension_mask()
                    for name, s in zip(m.field_names, m.value_sizes):
                        tf.summary.histogram(f"value_sizes/{layer.name}/{name}", s, step=self._step)
        self._announce(f"accumulated entry importance over {batches} steps; per-value sizes set")
