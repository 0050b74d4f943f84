"""`PMEPruner`: pruning-based multi-size embedding (PME) as a callback."""

from __future__ import annotations

import logging
from typing import Any, Sequence

from keras_embdim import _utils
from keras_embdim.callbacks.search_callback import EpochBoundedSearch
from keras_embdim.layers.searchable_embedding import SearchableEmbedding
from keras_embdim.search import budget as budget_lib
from keras_embdim.search.entries import select_entries
from keras_embdim.searchable import total_params

logger = logging.getLogger("keras_embdim")


class PMEPruner(EpochBoundedSearch):
    """Per-value sizes by pruning entries, then capacity transfer (PME).

    Search: during the first `search_epochs` epochs every searchable layer
    accumulates the importance `|w * dL/dw|` of each table entry on the
    training steps `fit` runs (`keras_embdim.search.probes.EntryProbe`). Pruning:
    at the end of the search the `budget` most important entries over all
    tables survive (one global ranking, `keras_embdim.search.entries`; each
    value keeps at least `min_dim`). Capacity transfer: value i, with c_i
    surviving entries, gets size `d_i = c_i` (its first c_i columns) and
    training continues on those (`after="finetune"`, the trained values of the
    first c_i columns are kept) or restarts from the initial weights with them
    (`after="retrain"`). The kept parameters equal the surviving entries by
    construction.

    Args:
        budget: kept fraction of embedding parameters, in (0, 1].
        search_epochs: epochs over which importance is accumulated (default 1).
        min_dim: entries every value keeps at least (default 1). With 0 a
            value may keep nothing and embed to zeros, which reaches budgets
            below 1/D but costs accuracy: on MovieLens-100K at budget 0.1,
            AUC 0.7355 with 0 vs 0.7648 with 1 (docs/results/pme_min_dim_movielens.md).
        after, layers, log_dir, verbose: as for `SingleShotPruner`.

    Example:

    ```python
    model.fit(train, epochs=3, callbacks=[ked.PMEPruner(budget=0.1)])
    ```
    """

    layer_types = (SearchableEmbedding,)  # entry probes and per-value sizes
    method = "PME"

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
        self._probes: dict = {}  # layer -> the EntryProbe this callback attached

    def _check_layers_fresh(self) -> None:
        with_mask = [l.name for l in self._layers if not l.dimension_mask().is_full]
        if with_mask:
            raise ValueError(f"PMEPruner: layers {with_mask} are searched already (a mask is set).")

    def _start(self) -> None:
        self._probes = {layer: layer.attach_entry_probe() for layer in self._layers}
        for probe in self._probes.values():
            probe.reset()
        _utils.force_retrace(self.model)

    def _plan(self) -> str:
        return (f"{self.search_epochs} epoch{'s' if self.search_epochs > 1 else ''} of entry importance |w * dL/dw|, "
                f"then one global entry ranking (each value keeps >= {self.min_dim}) and capacity transfer")

    def _completed_in_layers(self) -> bool:
        return any(layer.per_value and not layer.dimension_mask().is_full for layer in self._layers)

    def _resume_search(self, epoch: int) -> None:
        logger.warning(
            "PMEPruner: resumed at epoch %d of a %d-epoch search: the entry importance of the epochs "
            "before it is not in the checkpoint, so only epochs %d..%d are scored (with search_epochs=1 "
            "or a checkpoint taken after the search, the result is the uninterrupted one).",
            epoch, self.search_epochs, epoch, self.search_epochs - 1,
        )

    def _finish(self):
        strategy = self.model.distribute_strategy
        importances = [self._probes[l].total_importance(strategy) for l in self._layers]
        batches = next(iter(self._probes.values())).total_batches(strategy)
        for layer in self._layers:
            layer.detach_probe()
        self._probes = {}
        kept_before, full = total_params(self._layers)
        sizes = select_entries(importances, budget_lib.budget_params(self.budget, full), self.min_dim)
        del importances  # the accumulators (one table each) go before the tables are pruned
        self._rewind()
        for layer, s in zip(self._layers, sizes):
            layer.set_value_sizes(s, optimizer=self._optimizer)
        _utils.force_retrace(self.model)
        self._conclude(f"accumulated entry importance over {batches} steps; per-value sizes set",
                       sizes={l.name: s for l, s in zip(self._layers, sizes)}, params_before=int(kept_before),
                       batches=batches)
