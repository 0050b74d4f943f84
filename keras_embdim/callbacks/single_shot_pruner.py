"""`SingleShotPruner`: single-shot embedding dimension search (SSEDS) as a callback."""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from keras_embdim import _compat, _utils
from keras_embdim._compat import keras
from keras_embdim.callbacks.search_callback import _RANKINGS, DimensionSearchCallback, Phase
from keras_embdim.layers.searchable_embedding import SearchableEmbedding
from keras_embdim.search import rotation
from keras_embdim.validation import check_bool, check_choice, check_int

logger = logging.getLogger("keras_embdim")

_SCORES = ("abs_mean", "mean_abs", "taylor", "fisher", "fisher_joint")


class SingleShotPruner(DimensionSearchCallback):
    """Prune embedding dimensions to a parameter budget in one scoring pass.

    The SSEDS method (docs/reference/methods.md): after a warm-up, every field-dimension
    `(f, j)` of every searchable layer gets a gate `alpha = 1` on its output; the
    gradient `dL/dalpha` is accumulated over `scoring_steps` training batches
    (the batches `fit` trains on: no data argument is needed), the scores are
    ranked globally over all fields of all layers, and the best are kept until
    the kept parameters reach `budget` of the total. Training then continues with
    the removed columns fixed at zero (`after="finetune"`) or from the initial
    weights with the searched dimensions (`after="retrain"`, the paper's
    protocol).

    Layers that already hold a per-field mask when `fit` starts (restored from
    a checkpoint taken after the search, or loaded from a `.keras` file) are
    not searched again: the callback reports their dims (`result.resumed`)
    and training goes on (docs/reference/architecture.md, resuming).

    Args:
        budget: kept fraction of embedding parameters, in (0, 1]. The kept
            parameters never exceed it and fall short by less than one
            field-dimension's cost.
        min_dim: every field keeps at least this many columns (default 1).
            `min_dim=0` lets the search drop whole fields; it is needed for
            budgets below 1/D (where `min_dim=1` alone is over the budget) but
            drops a key id field as readily as a noise field (docs/results/benchmarks.md,
            low budgets: Frappe at 3 % loses its item field and falls to AUC 0.49).
        width_budget: kept fraction of the columns (field-dimensions) of all
            searched layers, in (0, 1], or None (default: no cap). The
            parameter budget lets fields of a few ids keep every column for
            almost nothing, so the searched model's first Dense multiplies
            several times the columns of the uniform model of the same
            parameter count, for every request; `width_budget=u / D`, with u
            that model's dims (about `budget x D`), keeps at most its columns
            (docs/results/serving.md for the latency, the sseds_options pages
            for the AUC: next to nothing lost on Frappe, most of the search's
            gain over uniform dims on planted data).
        warmup_steps: training steps before scoring. Default: all of the first
            epoch but its last `scoring_steps` batches (at least half an epoch),
            so that scoring reads batches the model has not seen yet; one epoch
            when the epoch length is unknown (then prefer `scoring_data`).
        scoring_steps: batches whose gate gradients are accumulated (default 20).
        score: "fisher_joint" (default): each field's columns scored
            together from every example's own gate gradients: the
            second-order (empirical Fisher) estimate of the loss a field
            loses when cut to its most needed columns, cross terms included,
            so a field whose information is spread over several columns is not
            starved (`keras_embdim.search.joint`; costs `batch x F x D^2` per
            scored batch and an `[F, D, D]` accumulator). Or, one column at a
            time: "abs_mean" (|mean of dL/dalpha over batches|, the previous
            default), "mean_abs" (mean of |dL/dalpha|), "taylor", "fisher"
            (half the mean over examples of each example's squared
            dl/dalpha). On planted ranks (docs/results/planted.md) the joint
            score beats uniform dims by two standard errors on unequal ranks
            (+2.5 SE; "abs_mean" +1.8), is within them where ranks are
            alike, sends noise fields to `min_dim` in every
            seed, and unlike "fisher" does not fall below uniform with six
            noise fields; on Frappe every score's median AUC is within
            0.0001 of the others (docs/results/sseds_options_frappe.md).
        ranking: "score" (rank by score alone, the paper) or "cost" (score per
            parameter).
        after: "finetune" (default) or "retrain".
        scoring_data: optional dataset `(x, y[, sample_weight])` to score on
            instead of the training batches (scored right after warm-up).
            Needed under ParameterServerStrategy, where the coordinator scores
            it at the end of the first epoch (docs/guides/distribution.md).
        rotate: rotate each field's columns to the principal axes of its rows
            before scoring, and the kernel rows of the Dense layers that consume
            them back (the model computes the same function), so that a field's
            information sits in its leading columns where a column search can
            keep it (`keras_embdim.search.rotation`; measured in
            docs/results/planted.md). Needs each layer's output to reach Dense
            layers only through data-moving layers (the MLP over concatenated
            fields; not FM or pooling) and `after="finetune"`.
        layers: optional names of the searchable layers to prune (default all).
        log_dir: a path or a `keras.callbacks.TensorBoard`; if given, kept params,
            kept dims per field and the score histogram are written there.
        verbose: 0 silent, 1 prints the plan and the pruning summary.

    Example:

    ```python
    model.fit(train, epochs=3, callbacks=[ked.SingleShotPruner(budget=0.1)])
    ```
    """

    layer_types = (SearchableEmbedding,)  # gate probes and per-field masks
    initial_phase = Phase.WARMUP
    method = "SSEDS"

    def __init__(
        self,
        budget: float,
        *,
        min_dim: int = 1,
        width_budget: float | None = None,
        warmup_steps: int | None = None,
        scoring_steps: int = 20,
        score: str = "fisher_joint",
        ranking: str = "score",
        after: str = "finetune",
        scoring_data: Any = None,
        rotate: bool = False,
        layers: Sequence[str] | None = None,
        log_dir: Any = None,
        verbose: int = 1,
    ):
        super().__init__(budget, min_dim=min_dim, width_budget=width_budget, after=after, layers=layers,
                         log_dir=log_dir, verbose=verbose)
        check_bool("rotate", rotate)
        if rotate and self.after != "finetune":
            raise ValueError("`rotate=True` needs after='finetune': a rewind to the initial weights would undo the "
                             f"rotation the masks were chosen in; received after={after!r}.")
        self.rotate = bool(rotate)
        self.warmup_steps = None if warmup_steps is None else check_int("warmup_steps", warmup_steps, 0)
        self.scoring_steps = check_int("scoring_steps", scoring_steps, 1)
        self.score = check_choice("score", score, _SCORES)
        self.ranking = check_choice("ranking", ranking, _RANKINGS)
        self.scoring_data = scoring_data
        self._scored = 0
        self._warmup_resolved: int | None = None
        self._probes: dict = {}  # layer -> the GateProbe this callback attached

    # ------------------------------------------------------- template hooks
    def parameter_server_blocker(self) -> str | None:
        """Under ParameterServerStrategy the training batches run on the workers, out of the
        coordinator's sight: SSEDS scores there on `scoring_data` (on the coordinator, reading
        the parameter servers' variables) at the end of the first epoch, its warm-up."""
        if self.scoring_data is None:
            return ("it scores gate gradients on the training batches, which run on the workers there; pass "
                    "scoring_data= (held-out batches the coordinator scores at the end of the first epoch)")
        if self.warmup_steps is not None:
            return ("warmup_steps counts batches, which the coordinator does not see there; leave it unset "
                    "(the warm-up is the first epoch: set its length with steps_per_epoch)")
        if self.rotate:
            return "rotate=True rewrites whole tables from the coordinator; search without it there"
        return None

    def _start(self) -> None:
        if self.rotate:  # fail before training, with the model unchanged
            rotation.require_rotatable(self.model, self._layers, self.name)
        self._warmup_resolved = self.warmup_steps
        steps = (self.params or {}).get("steps")
        if self._on_parameter_server:
            self._warmup_resolved = None  # scored at the end of the first epoch (on_epoch_end)
        elif self._warmup_resolved is None and steps:
            # Score on the last batches of the first epoch: the model has not
            # seen them yet, so their gradients are those of held-out data. On
            # batches it has already fitted, memorised noise fields look
            # important (measured: docs/reference/methods.md).
            self._warmup_resolved = max(1, int(steps) // 2, int(steps) - self.scoring_steps)

    def _plan(self) -> str:
        warm = f"{self._warmup_resolved} warm-up steps" if self._warmup_resolved is not None else "a warm-up epoch"
        where = "the scoring_data" if self.scoring_data is not None else "the next training batches"
        turn = "each field rotated to its principal axes, " if self.rotate else ""
        return (f"{warm}, then {turn}gate gradients ({self.score}) on {self.scoring_steps} batches of {where}, "
                "then one ranking")

    def _search_end_step(self) -> int | None:
        if self._warmup_resolved is None:
            return None
        return self._warmup_resolved + (0 if self.scoring_data is not None else self.scoring_steps)

    def _completed_in_layers(self) -> bool:
        return any(not layer.dimension_mask().is_full for layer in self._layers)

    # ------------------------------------------------------------ callbacks
    def _on_batch(self, batch, logs=None):
        if self.phase == Phase.DONE:
            return
        self._step += 1
        if self.phase == Phase.WARMUP and self._warmup_resolved is not None and self._step >= self._warmup_resolved:
            self._start_scoring()
        elif self.phase == Phase.SCORING:
            self._scored += 1
            if self._scored >= self.scoring_steps:
                self._finish()

    def on_epoch_end(self, epoch, logs=None):
        if not self._epoch_boundary(epoch, logs):
            return
        if self.phase == Phase.WARMUP and self._warmup_resolved is None:
            self._start_scoring()
        self._record_epoch(epoch, logs)

    def on_train_end(self, logs=None):
        if self.phase == Phase.SCORING:
            if self._probes and float(next(iter(self._probes.values())).batches.numpy()) > 0:
                self._finish_as_fit_ends()
            else:
                self._detach()
                self.phase = Phase.WARMUP
        if self.phase == Phase.WARMUP and self._layers:
            self.log.warning(
                f"SingleShotPruner: training ended before the search ran (warm-up of "
                f"{self._warmup_resolved if self._warmup_resolved is not None else 'one epoch of'} steps not "
                "finished); the model was not pruned. Train longer or lower warmup_steps."
            )
        super().on_train_end(logs)

    # --------------------------------------------------------------- search
    def _start_scoring(self):
        self._started = time.perf_counter()  # SSEDS' search time is its scoring (and the rotation)
        if self.rotate:
            for layer in self._layers:
                rotation.rotate_layer(self.model, layer, self._optimizer)
        self._probes = {layer: layer.attach_gate_probe() for layer in self._layers}
        for probe in self._probes.values():
            probe.reset()
            probe.record_pairs(self.score == "fisher_joint")
        if self.scoring_data is not None:
            self._score_explicit()
            self._finish()
            return
        _utils.force_retrace(self.model)
        self.phase = Phase.SCORING
        self._scored = 0

    def _score_explicit(self):
        data = self.scoring_data
        if not isinstance(data, tf.data.Dataset):
            data = tf.data.Dataset.from_tensor_slices(tuple(data) if isinstance(data, list) else data).batch(4096)
        variables = [v for l in self._layers for v in _utils.variable_parts(l.embedding_variable)]
        for batch in data.take(self.scoring_steps):
            x, y, sw = keras.utils.unpack_x_y_sample_weight(batch)
            with tf.GradientTape() as tape:
                y_pred = self.model(x, training=False)
                loss = _compat.compute_loss(self.model, x, y, y_pred, sw)
            tape.gradient(loss, variables)

    def _detach(self):
        for layer in self._probes:
            layer.detach_probe()
        if self._probes and self.scoring_data is None:
            _utils.force_retrace(self.model)
        self._probes = {}

    def _finish(self):
        strategy = self.model.distribute_strategy
        scores = [self._probes[l].scores(self.score, strategy) for l in self._layers]
        batches = next(iter(self._probes.values())).total_batches(strategy)
        self._detach()
        total = float(sum(np.abs(s).sum() for s in scores))
        if total > 0:
            scores = [s / total for s in scores]  # the paper normalises to sum 1
        if not all(np.isfinite(s).all() for s in scores):
            logger.warning("SingleShotPruner: non-finite gate gradients; those dims rank last.")
        masks, before, _ = self._select_and_apply(scores, self.ranking)
        self._conclude(f"scored {batches} batches at step {self._step}", masks=masks, params_before=before,
                       batches=batches, scores={l.name: s for l, s in zip(self._layers, scores)})
