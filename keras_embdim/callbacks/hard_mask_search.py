"""`HardMaskSearch`: drives HardMaskEmbedding's search to a parameter budget."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from keras_embdim import _utils
from keras_embdim.callbacks.search_callback import EpochBoundedSearch, Phase
from keras_embdim.layers.hard_mask_embedding import HardMaskEmbedding
from keras_embdim.searchable import total_params
from keras_embdim.validation import check_int, check_number

# the share of the search in which a steadily pushed score crosses 0 (`HardMaskSearch(score_pace=...)`):
# chosen on the planted ranks, docs/reference/methods.md
DEFAULT_SCORE_PACE = 0.25


class HardMaskSearch(EpochBoundedSearch):
    """Search per-field dimensions of `HardMaskEmbedding` layers (HAM) to a budget.

    During `search_epochs` epochs (after `warmup_epochs` epochs in which the
    super-net trains with its scores held and no penalty; none by default)
    every `HardMaskEmbedding` trains its auxiliary scores with the
    straight-through hard mask, the surrogate temperature is annealed
    geometrically from `temperature[0]` to `temperature[1]`, and the layers
    penalise
    `sparsity_weight * relu(kept fraction - budget)`, the kept fraction being
    that of the hard mask, cost-weighted (`HardMaskEmbedding.sparsity_penalty`):
    the discrete network trained during the search settles at the budget with
    no penalty weight to tune. When the search ends the scores of all fields of
    all layers are ranked globally and the best kept until the budget (within
    one field-dimension, `keras_embdim.search.budget`), the mask freezes, and training
    continues on it (`after="finetune"`) or restarts from the initial weights
    with it (`after="retrain"`). If `fit` ends first, the search ends there.

    Args:
        budget: kept fraction of embedding parameters, in (0, 1].
        warmup_epochs: epochs the super-net trains with every column on before
            the search starts (default 0: the paper's protocol, masks and
            weights from the first step). Searched from the first step, a
            field that needs many columns has not learned to use them yet
            when the penalty starts removing columns, and a removed column
            gets no gradient to learn it later; after one warm-up epoch HAM
            kept more columns for such fields and beat uniform dims by more
            (docs/results/planted.md, `ham_warmup`).
        search_epochs: epochs of search before the mask freezes (default 1;
            at least 2 under ParameterServerStrategy, where the temperature is
            annealed at epoch boundaries: docs/guides/distribution.md).
        temperature: (start, end) of the annealed temperature (every step;
            every epoch when the epoch length is unknown or under
            ParameterServerStrategy).
        sparsity_weight: penalty weight (measured in docs/reference/methods.md).
        score_pace: share of the search's steps in which a score pushed the
            same way at every step (Adam moves a weight by about the learning
            rate per step) crosses from its initial value to 0 (default 0.25):
            each layer's `logit_scale` is set when the search starts to
            `initial_logit / (learning rate x score_pace x search steps)`, or
            the layer's own `logit_scale` where that is smaller (a search of
            fewer than `initial_logit / (learning rate x score_pace x
            logit_scale)` steps, 40 with the defaults and Adam at 1e-3: the
            pace only ever slows the scores down).
            None: the layers' own `logit_scale` (the paper's fixed pace, 30),
            at which a column is switched off within a few dozen steps, before
            the super-net has learned which fields need many columns. On the
            planted ranks (1M rows, 5 seeds, the oracle's budget) the paced
            scores (about a twentieth of the paper's scale there) beat uniform
            dims by +0.0091 on unequal ranks (+3.6 standard errors; the fixed
            pace: +0.0035, +1.3) and were within 2 standard errors of uniform
            on equal ranks (docs/results/planted.md, `ham` against
            `ham_fixed`); on the TFRS retrieval example, whose towers overfit
            the user ids, the fixed pace's recall@10 was twice the paced one's
            (docs/results/tfrs_results.md). Needs the epoch length: without it (a dataset of
            unknown length and no `steps_per_epoch`) the layers keep their
            `logit_scale`, as do layers whose `initial_logit` is not positive
            (with a `score_pace` other than the default that is an error).
            Scores still at their initial value are kept;
            scores that moved are taken as learned at this pace (a search
            resumed from a checkpoint) and kept as stored, so pass None for
            layers whose scores moved under another scale (a layer that
            searched on its own before) or whose `logit_scale` you set.
        trace_every: steps between two records of the kept fraction (`trace`).
        min_dim, width_budget, after, layers, log_dir, verbose: as for `SingleShotPruner`
            (`min_dim=0`, off by default, lets a field be dropped whole;
            `width_budget` caps the columns the final ranking keeps).

    Example:

    ```python
    emb = ked.HardMaskEmbedding(vocab_sizes, 16)
    model.fit(train, epochs=3, callbacks=[ked.HardMaskSearch(budget=0.1),
                                          ked.OrthogonalRegularizer(1e-3)])
    ```
    """

    layer_types = (HardMaskEmbedding,)
    method = "HAM"
    logs_penalty = True

    def __init__(
        self,
        budget: float,
        *,
        warmup_epochs: int = 0,
        search_epochs: int = 1,
        temperature: tuple[float, float] = (1.0, 0.1),
        sparsity_weight: float = 0.01,
        score_pace: float | None = DEFAULT_SCORE_PACE,
        trace_every: int = 10,
        min_dim: int = 1,
        width_budget: float | None = None,
        after: str = "finetune",
        layers: Sequence[str] | None = None,
        log_dir: Any = None,
        verbose: int = 1,
    ):
        super().__init__(
            budget, search_epochs=search_epochs, warmup_epochs=warmup_epochs, min_dim=min_dim,
            width_budget=width_budget, after=after, layers=layers, log_dir=log_dir, verbose=verbose
        )
        self.trace_every = check_int("trace_every", trace_every, 1)
        try:
            t0, t1 = (check_number("temperature", t, low=0, strict=True) for t in temperature)
        except (TypeError, ValueError):
            raise ValueError(f"`temperature` must be two positive numbers (start, end); received {temperature!r}.")
        self.temperature = (t0, t1)
        self.sparsity_weight = check_number("sparsity_weight", sparsity_weight, low=0, strict=True)
        self.score_pace = None if score_pace is None else check_number("score_pace", score_pace, low=0, strict=True)
        self._search_steps: int | None = None
        self._warmup_steps = 0
        self.trace: list[dict] = []

    def _check_layers_fresh(self) -> None:
        frozen = [l.name for l in self._layers if l.frozen]
        if frozen:
            raise ValueError(
                f"HardMaskSearch: layers {frozen} are frozen already, the others not; "
                "build new HardMaskEmbedding layers to search again."
            )

    def parameter_server_blocker(self) -> str | None:
        """Under ParameterServerStrategy the temperature is annealed at epoch boundaries
        (no batch-level callback runs there), which needs at least two search epochs."""
        if self.search_epochs < 2:
            return ("it anneals the temperature between batches, and there only at epoch boundaries, so "
                    "one search epoch would search at the start temperature throughout; pass search_epochs >= 2 "
                    "(shorter epochs via fit's steps_per_epoch)")
        return None

    def _start(self) -> None:
        steps = (self.params or {}).get("steps")
        # under ParameterServerStrategy: annealed per epoch (`_on_search_epoch_end`)
        self._search_steps = int(steps) * self.search_epochs if steps and not self._on_parameter_server else None
        self._warmup_steps = int(steps) * self.warmup_epochs if steps else 0
        for layer in self._layers:
            layer.sparsity_weight.assign(self.sparsity_weight)
            layer.sparsity_target.assign(self.budget)
            layer.temperature.assign(self.temperature[0])
        self._pace_scores(steps)
        self._pause(self.phase == Phase.WARMUP)

    def _pace_scores(self, steps) -> None:
        """`score_pace`: set each layer's `logit_scale` from the search's length. Scores still
        at their initial value keep it (a fresh search); scores that moved were learned at this
        pace (a search resumed from a checkpoint), so they are kept as stored."""
        if self.score_pace is None:
            return
        # with the default pace a layer it cannot pace keeps its scale (said at verbose > 0); a pace
        # passed by hand warns (no epoch length) or refuses (no positive initial score)
        default = self.score_pace == DEFAULT_SCORE_PACE
        if not steps:
            if default:
                self.log.info(f"{self.name}: the epoch length is unknown; the scores keep the layers' logit_scale.")
                return
            self.log.warning(f"{self.name}: score_pace needs the epoch length (fit's steps_per_epoch); the "
                             "layers keep their logit_scale.")
            return
        # the rate now: both Kerases give a schedule's value at the optimizer's step
        lr = float(_utils.to_numpy(self.model.optimizer.learning_rate))
        changed = False
        for layer in self._layers:
            if layer.initial_logit <= 0:
                if default:
                    self.log.info(f"{self.name}: layer '{layer.name}' starts its scores at {layer.initial_logit} "
                                  "(not positive): it keeps its logit_scale.")
                    continue
                raise ValueError(f"`score_pace` needs a positive `initial_logit` in layer '{layer.name}' (the "
                                 f"distance the scores travel to switch a column off); received {layer.initial_logit}.")
            # never faster than the layer's own pace: a short search keeps it (the paced scale would have a
            # score cross 0 within a few steps)
            scale = min(layer.initial_logit / (lr * self.score_pace * int(steps) * self.search_epochs),
                        layer.logit_scale)
            fresh = bool(np.allclose(layer.mask_scores(), layer.initial_logit, rtol=1e-5, atol=0))
            if scale != layer.logit_scale:
                layer.set_logit_scale(scale, keep_scores=fresh)
                changed = True
        if changed:
            _utils.force_retrace(self.model)

    def _pause(self, paused: bool) -> None:
        """Pause or run the layers' search (`HardMaskEmbedding.search_paused`); retrace if that changed it."""
        changed = [layer for layer in self._layers if layer.search_paused != paused]
        for layer in changed:
            layer.search_paused = paused
        if changed:
            _utils.force_retrace(self.model)

    def _begin_search(self) -> None:
        # the temperature is the start one (a resumed fit has set it where the search was: `_resume_search`)
        self._pause(False)

    def _end_warmup(self) -> None:
        self._pause(False)

    def _plan(self) -> str:
        t0, t1 = self.temperature
        warm = (f"{self.warmup_epochs} warm-up epoch{'s' if self.warmup_epochs > 1 else ''} with every column on, "
                "then " if self.warmup_epochs else "")
        return (f"{warm}{self.search_epochs} search epoch{'s' if self.search_epochs > 1 else ''} of hard masks "
                f"(temperature {t0:g} -> {t1:g}, sparsity weight {self.sparsity_weight:g}"
                + (f", scores paced to cross 0 in {self.score_pace:g} of the search" if self.score_pace else "")
                + "), then one ranking")

    def _completed_in_layers(self) -> bool:
        return all(layer.frozen for layer in self._layers)

    def _resume_search(self, epoch: int) -> None:
        if self._search_steps:  # the temperature where the uninterrupted search had it
            self._anneal((self._step - self._warmup_steps) / self._search_steps)
        else:
            self._anneal((epoch - self.warmup_epochs) / self.search_epochs)

    def _anneal(self, progress: float) -> None:
        t0, t1 = self.temperature
        t = t0 * (t1 / t0) ** min(1.0, max(0.0, progress))
        for layer in self._layers:
            layer.temperature.assign(t)

    def _on_batch(self, batch, logs=None):
        super()._on_batch(batch, logs)  # counts the step (warm-up steps too)
        if self.phase != Phase.SEARCH:
            return
        if self._search_steps:
            self._anneal((self._step - self._warmup_steps) / self._search_steps)
        if self._step % self.trace_every == 0:
            kept, full = total_params(self._layers)
            self.trace.append({"step": self._step, "kept_fraction": kept / full})

    def _on_search_epoch_end(self, epoch: int) -> None:
        if not self._search_steps:  # epoch length unknown: anneal per epoch
            self._anneal((epoch + 1 - self.warmup_epochs) / self.search_epochs)

    def _finish(self):
        scores = [l.mask_scores().astype(np.float64) for l in self._layers]
        hard_kept, full = total_params(self._layers)
        masks, _, _ = self._select_and_apply(scores, "score")
        for layer in self._layers:
            layer.freeze(masks[layer.name], optimizer=self._optimizer)
        _utils.force_retrace(self.model)
        self._conclude(
            f"searched {self._step - self._warmup_steps} steps (the hard mask kept {100 * hard_kept / full:.1f}% "
            "before the final ranking)",
            masks=masks, params_before=int(hard_kept), scores={l.name: s for l, s in zip(self._layers, scores)},
        )
