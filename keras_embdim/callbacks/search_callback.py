"""`DimensionSearchCallback`: what every per-field search callback shares.

Budget and option checks, discovery of the searchable layers (with an early
feasibility check), one global selection under the budget over all fields of all
layers (`keras_embdim.budget`), applying the masks (fine-tune, or rewind to the
weights at `fit` start and retrain), and logging: Keras logs, the
`keras_embdim` logger, TensorBoard, and a per-epoch history of kept dims.
`SingleShotPruner` and `HardMaskSearch` differ only in how they score.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from keras_embdim import _compat, budget as budget_lib
from keras_embdim._compat import keras
from keras_embdim.mask import check_fraction, find_searchable_layers, total_params
from keras_embdim.report import format_report

logger = logging.getLogger("keras_embdim")

_AFTER = ("finetune", "retrain")
_RANKINGS = ("score", "cost")


def check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"`{name}` must be an integer >= {low}; received {name}={value!r}.")
    return int(value)


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {tuple(allowed)}; received {name}={value!r}.")
    return value


class DimensionSearchCallback(keras.callbacks.Callback):
    """Base of the callbacks that search per-field dimensions under a budget.

    Args:
        budget: kept fraction of embedding parameters, in (0, 1].
        min_dim: columns every field keeps at least.
        after: "finetune" or "retrain" (rewind every weight to its value at
            `fit` start, reset the optimizer, apply the searched mask).
        layers: names of the searchable layers to search (default all).
        log_dir: a path or a `keras.callbacks.TensorBoard`.
        verbose: print the summary when the search ends.
    """

    #: layer classes a subclass searches (None: any searchable layer)
    layer_types: tuple | None = None

    def __init__(
        self,
        budget: float,
        *,
        min_dim: int = 1,
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
        self.after = check_choice("after", after, _AFTER)
        self.layer_names = list(layers) if layers is not None else None
        self.log_dir = _compat.tensorboard_log_dir(log_dir)
        self.verbose = verbose
        self.phase = "search"
        self.result: dict | None = None
        self._layers: list = []
        self._step = 0
        self._snapshot = None
        self._writer = None
        self._good_masks: dict = {}
        self.error: str | None = None
        self.penalties: list[dict] = []  # per search epoch: the layers' search penalties
        self._first_epoch: int | None = None  # first epoch of the current fit (> 0: resumed)

    @property
    def name(self) -> str:
        return type(self).__name__

    # --------------------------------------------------------------- setup
    def _discover(self) -> None:
        layers = find_searchable_layers(self.model, self.layer_names)
        if self.layer_types is not None:
            layers = [l for l in layers if isinstance(l, self.layer_types)]
        if not layers:
            wanted = "/".join(t.__name__ for t in self.layer_types) if self.layer_types else "keras_embdim"
            raise ValueError(
                f"{self.name}: model '{self.model.name}' has no searchable embedding layer "
                f"({wanted}); build its embeddings with keras_embdim's layers. The model was not changed."
            )
        for layer in layers:
            if not layer.built:
                # a subclassed model (e.g. a tfrs.Model) builds its layers on the
                # first batch; ours need no input shape, so build them now
                layer.build()
        for layer in layers:
            owner = getattr(layer, "_embdim_search", None)
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
        for layer in layers:
            layer._embdim_search = self
        self._layers = layers
        self._first_epoch = None
        self._remember_masks("the start of the search")
        if self.after == "retrain":
            self._snapshot = self.model.get_weights()
        if self.log_dir and self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)

    # ------------------------------------------------------------ selection
    def _select_and_apply(self, scores: list[np.ndarray], ranking: str = "score") -> dict:
        """One global ranking of `scores` (one `[F, D]` array per layer) under the budget."""
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
        keep = budget_lib.select_under_budget(
            all_scores,
            costs,
            budget_lib.budget_params(self.budget, full),
            min_dim=self.min_dim,
            ranking=ranking,
            valid=valid,
        )
        optimizer = getattr(self.model, "optimizer", None)
        masks, row = {}, 0
        for layer, s in zip(self._layers, scores):
            masks[layer.name] = keep[row : row + s.shape[0], : s.shape[1]]
            row += s.shape[0]
        self._rewind()
        for layer in self._layers:
            layer.set_dimension_mask(masks[layer.name], optimizer=optimizer)
        kept_after, _ = total_params(self._layers)
        self.phase = "done"
        return {
            "budget": self.budget,
            "params_before": int(kept_before),
            "params_full": int(full),
            "params_after": int(kept_after),
            "kept_fraction": kept_after / full,
            "step": self._step,
            "scores": {l.name: s for l, s in zip(self._layers, scores)},
            "masks": masks,
        }

    def _rewind(self) -> None:
        """`after="retrain"`: every weight back to its value at `fit` start, optimizer reset."""
        if self.after == "retrain" and self._snapshot is not None:
            self.model.set_weights(self._snapshot)
            optimizer = getattr(self.model, "optimizer", None)
            if optimizer is not None:
                _compat.reset_optimizer_state(optimizer, self.model.trainable_weights)
            self._snapshot = None

    def _announce(self, headline: str) -> None:
        r = self.result
        msg = (
            f"{self.name}: {headline}; kept {r['params_after']:,} of {r['params_full']:,} embedding "
            f"parameters ({100 * r['kept_fraction']:.2f}%, budget {100 * self.budget:.2f}%), then "
            f"{self.after}.\n" + format_report(self._layers)
        )
        logger.info(msg)
        if self.verbose:
            print(msg)
        if self._writer is not None:
            with self._writer.as_default():
                for name, s in r["scores"].items():
                    tf.summary.histogram(f"scores/{name}", np.nan_to_num(s).ravel(), step=self._step)
            self._write_summaries()

    # ------------------------------------------------------------ resuming
    def _completed_in_layers(self) -> bool:
        """Subclasses: the layers hold the result of a finished search of this kind."""
        return False

    def _resume_search(self, epoch: int) -> None:
        """Subclasses: continue a search restored at the start of `epoch` (> 0)."""

    def _sync_layers(self) -> bool:
        """Python state of the layers from their (possibly restored) variables."""
        changed = [layer.sync_search_state() for layer in self._layers]
        if any(changed):
            _compat.force_retrace(self.model)
        return any(changed)

    def _adopt_finished_search(self, when: str) -> None:
        """The layers already hold a finished search (e.g. restored from a checkpoint
        taken after it): keep their dims and train on; nothing is searched again."""
        for layer in self._layers:
            if getattr(layer, "_gate_probe", None) is not None:
                layer.detach_gate_probe()
            if hasattr(layer, "freeze_table"):
                layer.freeze_table(False)
        _compat.force_retrace(self.model)
        self._snapshot = None
        kept, full = total_params(self._layers)
        self.phase = "done"
        self.result = {
            "budget": self.budget,
            "params_after": int(kept),
            "params_full": int(full),
            "kept_fraction": kept / full,
            "resumed": when,
            "masks": {layer.name: layer.dimension_mask().keep for layer in self._layers},
        }
        msg = (
            f"{self.name}: at {when} the layers already hold a finished search ({kept:,} of {full:,} "
            "embedding parameters kept); training continues on those dims, nothing is searched again."
        )
        logger.info(msg)
        if self.verbose:
            print(msg)

    def on_epoch_begin(self, epoch, logs=None):
        """Resuming (`BackupAndRestore`, or `fit(initial_epoch=k)` on a model loaded
        from a `ModelCheckpoint`): the first epoch of this `fit` is > 0. The
        restored variables say where the search was: finished (keep its dims) or
        still running (go on from step `epoch x steps per epoch`)."""
        if self._first_epoch is not None:
            return
        self._first_epoch = int(epoch)
        if epoch == 0 or not self._layers or self.phase in ("done", "failed"):
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
        if self.phase not in ("done", "failed") and self._layers and loss is not None:
            value = float(np.asarray(loss))
            if not np.isfinite(value):
                self._abort(value)
                return
        self._on_batch(batch, logs)

    def _on_batch(self, batch, logs=None) -> None:
        """Subclasses: what a search does after each training batch."""

    def _abort(self, loss: float) -> None:
        """The loss is not finite: stop training, keep the last good masks, say so.

        The weights of the failing step are whatever it left (as with
        `keras.callbacks.TerminateOnNaN`): restore them from a checkpoint.
        """
        optimizer = getattr(self.model, "optimizer", None)
        for layer, mask in self._good_masks.items():
            if getattr(layer, "_gate_probe", None) is not None:
                layer.detach_gate_probe()
            if hasattr(layer, "freeze_table"):
                layer.freeze_table(False)
            if mask.granularity == "value":
                layer.set_value_sizes(list(mask.value_sizes), optimizer=optimizer, zero_pruned=False)
            elif hasattr(layer, "freeze"):
                layer.freeze(mask.keep, optimizer=optimizer)
            else:
                layer.set_dimension_mask(mask, optimizer=optimizer, zero_pruned=False)
        _compat.force_retrace(self.model)
        kept, full = total_params(self._layers)
        self.error = (
            f"{self.name}: the training loss became {loss} at search step {self._step}; training stopped "
            f"and the search ended with the masks of {self._good_when} ({kept:,} of {full:,} embedding "
            "parameters kept). Lower the learning rate or check the inputs, then search again on a fresh model."
        )
        self.phase = "failed"
        self.result = {"error": self.error, "params_after": kept, "params_full": full}
        self.model.stop_training = True
        logger.error(self.error)

    # ------------------------------------------------------------- logging
    def _record_epoch(self, epoch: int, logs: dict | None) -> None:
        if not self._layers:
            return
        if self.phase not in ("done", "failed"):
            self._remember_masks(f"the end of epoch {epoch + 1}")
        kept, full = total_params(self._layers)
        if logs is not None:
            logs["embdim_kept_params"] = float(kept)
            logs["embdim_kept_fraction"] = kept / full
        for layer in self._layers:
            history = layer.__dict__.setdefault("_dimension_history", [])
            history.append({"epoch": int(epoch), "step": self._step, "kept_dims": layer.dimension_mask().kept_dims.tolist()})
        if self._writer is not None:
            self._write_summaries()

    def _log_penalties(self, logs: dict | None) -> None:
        """Each layer's search penalty at the end of a search epoch: in `logs` (so in
        `History` under Keras 3) as `embdim_penalty_<layer>`, in `self.penalties`, and in
        TensorBoard as `embdim/penalty/<layer>`."""
        values = {
            layer.name: float(_compat.to_numpy(layer.search_penalty()))
            for layer in self._layers
            if hasattr(layer, "search_penalty")
        }
        if values:
            self.penalties.append({"step": self._step, **values})
        if logs is not None:  # Keras 3's History keeps keys callbacks add to the logs; tf_keras's does not
            for name, v in values.items():
                logs[f"embdim_penalty_{name}"] = v
        if self._writer is not None and values:
            with self._writer.as_default():
                for name, v in values.items():
                    tf.summary.scalar(f"embdim/penalty/{name}", v, step=self._step)

    def _write_summaries(self, extra: dict | None = None) -> None:
        step = self._step
        kept, full = total_params(self._layers)
        with self._writer.as_default():
            tf.summary.scalar("embdim/kept_params", kept, step=step)
            tf.summary.scalar("embdim/kept_fraction", kept / full, step=step)
            for key, value in (extra or {}).items():
                tf.summary.scalar(key, value, step=step)
            for layer in self._layers:
                m = layer.dimension_mask()
                for name, d in zip(m.field_names, m.kept_dims):
                    tf.summary.scalar(f"kept_dims/{layer.name}/{name}", int(d), step=step)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()


class EpochBoundedSearch(DimensionSearchCallback):
    """A search that runs during the first `search_epochs` epochs, then `_finish()`es.

    If `fit` ends first, the search ends there, so a model never leaves `fit`
    half-searched. Subclasses implement `_finish` and may hook
    `_on_search_epoch_end`.
    """

    def __init__(self, budget: float, *, search_epochs: int = 1, **kwargs: Any):
        super().__init__(budget, **kwargs)
        self.search_epochs = check_int("search_epochs", search_epochs, 1)

    def _finish(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _on_search_epoch_end(self, epoch: int) -> None:
        """Called at the end of every search epoch, before the search may end."""

    def on_epoch_end(self, epoch, logs=None):
        if self.phase == "search":
            self._on_search_epoch_end(epoch)
            self._log_penalties(logs)
            if epoch + 1 >= self.search_epochs:
                self._finish()
        self._record_epoch(epoch, logs)

    def on_train_end(self, logs=None):
        if self.phase == "search" and self._layers:
            self._finish()
        super().on_train_end(logs)
