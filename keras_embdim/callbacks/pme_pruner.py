"""`PMEPruner`: pruning-based multi-size embedding (PME) as a callback."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from keras_embdim import _utils
from keras_embdim.callbacks.search_callback import EpochBoundedSearch, Phase
from keras_embdim.layers.searchable_embedding import SearchableEmbedding
from keras_embdim.search import budget as budget_lib
from keras_embdim.search import rotation
from keras_embdim.search.entries import select_entries
from keras_embdim.searchable import total_params

logger = logging.getLogger("keras_embdim")

#: when `rotate` turns each field to its principal axes (True is "warmup_epoch"; "auto" is "mid_epoch"
#: where the model allows it, else no rotation)
ROTATE = ("auto", "warmup_epoch", "mid_epoch")


def _rotate_option(value: Any) -> str | None:
    if isinstance(value, (bool, np.bool_)):
        return "warmup_epoch" if value else None
    if isinstance(value, str) and value in ROTATE:
        return value
    raise ValueError(f"`rotate` must be one of {ROTATE}, True or False; received rotate={value!r}.")


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

    By default (`rotate="auto"`) each field's columns are first turned to the
    principal axes of its rows, and the consuming `Dense` kernel rows back,
    so that the model computes what it computed
    (`keras_embdim.search.rotation`): halfway through the first search
    epoch, whose first half trains the full table and whose second half is
    scored. A trained table spreads what a field carries over all its
    columns, so every entry of a frequent value looks about as important as
    the next, and "its first c_i columns" are any c_i of them; on the
    principal axes the first columns carry the most, and a value that keeps
    c_i columns keeps the c_i that carry the most of its field.

    Args:
        budget: kept fraction of embedding parameters, in (0, 1].
        search_epochs: epochs over which importance is accumulated (default 1).
        rotate: "auto" (default): "mid_epoch" where the model allows it,
            else no rotation (the reason is logged and kept in
            `no_rotation_reason`; the rotation done is `rotation`).
            "mid_epoch": the rotation halfway through the first search
            epoch; it needs a layer whose output reaches only `Dense` layers
            (through `Concatenate`, `Flatten`, `Reshape` and the like: not
            an FM inner product) and a known number of steps per epoch
            (`steps_per_epoch`, or data of known size), and it resets the
            optimizer's state of the rotated table and kernels; not under
            ParameterServerStrategy. True / "warmup_epoch": the same after
            one more epoch of plain training (a `fit` of one epoch ends in
            the warm-up, unsearched). False: the paper's PME, on the table's
            own axes, the default before "auto". On planted per-field ranks
            (5 seeds) "mid_epoch" removed PME's loss against uniform dims
            where every field needs the same rank (+0.0009 AUC over
            `rotate=False`, within two standard errors of uniform) and
            raised PME's AUC where ranks differ (+0.0031 on unequal ranks;
            docs/results/planted.md, rows `pme_mid_epoch`); trained to
            convergence on MovieLens-100K +0.0011 and +0.0022 at budgets 0.1
            and 0.2 (every seed higher), on Frappe within 0.0004 of it
            (docs/results/pme_rotation.md). After a fixed 3 epochs it was
            below `rotate=False` on Frappe at 0.2 (0.9341 vs 0.9353): there
            it gets to the same AUC later; train to convergence.
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
        rotate: bool | str = "auto",
        min_dim: int = 1,
        after: str = "finetune",
        layers: Sequence[str] | None = None,
        log_dir: Any = None,
        verbose: int = 1,
    ):
        self._rotate_arg = f"rotate={rotate!r}"  # as given, for messages
        rotate = _rotate_option(rotate)
        super().__init__(
            budget, search_epochs=search_epochs, warmup_epochs=1 if rotate == "warmup_epoch" else 0,
            min_dim=min_dim, after=after, layers=layers, log_dir=log_dir, verbose=verbose
        )
        #: as asked: None (no rotation), "auto", "warmup_epoch" or "mid_epoch"
        self.rotate = rotate
        #: what this fit does: None, "warmup_epoch" or "mid_epoch" ("auto" resolved at train begin)
        self.rotation: str | None = None if rotate == "auto" else rotate
        #: why rotate="auto" did not rotate (None if it did, or was not asked)
        self.no_rotation_reason: str | None = None
        self._rotation_pending = False  # the fields are still to be rotated (and then the probes attached)
        self._rotate_after = 0  # "mid_epoch": the batches of the first search epoch before the rotation
        self._probes: dict = {}  # layer -> the EntryProbe this callback attached

    def parameter_server_blocker(self) -> str | None:
        """Under ParameterServerStrategy PME accumulates at epoch boundaries (as every epoch-bounded
        search); `rotate` is refused there, as `SingleShotPruner`'s."""
        if self.rotate in ("warmup_epoch", "mid_epoch"):  # "auto" searches there without the rotation
            return f"{self._rotate_arg} rewrites whole tables from the coordinator; search without it there"
        return super().parameter_server_blocker()

    def _check_layers_fresh(self) -> None:
        with_mask = [l.name for l in self._layers if not l.dimension_mask().is_full]
        if with_mask:
            raise ValueError(f"PMEPruner: layers {with_mask} are searched already (a mask is set).")

    def _start(self) -> None:
        self.rotation = self._resolve_rotation()  # fails before training, with the model unchanged
        if self.rotation == "mid_epoch":
            self._rotate_after = int(self.params["steps"]) // 2
            self._rotation_pending = True  # the first half of the search epoch trains the full table
        elif self.phase == Phase.SEARCH:  # else the warm-up runs first (`_begin_search`)
            self._attach_probes()

    def _resolve_rotation(self) -> str | None:
        """The rotation this fit does. Asked for explicitly, it must be possible (else a ValueError);
        "auto" is "mid_epoch" where it is, else no rotation (`no_rotation_reason` says why)."""
        if self.rotate is None:
            return None
        steps = int((self.params or {}).get("steps") or 0)
        no_steps = ("the number of steps per epoch is unknown (pass steps_per_epoch to fit, or data of known "
                    "size)" if not steps else "an epoch has one step" if steps < 2 else None)
        if self.rotate != "auto":
            rotation.require_rotatable(self.model, self._layers, self.name, self._rotate_arg)
            if self.rotate == "mid_epoch" and no_steps:
                raise ValueError(f"{self.name}(rotate='mid_epoch') rotates halfway through the first search epoch, "
                                 f"but {no_steps}; use rotate='warmup_epoch'.")
            return self.rotate
        why = ("ParameterServerStrategy (the rotation rewrites whole tables from the coordinator)"
               if self._on_parameter_server else rotation.why_not_rotatable(self.model, self._layers) or no_steps)
        if why is not None:
            self.no_rotation_reason = why
            self.log.info(f"{self.name}: rotate='auto': the fields are searched on their own axes, not rotated: "
                          f"{why}.")
            return None
        return "mid_epoch"

    def _begin_search(self) -> None:
        """The warm-up (`rotate=True`) is over: the rotation and the probes wait for the next epoch's
        start, so that a backup written at the end of the warm-up epoch (`BackupAndRestore`, in
        whichever order the callbacks run) holds the weights the rotation starts from, and a run
        resumed from it rotates the same table the uninterrupted run did."""
        self._rotation_pending = True

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)  # a resumed search past the warm-up begins here
        if self._rotation_pending and self.rotation == "warmup_epoch" and self.phase == Phase.SEARCH:
            self._rotate_and_attach()

    def _on_batch(self, batch, logs=None):
        super()._on_batch(batch, logs)
        if (self._rotation_pending and self.rotation == "mid_epoch" and self.phase == Phase.SEARCH
                and int(batch) + 1 >= self._rotate_after):
            self._rotate_and_attach()

    def _rotate_and_attach(self) -> None:
        self._rotation_pending = False
        for layer in self._layers:
            rotation.rotate_layer(self.model, layer, self._optimizer)
        self._attach_probes()

    def _attach_probes(self) -> None:
        self._probes = {layer: layer.attach_entry_probe() for layer in self._layers}
        for probe in self._probes.values():
            probe.reset()
        _utils.force_retrace(self.model)

    def _plan(self) -> str:
        turn = {None: "", "warmup_epoch": "a warm-up epoch, then each field rotated to its principal axes, then ",
                "mid_epoch": f"{self._rotate_after} steps of plain training, then each field rotated to its "
                             "principal axes, then the rest of "}[self.rotation]
        epochs = f"{self.search_epochs} epoch{'s' if self.search_epochs > 1 else ''}"
        return (f"{turn}{epochs} of entry importance |w * dL/dw|, "
                f"then one global entry ranking (each value keeps >= {self.min_dim}) and capacity transfer")

    def _completed_in_layers(self) -> bool:
        return any(layer.per_value and not layer.dimension_mask().is_full for layer in self._layers)

    def _resume_search(self, epoch: int) -> None:
        done = epoch - self.warmup_epochs  # search epochs scored before the checkpoint
        if done <= 0:  # resumed in the warm-up or where the search starts: nothing scored was lost
            return
        if self.rotation == "mid_epoch":  # the restored tables were rotated in the first search epoch
            self._rotation_pending = False
            self._attach_probes()
        logger.warning(
            "PMEPruner: resumed at search epoch %d of a %d-epoch search: the entry importance of the epochs "
            "before it is not in the checkpoint, so only search epochs %d..%d are scored (with search_epochs=1 "
            "or a checkpoint taken after the search, the result is the uninterrupted one).",
            done, self.search_epochs, done, self.search_epochs - 1,
        )

    def _finish(self):
        if not self._probes:  # `fit` ended before the rotation (rotate=...): nothing was scored
            self._rotation_pending = False
            self.phase = Phase.WARMUP
            self.log.warning(f"{self.name}: training ended before the rotation of {self._rotate_arg}, "
                             "before anything was scored; the model was not searched. Train for more epochs.")
            return
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
        turned = {None: "", "warmup_epoch": " on the fields' principal axes (after a warm-up epoch)",
                  "mid_epoch": " on the fields' principal axes (from halfway through the first search epoch)"}
        self._conclude(f"accumulated entry importance over {batches} steps{turned[self.rotation]}; per-value "
                       "sizes set",
                       sizes={l.name: s for l, s in zip(self._layers, sizes)}, params_before=int(kept_before),
                       batches=batches)
