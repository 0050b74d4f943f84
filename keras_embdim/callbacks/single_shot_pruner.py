"""`SingleShotPruner`: single-shot embedding dimension search (SSEDS) as a callback."""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from keras_embdim import _compat, budget as budget_lib
from keras_embdim._compat import keras
from keras_embdim.mask import check_fraction, find_searchable_layers, total_params
from keras_embdim.report import format_report

logger = logging.getLogger("keras_embdim")

_SCORES = ("abs_mean", "mean_abs", "taylor")
_RANKINGS = ("score", "cost")
_AFTER = ("finetune", "retrain")


class SingleShotPruner(keras.callbacks.Callback):
    """Prune embedding dimensions to a parameter budget in one scoring pass.

    The SSEDS method (docs/methods.md): after a warm-up, every field-dimension
    `(f, j)` of every searchable layer gets a gate `alpha = 1` on its output; the
    gradient `dL/dalpha` is accumulated over `scoring_steps` training batches
    (the batches `fit` trains on: no data argument is needed), the scores are
    ranked globally over all fields of all layers, and the best are kept until
    the kept parameters reach `budget` of the total. Training then continues with
    the removed columns fixed at zero (`after="finetune"`) or from the initial
    weights with the searched dimensions (`after="retrain"`, the paper's
    protocol).

    Args:
        budget: kept fraction of embedding parameters, in (0, 1]. The kept
            parameters never exceed it and fall short by less than one
            field-dimension's cost.
        min_dim: every field keeps at least this many columns (default 1).
        warmup_steps: training steps before scoring. Default: all of the first
            epoch but its last `scoring_steps` batches (at least half an epoch),
            so that scoring reads batches the model has not seen yet; one epoch
            when the epoch length is unknown (then prefer `scoring_data`).
        scoring_steps: batches whose gate gradients are accumulated (default 20).
        score: "abs_mean" (|mean of dL/dalpha over batches|, default) or
            "mean_abs" (mean of |dL/dalpha|). Measured in
            docs/sseds_options_synthetic.md: with "mean_abs" the large
            random-sign gradients of noise fields look important; "abs_mean"
            lets them cancel and keeps AUC at the full model's.
        ranking: "score" (rank by score alone, the paper) or "cost" (score per
            parameter).
        after: "finetune" (default) or "retrain".
        scoring_data: optional dataset `(x, y[, sample_weight])` to score on
            instead of the training batches (scored right after warm-up).
        layers: optional names of the searchable layers to prune (default all).
        log_dir: a path or a `keras.callbacks.TensorBoard`; if given, kept params,
            kept dims per field and the score histogram are written there.
        verbose: 0 silent, 1 prints the pruning summary.

    Example:

    ```python
    model.fit(train, epochs=3, callbacks=[ked.SingleShotPruner(budget=0.1)])
    ```
    """

    def __init__(
        self,
        budget: float,
        *,
        min_dim: int = 1,
        warmup_steps: int | None = None,
        scoring_steps: int = 20,
        score: str = "abs_mean",
        ranking: str = "score",
        after: str = "finetune",
        scoring_data: Any = None,
        layers: Sequence[str] | None = None,
        log_dir: Any = None,
        verbose: int = 1,
    ):
        super().__init__()
        self.budget = check_fraction("budget", budget)
        if isinstance(min_dim, bool) or not isinstance(min_dim, (int, np.integer)) or min_dim < 0:
            raise ValueError(f"`min_dim` must be an integer >= 0; received min_dim={min_dim!r}.")
        if warmup_steps is not None and (
            isinstance(warmup_steps, bool) or not isinstance(warmup_steps, (int, np.integer)) or warmup_steps < 0
        ):
            raise ValueError(f"`warmup_steps` must be None or an integer >= 0; received {warmup_steps!r}.")
        if isinstance(scoring_steps, bool) or not isinstance(scoring_steps, (int, np.integer)) or scoring_steps < 1:
            raise ValueError(f"`scoring_steps` must be an integer >= 1; received {scoring_steps!r}.")
        for name, value, allowed in (("score", score, _SCORES), ("ranking", ranking, _RANKINGS), ("after", after, _AFTER)):
            if value not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}; received {name}={value!r}.")
        self.min_dim = int(min_dim)
        self.warmup_steps = warmup_steps
        self.scoring_steps = int(scoring_steps)
        self.score = score
        self.ranking = ranking
        self.after = after
        self.scoring_data = scoring_data
        self.layer_names = list(layers) if layers is not None else None
        self.log_dir = _compat.tensorboard_log_dir(log_dir)
        self.verbose = verbose
        self.phase = "warmup"
        self.result: dict | None = None
        self._layers: list = []
        self._step = 0
        self._scored = 0
        self._snapshot = None
        self._writer = None
        self._warmup_resolved: int | None = None
        self._scoring_started_at = 0.0
        self._retrace_seconds = 0.0

    # ------------------------------------------------------------ callbacks
    def on_train_begin(self, logs=None):
        if self.phase == "done":
            logger.info("SingleShotPruner: already pruned; training continues on the searched dims.")
            return
        self._layers = find_searchable_layers(self.model, self.layer_names)
        if not self._layers:
            raise ValueError(
                f"SingleShotPruner: model '{self.model.name}' has no searchable embedding layer; "
                "build its embeddings with keras_embdim.PrunableEmbedding (or another "
                "keras_embdim layer). The model was not changed."
            )
        for layer in self._layers:
            owner = getattr(layer, "_embdim_pruner", None)
            if owner is not None and owner is not self:
                raise ValueError(
                    f"SingleShotPruner: layer '{layer.name}' is already searched by another "
                    "pruner; use one pruner per model."
                )
        # Fail before any training if the budget cannot be met with min_dim.
        _, full = total_params(self._layers)
        floor = sum(
            budget_lib.min_params(layer.field_vocab_sizes, layer.output_dim, self.min_dim)
            for layer in self._layers
        )
        target = budget_lib.budget_params(self.budget, full)
        if floor > target:
            raise ValueError(
                f"SingleShotPruner: budget={self.budget} keeps {target:,} of {full:,} embedding "
                f"parameters, but min_dim={self.min_dim} alone keeps {floor:,}; raise budget to at "
                f"least {floor / full:.4f} or lower min_dim. The model was not changed."
            )
        for layer in self._layers:
            layer._embdim_pruner = self
        if self.after == "retrain":
            self._snapshot = self.model.get_weights()
        self._warmup_resolved = self.warmup_steps
        steps = (self.params or {}).get("steps")
        if self._warmup_resolved is None and steps:
            # Score on the last batches of the first epoch: the model has not
            # seen them yet, so their gradients are those of held-out data. On
            # batches it has already fitted, memorised noise fields look
            # important (measured: docs/methods.md).
            self._warmup_resolved = max(1, int(steps) // 2, int(steps) - self.scoring_steps)
        if self.log_dir:
            self._writer = tf.summary.create_file_writer(self.log_dir)

    def on_train_batch_end(self, batch, logs=None):
        if self.phase == "done":
            return
        self._step += 1
        if self.phase == "warmup" and self._warmup_resolved is not None and self._step >= self._warmup_resolved:
            self._start_scoring()
        elif self.phase == "scoring":
            self._scored += 1
            if self._scored >= self.scoring_steps:
                self._finish()

    def on_epoch_end(self, epoch, logs=None):
        if self.phase == "warmup" and self._warmup_resolved is None:
            self._start_scoring()
        if logs is not None and self._layers:
            kept, full = total_params(self._layers)
            logs["embdim_kept_params"] = float(kept)
            logs["embdim_kept_fraction"] = kept / full
        if self._writer is not None and self._layers:
            self._write_summaries(epoch)

    def on_train_end(self, logs=None):
        if self.phase == "scoring":
            probes = [l._gate_probe for l in self._layers if l._gate_probe is not None]
            if probes and float(probes[0].batches.numpy()) > 0:
                self._finish()
            else:
                self._detach()
                self.phase = "warmup"
        if self.phase == "warmup" and self._layers:
            logger.warning(
                "SingleShotPruner: training ended before the search ran (warm-up of %s steps "
                "not finished); the model was not pruned. Train longer or lower warmup_steps.",
                self._warmup_resolved if self._warmup_resolved is not None else "one epoch of",
            )
        if self._writer is not None:
            self._writer.flush()

    # --------------------------------------------------------------- search
    def _start_scoring(self):
        self._scoring_started_at = time.perf_counter()
        if self.scoring_data is not None:
            self._score_explicit()
            self._finish()
            return
        for layer in self._layers:
            layer.attach_gate_probe().reset()
        t = time.perf_counter()
        _compat.force_retrace(self.model)
        self._retrace_seconds += time.perf_counter() - t
        self.phase = "scoring"
        self._scored = 0

    def _score_explicit(self):
        data = self.scoring_data
        if not isinstance(data, tf.data.Dataset):
            data = tf.data.Dataset.from_tensor_slices(tuple(data) if isinstance(data, list) else data).batch(4096)
        for layer in self._layers:
            layer.attach_gate_probe().reset()
        variables = [_compat.tf_variable(l.embedding_variable) for l in self._layers]
        for batch in data.take(self.scoring_steps):
            x, y, sw = keras.utils.unpack_x_y_sample_weight(batch)
            with tf.GradientTape() as tape:
                y_pred = self.model(x, training=False)
                loss = _compat.compute_loss(self.model, x, y, y_pred, sw)
            tape.gradient(loss, variables)

    def _detach(self):
        probing = any(l._gate_probe is not None for l in self._layers)
        for layer in self._layers:
            layer.detach_gate_probe()
        if probing and self.scoring_data is None:
            t = time.perf_counter()
            _compat.force_retrace(self.model)
            self._retrace_seconds += time.perf_counter() - t

    def _finish(self):
        probes = [l._gate_probe for l in self._layers]
        scores = [p.scores(self.score) for p in probes]
        batches = int(probes[0].batches.numpy())
        self._detach()
        total = float(sum(np.abs(s).sum() for s in scores))
        if total > 0:
            scores = [s / total for s in scores]  # the paper normalises to sum 1
        if not all(np.isfinite(s).all() for s in scores):
            logger.warning("SingleShotPruner: non-finite gate gradients; those dims rank last.")
        kept_before, full = total_params(self._layers)
        # One global ranking over every field of every layer; layers of
        # different widths are padded to the widest (padding is never kept).
        width = max(l.output_dim for l in self._layers)
        rows = sum(s.shape[0] for s in scores)
        all_scores = np.full((rows, width), np.nan)
        valid = np.zeros((rows, width), bool)
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
            ranking=self.ranking,
            valid=valid,
        )
        optimizer = getattr(self.model, "optimizer", None)
        row = 0
        masks = {}
        for layer, s in zip(self._layers, scores):
            k = keep[row : row + s.shape[0], : s.shape[1]]
            row += s.shape[0]
            layer.set_dimension_mask(k, optimizer=optimizer)
            masks[layer.name] = k
        if self.after == "retrain" and self._snapshot is not None:
            self.model.set_weights(self._snapshot)
            if optimizer is not None:
                _compat.reset_optimizer_state(optimizer, self.model.trainable_weights)
            for layer in self._layers:
                layer.set_dimension_mask(masks[layer.name], optimizer=optimizer)
            self._snapshot = None
        kept_after, _ = total_params(self._layers)
        self.phase = "done"
        self.result = {
            "budget": self.budget,
            "params_before": int(kept_before),
            "params_full": int(full),
            "params_after": int(kept_after),
            "kept_fraction": kept_after / full,
            "scoring_batches": batches,
            "step": self._step,
            "retrace_seconds": self._retrace_seconds,
            "search_seconds": time.perf_counter() - self._scoring_started_at,
            "scores": {l.name: s for l, s in zip(self._layers, scores)},
            "masks": masks,
        }
        msg = (
            f"SingleShotPruner: scored {batches} batches at step {self._step}; kept "
            f"{kept_after:,} of {full:,} embedding parameters ({100 * kept_after / full:.2f}%, "
            f"budget {100 * self.budget:.2f}%), then {self.after}.\n" + format_report(self._layers)
        )
        logger.info(msg)
        if self.verbose:
            print(msg)
        if self._writer is not None:
            with self._writer.as_default():
                for layer, s in zip(self._layers, scores):
                    tf.summary.histogram(f"scores/{layer.name}", s.ravel(), step=self._step)
            self._write_summaries(None)

    def _write_summaries(self, epoch):
        step = self._step
        kept, full = total_params(self._layers)
        with self._writer.as_default():
            tf.summary.scalar("embdim/kept_params", kept, step=step)
            tf.summary.scalar("embdim/kept_fraction", kept / full, step=step)
            for layer in self._layers:
                m = layer.dimension_mask()
                for name, d in zip(m.field_names, m.kept_dims):
                    tf.summary.scalar(f"kept_dims/{layer.name}/{name}", int(d), step=step)
        self._writer.flush()
