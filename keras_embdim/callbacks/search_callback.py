"""`DimensionSearchCallback`: what every search callback shares (a template method).

`on_train_begin` finds the layers (a clear message when they are of another
kind), re-derives their state from restored variables, adopts a finished
search, says in one line what the search will do and when (and warns when
fit leaves almost no steps after it), then calls the subclass's `_start`.
Subclasses score (`_on_batch`, `on_epoch_end`) and end with `_conclude`,
which records a `SearchResult`, the time it took and the summary.
Shared as well: budget and option checks, one global selection under the
budget over all fields of all layers (`select_dimensions`, overridable),
fine-tune or rewind, stopping on a non-finite loss, and logging (Keras logs,
the `keras_embdim` logger, TensorBoard, and a per-epoch history of kept dims
that `dimensions.json` includes, `dimension_history`).
"""

from __future__ import annotations

import enum
import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from keras_embdim import _utils
from keras_embdim._compat import keras
from keras_embdim.report import format_report
from keras_embdim.search import budget as budget_lib
from keras_embdim.searchable import find_searchable_layers, total_params
from keras_embdim.validation import (check_choice, check_fraction, check_int, check_names, check_not_parameter_server,
                                     check_verbose, is_parameter_server)

logger = logging.getLogger("keras_embdim")

_AFTER = ("finetune", "retrain")
_RANKINGS = ("score", "cost")
#: warn at train begin when less than this share of `fit`'s steps follows the search
FINETUNE_WARNING_SHARE = 0.2

# Which callback searches a layer, and the per-epoch history of its kept dims:
# kept by the callbacks, not written onto the layers.
_OWNERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_HISTORY: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def dimension_history(layer: Any) -> list[dict]:
    """Kept dims per field at the end of every epoch of the search callbacks that searched
    `layer` (`[{"epoch", "step", "kept_dims"}, ...]`; empty if none did)."""
    return list(_HISTORY.get(layer, []))


class Phase(str, enum.Enum):
    """Where a search is: before it (warm-up), scoring, searching, done, or stopped."""

    WARMUP = "warmup"
    SCORING = "scoring"
    SEARCH = "search"
    DONE = "done"
    FAILED = "failed"


@dataclass
class SearchResult:
    """What a search callback decided (`callback.result`).

    Attributes:
        method: the callback's class name.
        budget: the kept fraction asked for.
        params_full: embedding parameters of the searched layers at full size.
        params_before: parameters the search network kept when the search
            ended, before the final selection under the budget (HAM's hard
            mask, AMTL's twins; the full size for SSEDS and PME).
        params_after: parameters kept (never above the budget).
        step: the training step the search ended at.
        seconds: how long the search took (SSEDS: its scoring).
        masks: per-field layers: layer name -> `[F, D]` kept columns.
        sizes: per-value layers: layer name -> `[rows]` sizes.
        scores: what was ranked, layer name -> array.
        batches: batches scored (SSEDS' gate gradients, PME's entry importance).
        price: AMTL: the price per parameter that landed on the budget.
        resumed: set when a finished search was adopted (from a checkpoint): when.
        error: set when the search stopped on a non-finite loss.
    """

    method: str
    budget: float
    params_full: int
    params_after: int
    params_before: int | None = None
    step: int = 0
    seconds: float = 0.0
    masks: dict = field(default_factory=dict)
    sizes: dict = field(default_factory=dict)
    scores: dict = field(default_factory=dict)
    batches: int | None = None
    price: float | None = None
    resumed: str | None = None
    error: str | None = None

    @property
    def kept_fraction(self) -> float:
        return self.params_after / self.params_full if self.params_full else 1.0


class SearchLog:
    """Where a search reports: the `keras_embdim` logger, stdout (`verbose`) and TensorBoard."""

    def __init__(self, name: str, verbose: int, log_dir: str | None):
        self.name, self.verbose, self.log_dir = name, verbose, log_dir
        self._writer = None

    def info(self, msg: str) -> None:
        logger.info(msg)
        if self.verbose:
            print(msg)

    def warning(self, msg: str) -> None:
        logger.warning(msg)
        if self.verbose:
            print(f"WARNING: {msg}")

    @property
    def writer(self):
        if self.log_dir and self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        return self._writer

    def scalars(self, step: int, values: dict) -> None:
        if self.writer is not None:
            with self.writer.as_default():
                for key, value in values.items():
                    tf.summary.scalar(key, value, step=step)

    def histograms(self, step: int, values: dict) -> None:
        if self.writer is not None:
            with self.writer.as_default():
                for key, value in values.items():
                    tf.summary.histogram(key, np.nan_to_num(np.asarray(value, np.float64)).ravel(), step=step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()


def _columns(layers: Sequence[Any]) -> int:
    """Field-dimensions (columns) of the searched layers: what `width_budget` is a fraction of."""
    return int(sum(layer.num_fields * layer.output_dim for layer in layers))


class DimensionSearchCallback(keras.callbacks.Callback):
    """Base of the callbacks that search embedding dimensions under a budget.

    Args:
        budget: kept fraction of embedding parameters, in (0, 1], or a
            `keras_embdim.ByteBudget`.
        min_dim: columns every field (per-value: every value) keeps at least.
        width_budget: per-field searches: kept fraction of the columns
            (field-dimensions) of all searched layers, in (0, 1], or None (no
            cap); see `select_dimensions`.
        after: "finetune" or "retrain" (rewind every weight and the optimizer,
            its slots and its step count, to their values at `fit` start, and
            apply the searched dims).
        layers: names of the searchable layers to search (default all).
        log_dir: a path or a `keras.callbacks.TensorBoard`.
        verbose: print the plan at train begin and the summary when the search ends.
    """

    #: layer classes a subclass searches (None: any searchable layer)
    layer_types: tuple | None = None
    #: the phase before `on_train_begin`
    initial_phase: Phase = Phase.SEARCH
    #: the paper's acronym (the glossary in docs/reference/methods.md)
    method: str = ""

    def __init__(
        self,
        budget: float,
        *,
        min_dim: int = 1,
        width_budget: float | None = None,
        after: str = "finetune",
        layers: Sequence[str] | None = None,
        log_dir: Any = None,
        verbose: int = 1,
    ):
        super().__init__()
        # a fraction, or a ByteBudget resolved to one when the layers are known
        self.budget_spec = budget
        self.budget = 1.0 if isinstance(budget, budget_lib.ByteBudget) else check_fraction("budget", budget)
        self.min_dim = check_int("min_dim", min_dim, 0)
        self.width_budget = (None if width_budget is None
                             else check_fraction("width_budget", width_budget, of="the embedding columns"))
        self.after = check_choice("after", after, _AFTER)
        self.layer_names = check_names("layers", layers)
        self.log_dir = _utils.tensorboard_log_dir(log_dir)
        self.verbose = check_verbose(verbose)
        self.log = SearchLog(self.name, self.verbose, self.log_dir)
        self.phase = self.initial_phase
        self.result: SearchResult | None = None
        self.penalties: list[dict] = []  # per search epoch: the layers' search penalties
        self.history: dict[str, list] = {}  # layer name -> kept dims per epoch
        self._layers: list = []
        self._step = 0
        self._snapshot = None
        self._snapshot_step: int | None = None  # the optimizer's step count at the snapshot
        self._good_masks: dict = {}
        self._good_when = "the start of the search"
        self._final_masks: dict = {}  # layer -> the mask its search ended with (kept against restores)
        self._final_epoch = 0  # the epoch the search ended in
        self._epoch = 0  # the epoch under way
        self._first_epoch: int | None = None  # first epoch of the current fit (> 0: resumed)
        self._started = 0.0
        self._on_parameter_server = False  # set by set_model: epoch-boundary actions only
        self._ended_by_fit = False  # the search ended because fit did (`_finish_as_fit_ends`)

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def error(self) -> str | None:
        return self.result.error if self.result is not None else None

    def set_model(self, model):
        # Keras calls set_model before it checks the callbacks against the strategy: our error comes first
        why = self.parameter_server_blocker()
        if why is not None:
            check_not_parameter_server(f"{self.name} ({self.method})" if self.method else self.name,
                                       model.distribute_strategy, why)
        self._on_parameter_server = is_parameter_server(model.distribute_strategy)
        super().set_model(model)

    # ------------------------------------------------ ParameterServerStrategy
    def parameter_server_blocker(self) -> str | None:
        """Why this search, with its options, cannot run under `ParameterServerStrategy`
        (None: it runs there, acting only at epoch boundaries).

        There `fit` schedules the steps on the workers from the coordinator and
        runs no batch-level callback; at the end of an epoch it waits for every
        step, so the coordinator may read and change the variables (on the
        parameter servers) before the next epoch's steps start. A search that
        needs to act between batches returns the reason.
        """
        return ("Keras runs no batch-level callback there and this search acts between batches "
                "(probes, masks, retraces) from the coordinator")

    def _implements_train_batch_hooks(self) -> bool:
        # tf_keras asks this of every callback under ParameterServerStrategy and refuses those that say
        # yes; ours then act at epoch boundaries only (`parameter_server_blocker`)
        return not self._on_parameter_server and super()._implements_train_batch_hooks()

    def _epoch_boundary(self, epoch: int, logs: dict | None) -> bool:
        """Under ParameterServerStrategy, at the end of an epoch: the search step is the epoch's
        last, and a non-finite epoch loss stops the search (the batch-level check cannot run).
        Returns False when it stopped."""
        if not self._on_parameter_server:
            return True
        steps = (self.params or {}).get("steps")
        if steps:
            self._step = (int(epoch) + 1) * int(steps)
        loss = (logs or {}).get("loss")
        if self.phase not in (Phase.DONE, Phase.FAILED) and self._layers and loss is not None:
            value = float(np.asarray(loss))
            if not np.isfinite(value):
                self._abort(value)
                return False
        return True

    # ------------------------------------------------------ template method
    def on_train_begin(self, logs=None):
        self._check_same_model()
        if self.phase in (Phase.DONE, Phase.FAILED) and self._layers:
            self.log.info(f"{self.name}: the search is over; training continues on its dims.")
            self._final_masks = {}  # ended in an earlier fit: the layers' masks are the user's to change now
            return
        self._discover()
        self._sync_layers()
        if self._completed_in_layers():
            self._adopt_finished_search("the start of fit")
            return
        self._check_layers_fresh()
        self._started = time.perf_counter()
        self._start()
        self._announce_plan()

    def _check_same_model(self) -> None:
        """A search callback searches one model; its state (phase, step, snapshot, masks) is that
        model's. Given to another model's `fit` it would do nothing there (a finished search) or mix
        the two (one stopped mid-fit by an exception): refused instead."""
        if not self._layers:
            return
        current = {id(l) for l in find_searchable_layers(self.model)}
        if all(id(l) in current for l in self._layers):
            return
        searched = ", ".join(f"'{l.name}'" for l in self._layers)
        raise ValueError(
            f"{self.name}: this callback searches layers {searched} of another model "
            f"(phase: {self.phase.value}); a search callback searches one model. Pass a new {self.name} to the fit of "
            f"model '{self.model.name}' (for a model loaded from this search's checkpoint too: a new one adopts "
            "the search from its layers). The model was not changed."
        )

    def _start(self) -> None:
        """Subclasses: set the layers up for the search (called once per `fit`)."""

    def _plan(self) -> str:
        """Subclasses: what the search does and when, for the line at train begin."""
        return ""

    def _search_end_step(self) -> int | None:
        """Subclasses: the step at which the search ends (None if unknown)."""
        return None

    def _check_layers_fresh(self) -> None:
        """Subclasses: refuse layers that hold part of a finished search."""

    def _completed_in_layers(self) -> bool:
        """Subclasses: the layers hold the result of a finished search of this kind."""
        return False

    def _resume_search(self, epoch: int) -> None:
        """Subclasses: continue a search restored at the start of `epoch` (> 0)."""

    def _on_batch(self, batch, logs=None) -> None:
        """Subclasses: what a search does after each training batch."""

    # ---------------------------------------------------------------- setup
    def _discover(self) -> None:
        found = find_searchable_layers(self.model, self.layer_names)
        layers = [l for l in found if isinstance(l, self.layer_types)] if self.layer_types else found
        if not layers:
            raise ValueError(self._no_layers_message(found))
        for layer in layers:
            if not layer.built:
                # a subclassed model (e.g. a tfrs.Model) builds its layers on the
                # first batch; ours need no input shape, so build them now
                layer.build()
        for layer in layers:
            owner = _OWNERS.get(layer)
            if owner is not None and owner is not self:
                raise ValueError(
                    f"{self.name}: layer '{layer.name}' is already searched by another "
                    f"{type(owner).__name__}; use one search callback per model."
                )
        too_wide = [f"'{l.name}' (output_dim={l.output_dim})" for l in layers if self.min_dim > l.output_dim]
        if too_wide:
            raise ValueError(
                f"{self.name}: min_dim={self.min_dim} is larger than the width of layers {', '.join(too_wide)}; "
                "min_dim must be <= output_dim. The model was not changed."
            )
        _, full = total_params(layers)
        if isinstance(self.budget_spec, budget_lib.ByteBudget):
            self.budget = self.budget_spec.fraction(full)
        floor = sum(budget_lib.min_params(l.field_vocab_sizes, l.output_dim, self.min_dim) for l in layers)
        target = budget_lib.budget_params(self.budget, full)
        if floor > target:
            spec = self.budget_spec if isinstance(self.budget_spec, budget_lib.ByteBudget) else self.budget
            need = (
                f"{floor * self.budget_spec.bytes_per_param:,} B"
                if isinstance(self.budget_spec, budget_lib.ByteBudget) else f"{floor / full:.4f}"
            )
            raise ValueError(
                f"{self.name}: budget={spec} keeps {target:,} of {full:,} embedding "
                f"parameters, but min_dim={self.min_dim} alone keeps {floor:,}; raise budget to at "
                f"least {need} or lower min_dim. The model was not changed."
            )
        if self.width_budget is not None:
            columns = _columns(layers)
            cap = budget_lib.budget_params(self.width_budget, columns)  # the same floor as a parameter budget
            floor_columns = sum(l.num_fields * min(self.min_dim, l.output_dim) for l in layers)
            if floor_columns > cap:
                raise ValueError(
                    f"{self.name}: width_budget={self.width_budget} keeps {cap:,} of {columns:,} embedding columns, "
                    f"but min_dim={self.min_dim} alone keeps {floor_columns:,}; raise width_budget to at least "
                    f"{floor_columns / columns:.4f} or lower min_dim. The model was not changed."
                )
        for layer in layers:
            _OWNERS[layer] = self
        self._layers = layers
        self._first_epoch = None
        self._remember_masks("the start of the search")
        if self.after == "retrain":
            self._snapshot = self.model.get_weights()
            self._snapshot_step = _utils.optimizer_step(self._optimizer)

    def _no_layers_message(self, found: list) -> str:
        """Why a model has nothing for this callback, and what to use instead."""
        from keras_embdim import methods

        wanted = methods.layer_for(type(self))
        if found:
            kinds = sorted({type(l).__name__ for l in found})
            fits = sorted({c for l in found for c in methods.callbacks_for(l)})
            return (
                f"{self.name} found {', '.join(kinds)} layers: use {' or '.join(fits)}, or build the embeddings "
                f"with {wanted}. The model was not changed."
            )
        plain = [l.name for l in _utils.flatten_layers(self.model) if isinstance(l, keras.layers.Embedding)]
        if plain:
            return (
                f"{self.name}: model '{self.model.name}' has only plain keras.layers.Embedding layers {plain}; "
                "make them searchable with ked.make_searchable(model) (ked.add_twins(model) for TwinsMaskSearch), "
                f"or build them with {wanted}. The model was not changed."
            )
        return (
            f"{self.name}: model '{self.model.name}' has no searchable embedding layer "
            f"({wanted}); build its embeddings with keras_embdim's layers. The model was not changed."
        )

    def _announce_plan(self) -> None:
        """One line at train begin: what the search will do and when; a warning when `fit`
        leaves almost no steps after it."""
        kept, full = total_params(self._layers)
        target = budget_lib.budget_params(self.budget, full)
        names = ", ".join(f"'{l.name}'" for l in self._layers)
        plan = self._plan()
        self.log.info(
            f"{self.name}: budget {100 * self.budget:.2f}% ({target:,} of {full:,} embedding parameters) over "
            f"{names}; {plan}{'; ' if plan else ''}then {self.after}."
        )
        steps, epochs = (self.params or {}).get("steps"), (self.params or {}).get("epochs")
        planned = self._search_end_step()
        if steps and epochs and planned is not None:
            total = int(steps) * int(epochs)
            end = min(planned, total)  # a search that outlasts fit ends with it
            left = total - end
            if left < FINETUNE_WARNING_SHARE * total:
                cut = f" (it would need {planned})" if planned > total else ""
                self.log.warning(
                    f"{self.name}: the search ends at step {end} of fit's {total} ({epochs} epoch"
                    f"{'s' if int(epochs) != 1 else ''} x {steps} steps){cut}, so only {left} "
                    f"step{'s' if left != 1 else ''} of {self.after} follow it; train for more epochs (or shorten "
                    "the search) so that the model can adapt to the searched dims."
                )

    # ------------------------------------------------------------ selection
    def select_dimensions(self, scores: np.ndarray, costs: np.ndarray, target: int, valid: np.ndarray,
                          ranking: str = "score") -> np.ndarray:
        """Which field-dimensions to keep: `[G, D]` booleans from `[G, D]` scores (all
        fields of all layers, padded to the widest; `valid` marks real cells), `[G]`
        column costs and the `target` in parameters. The default is one global
        ranking (`keras_embdim.search.budget.select_under_budget`); a subclass may
        apply another rule (e.g. a baseline that drops whole fields).

        With `width_budget`, at most `floor(width_budget x columns)` columns are kept
        (all layers together): the parameter budget lets a field of a few ids keep
        every column for almost nothing, so a search keeps several times the
        columns of the uniform model of the same parameter count, and the first
        Dense layer over the concatenated fields multiplies all of them for every
        request (docs/results/serving.md). `width_budget=u / D`, u the uniform
        model's dims, keeps at most its width; the best columns are kept while
        both fit."""
        max_columns = None
        if self.width_budget is not None:
            max_columns = budget_lib.budget_params(self.width_budget, int(np.asarray(valid).sum()))
        return budget_lib.select_under_budget(scores, costs, target, min_dim=self.min_dim, ranking=ranking,
                                              valid=valid, max_columns=max_columns)

    def _select_and_apply(self, scores: list[np.ndarray], ranking: str = "score") -> tuple[dict, int, int]:
        """One selection of `scores` (one `[F, D]` array per layer) under the budget, applied.

        Returns `(masks by layer name, kept before, full)`."""
        kept_before, full = total_params(self._layers)
        width = max(l.output_dim for l in self._layers)
        rows = sum(s.shape[0] for s in scores)
        all_scores = np.full((rows, width), np.nan)
        valid = np.zeros((rows, width), bool)  # layers of different widths: padding never kept
        row = 0
        for s in scores:
            all_scores[row : row + s.shape[0], : s.shape[1]] = s
            valid[row : row + s.shape[0], : s.shape[1]] = True
            row += s.shape[0]
        costs = np.concatenate([np.asarray(l.field_vocab_sizes) for l in self._layers])
        keep = self.select_dimensions(all_scores, costs, budget_lib.budget_params(self.budget, full), valid, ranking)
        masks, row = {}, 0
        for layer, s in zip(self._layers, scores):
            masks[layer.name] = keep[row : row + s.shape[0], : s.shape[1]]
            row += s.shape[0]
        self._rewind()
        for layer in self._layers:
            layer.set_dimension_mask(masks[layer.name], optimizer=self._optimizer)
        return masks, int(kept_before), int(full)

    @property
    def _optimizer(self):
        return getattr(self.model, "optimizer", None)

    def _rewind(self) -> None:
        """`after="retrain"`: every weight back to its value at `fit` start, the optimizer as it was
        then: slots zeroed and its step count set back, so that a learning-rate schedule starts over
        and Adam's bias correction restarts. (Left at the search's step count, Adam's first steps
        after the rewind are too long: for a steady gradient its step after k steps from zeroed
        slots is (1 - 0.9^k) / sqrt(1 - 0.999^k) times a fresh optimizer's, 3.2x at k = 1, 6.5x
        at 10, 1.3x at 1,000.)"""
        if self.after == "retrain" and self._snapshot is not None:
            self.model.set_weights(self._snapshot)
            if self._optimizer is not None:
                _utils.reset_optimizer_state(self._optimizer, self.model.trainable_weights)
                _utils.set_optimizer_step(self._optimizer, self._snapshot_step)
            self._snapshot = None

    def _finish_as_fit_ends(self) -> None:
        """`fit` ended (its epochs, `EarlyStopping`, `stop_training`) before the search did: the
        search ends there, on what it has seen, and says what did not happen after it."""
        end = self._search_end_step()
        self._ended_by_fit = True
        self._finish()
        if self.phase != Phase.DONE:
            return
        planned = f" (step {self._step} of the {end} it planned)" if end else ""
        after = ("the weights were rewound to the start of the search (after='retrain') and nothing retrained "
                 "them: fit again to retrain" if self.after == "retrain" else
                 "no finetune followed it: fit again so that the model adapts to the searched dims")
        self.log.warning(f"{self.name}: fit ended before the search did{planned}; the search ended there, on what "
                         f"it had seen, and {after}.")

    def _width_note(self) -> str:
        """`, N of M columns (width_budget w)` when the kept columns were capped."""
        if self.width_budget is None:
            return ""
        kept = sum(int(l.dimension_mask().keep.sum()) for l in self._layers)
        total = _columns(self._layers)
        return f", {kept:,} of {total:,} columns (width_budget {self.width_budget:g})"

    def _conclude(self, headline: str, **fields: Any) -> SearchResult:
        """The search is over: record the result, say what was kept and how long it took."""
        kept, full = total_params(self._layers)
        self.phase = Phase.DONE
        self.result = SearchResult(
            method=self.name, budget=self.budget, params_full=int(full), params_after=int(kept), step=self._step,
            seconds=time.perf_counter() - self._started, **fields,
        )
        r = self.result
        self._final_masks = {layer: layer.dimension_mask() for layer in self._layers}
        self._final_epoch = self._epoch
        self.log.info(
            f"{self.name}: {headline}; kept {r.params_after:,} of {r.params_full:,} embedding "
            f"parameters ({100 * r.kept_fraction:.2f}%, budget {100 * self.budget:.2f}%){self._width_note()} "
            f"in {r.seconds:.1f} s, "
            f"{'as fit ended' if self._ended_by_fit else f'then {self.after}'}.\n" + format_report(self._layers)
        )
        self.log.histograms(self._step, {f"scores/{name}": s for name, s in r.scores.items()})
        for layer in self._layers:
            m = layer.dimension_mask()
            if m.granularity == "value":
                self.log.histograms(self._step, {f"value_sizes/{layer.name}/{n}": s
                                                 for n, s in zip(m.field_names, m.value_sizes)})
        self._write_summaries()
        return r

    # ------------------------------------------------------------ resuming
    def _sync_layers(self) -> bool:
        """Python state of the layers from their (possibly restored) variables."""
        changed = [layer.sync_search_state() for layer in self._layers]
        if any(changed):
            _utils.force_retrace(self.model)
        return any(changed)

    def _adopt_finished_search(self, when: str) -> None:
        """The layers already hold a finished search (e.g. restored from a checkpoint
        taken after it): keep their dims and train on; nothing is searched again."""
        for layer in self._layers:
            layer.detach_probe()
            layer.freeze_table(False)
        _utils.force_retrace(self.model)
        self._snapshot = None
        kept, full = total_params(self._layers)
        self.phase = Phase.DONE
        self._final_masks = {layer: layer.dimension_mask() for layer in self._layers}
        self._final_epoch = self._epoch
        masks = {l.name: l.dimension_mask() for l in self._layers}
        self.result = SearchResult(
            method=self.name, budget=self.budget, params_full=int(full), params_after=int(kept), resumed=when,
            masks={n: m.keep for n, m in masks.items() if m.granularity == "field"},
            sizes={n: np.concatenate(m.value_sizes) for n, m in masks.items() if m.granularity == "value"},
        )
        self.log.info(
            f"{self.name}: at {when} the layers already hold a finished search ({kept:,} of {full:,} "
            "embedding parameters kept); training continues on those dims, nothing is searched again."
        )

    def on_epoch_begin(self, epoch, logs=None):
        """Resuming (`BackupAndRestore`, or `fit(initial_epoch=k)` on a model loaded
        from a `ModelCheckpoint`): the first epoch of this `fit` is > 0. The
        restored variables say where the search was: finished (keep its dims) or
        still running (go on from step `epoch x steps per epoch`)."""
        self._epoch = int(epoch)
        if self._first_epoch is not None:
            return
        self._first_epoch = int(epoch)
        if epoch == 0 or not self._layers or self.phase in (Phase.DONE, Phase.FAILED):
            return
        self._sync_layers()
        if self._completed_in_layers():
            self._adopt_finished_search(f"epoch {epoch} (resumed)")
            return
        steps = (self.params or {}).get("steps")
        if steps:
            self._step = int(epoch) * int(steps)
        self._resume_search(int(epoch))
        self._remember_masks(f"the start of resumed epoch {epoch}")
        logger.info("%s: resumed mid-search at epoch %d (search step %d).", self.name, epoch, self._step)

    # ---------------------------------------------------------- bad losses
    def _remember_masks(self, when: str) -> None:
        """Keep each layer's current mask: the one a failed search falls back to."""
        self._good_masks = {layer: layer.dimension_mask() for layer in self._layers}
        self._good_when = when

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if self.phase not in (Phase.DONE, Phase.FAILED) and self._layers and loss is not None:
            value = float(np.asarray(loss))
            if not np.isfinite(value):
                self._abort(value)
                return
        self._on_batch(batch, logs)

    def _abort(self, loss: float) -> None:
        """The loss is not finite: stop training, keep the last good masks, say so.

        The weights of the failing step are whatever it left (as with
        `keras.callbacks.TerminateOnNaN`): restore them from a checkpoint.
        """
        for layer, mask in self._good_masks.items():
            layer.detach_probe()
            layer.freeze_table(False)
            layer.end_search(mask, optimizer=self._optimizer)
        _utils.force_retrace(self.model)
        kept, full = total_params(self._layers)
        error = (
            f"{self.name}: the training loss became {loss} at search step {self._step}; training stopped "
            f"and the search ended with the masks of {self._good_when} ({kept:,} of {full:,} embedding "
            "parameters kept). Lower the learning rate or check the inputs, then search again on a fresh model."
        )
        self.phase = Phase.FAILED
        self.result = SearchResult(method=self.name, budget=self.budget, params_full=int(full),
                                   params_after=int(kept), step=self._step, error=error)
        self.model.stop_training = True
        logger.error(error)

    # ------------------------------------------------------------- logging
    def _record_epoch(self, epoch: int, logs: dict | None) -> None:
        if not self._layers:
            return
        if self.phase not in (Phase.DONE, Phase.FAILED):
            self._remember_masks(f"the end of epoch {epoch + 1}")
        kept, full = total_params(self._layers)
        if logs is not None:
            logs["embdim_kept_params"] = float(kept)
            logs["embdim_kept_fraction"] = kept / full
        for layer in self._layers:
            record = {"epoch": int(epoch), "step": self._step, "kept_dims": layer.dimension_mask().kept_dims.tolist()}
            self.history.setdefault(layer.name, []).append(record)
            _HISTORY.setdefault(layer, []).append(record)
        self._write_summaries()

    def _log_penalties(self, logs: dict | None) -> None:
        """Each layer's search penalty at the end of a search epoch: in `logs` (so in
        `History` under Keras 3) as `embdim_penalty_<layer>`, in `self.penalties`, and in
        TensorBoard as `embdim/penalty/<layer>`."""
        values = {layer.name: float(_utils.to_numpy(layer.search_penalty())) for layer in self._layers}
        self.penalties.append({"step": self._step, **values})
        if logs is not None:  # Keras 3's History keeps keys callbacks add to the logs; tf_keras's does not
            for name, v in values.items():
                logs[f"embdim_penalty_{name}"] = v
        self.log.scalars(self._step, {f"embdim/penalty/{name}": v for name, v in values.items()})

    def _write_summaries(self) -> None:
        if self.log.writer is None:
            return
        kept, full = total_params(self._layers)
        values = {"embdim/kept_params": kept, "embdim/kept_fraction": kept / full}
        for layer in self._layers:
            m = layer.dimension_mask()
            for name, d in zip(m.field_names, m.kept_dims):
                values[f"kept_dims/{layer.name}/{name}"] = int(d)
        self.log.scalars(self._step, values)
        self.log.flush()

    def on_train_end(self, logs=None):
        self._keep_searched_masks()
        self.log.flush()

    def _keep_searched_masks(self) -> None:
        """A search that ended in this `fit` stays on its layers when another callback restored
        weights from before its end (`EarlyStopping(restore_best_weights=True)` restores every
        variable, the masks and the search's state included, and would silently undo the search:
        the export would then ship full tables). The searched masks are imposed again on the
        restored weights, and the warning says how to have a finetuned epoch restored instead."""
        if self.phase != Phase.DONE or not self._final_masks:
            return
        reverted = {layer: mask for layer, mask in self._final_masks.items()
                    if not layer.dimension_mask().same_as(mask)}
        if not reverted:
            return
        for layer, mask in reverted.items():
            layer.detach_probe()
            layer.freeze_table(False)
            layer.end_search(mask, optimizer=self._optimizer)
        _utils.force_retrace(self.model)
        self.log.warning(
            f"{self.name}: weights restored after the search ended (EarlyStopping(restore_best_weights=True)?) "
            f"reverted the masks of {sorted(layer.name for layer in reverted)} to an epoch before the search's "
            f"end; the searched masks were imposed again on the restored weights, which were not trained with "
            f"them. To restore a finetuned epoch, give EarlyStopping start_from_epoch={self._final_epoch + 1} (the "
            "first epoch after the search), and list it before this callback and DimensionExporter (it restores "
            "as fit ends, and callbacks end in list order)."
        )


class EpochBoundedSearch(DimensionSearchCallback):
    """A search that runs during `search_epochs` epochs, then `_finish()`es.

    The search starts at the first epoch, or after `warmup_epochs` epochs of
    plain training (phase `WARMUP`: the subclass's `_begin_search` starts it;
    a resumed `fit` past the warm-up starts it at once). If `fit` ends first,
    the search ends there, so a model never leaves `fit` half-searched, and
    says what did not follow it (`_finish_as_fit_ends`; a `fit` that ends
    during the warm-up leaves the model unsearched, and says so). Subclasses
    implement `_finish` and may hook `_on_search_epoch_end`, `_begin_search`
    and `_end_warmup`.
    """

    #: the searched layers add a penalty to the loss (logged each search epoch)
    logs_penalty: bool = False

    def __init__(self, budget: float, *, search_epochs: int = 1, warmup_epochs: int = 0, **kwargs: Any):
        super().__init__(budget, **kwargs)
        self.search_epochs = check_int("search_epochs", search_epochs, 1)
        self.warmup_epochs = check_int("warmup_epochs", warmup_epochs, 0)
        if self.warmup_epochs:
            self.phase = Phase.WARMUP

    def _finish(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _begin_search(self) -> None:
        """Subclasses with a warm-up: start the search (the phase is `SEARCH` already)."""

    def _end_warmup(self) -> None:
        """Subclasses with a warm-up: `fit` ended during it; leave the layers as they were."""

    def parameter_server_blocker(self) -> str | None:
        """None: an epoch-bounded search runs under ParameterServerStrategy. Its probes and
        search variables are created in the strategy's scope (on the parameter servers, where
        every worker's step updates them), its retraces happen at epoch boundaries, and it
        ends at the end of its last search epoch, as it does elsewhere."""
        return None

    def _on_search_epoch_end(self, epoch: int) -> None:
        """Called at the end of every search epoch, before the search may end."""

    def _search_end_step(self) -> int | None:
        steps = (self.params or {}).get("steps")
        return int(steps) * (self.warmup_epochs + self.search_epochs) if steps else None

    def _on_batch(self, batch, logs=None):
        if self.phase in (Phase.WARMUP, Phase.SEARCH):
            self._step += 1

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        if epoch >= self.warmup_epochs:  # resumed past the warm-up
            self._leave_warmup()

    def _leave_warmup(self) -> None:
        if self.phase == Phase.WARMUP and self._layers:
            self.phase = Phase.SEARCH
            self._begin_search()

    def on_epoch_end(self, epoch, logs=None):
        if not self._epoch_boundary(epoch, logs):
            return
        if self.phase == Phase.SEARCH:
            self._on_search_epoch_end(epoch)
            if self.logs_penalty:
                self._log_penalties(logs)
            if epoch + 1 >= self.warmup_epochs + self.search_epochs:
                self._finish()
        elif epoch + 1 >= self.warmup_epochs:
            self._leave_warmup()
        self._record_epoch(epoch, logs)

    def on_train_end(self, logs=None):
        if self.phase == Phase.SEARCH and self._layers:
            self._finish_as_fit_ends()
        elif self.phase == Phase.WARMUP and self._layers:
            self._end_warmup()
            self.log.warning(
                f"{self.name}: training ended during the warm-up ({self.warmup_epochs} epoch"
                f"{'s' if self.warmup_epochs != 1 else ''} before the search); the model was not searched. "
                "Train for more epochs or lower warmup_epochs."
            )
        super().on_train_end(logs)
