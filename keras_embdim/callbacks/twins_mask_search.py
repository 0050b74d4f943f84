"""`TwinsMaskSearch`: drives TwinsMaskLayer (AMTL) to a parameter budget."""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from keras_embdim import _compat, budget as budget_lib, twins
from keras_embdim.callbacks.search_callback import EpochBoundedSearch, check_int
from keras_embdim.layers.twins_mask_layer import TwinsMaskLayer
from keras_embdim.mask import total_params


class TwinsMaskSearch(EpochBoundedSearch):
    """Learn per-value sizes with `TwinsMaskLayer`s, land on a budget, freeze.

    Phases, counted in epochs of `fit`:

    1. `twins_epochs` (default 0; use 1 or more for a warm start from a trained
       model): only the twins (and the rest of the model) train; the embedding
       tables do not move, so the twins learn sizes for the trained embeddings.
    2. `search_epochs` (default 1): twins and tables train jointly, with the
       layers' size penalty `size_weight * relu(kept fraction - budget)`.
    3. At the end of the search one price per parameter is found over all
       values of all layers so that their sizes, `argmax(z - price * size)`,
       keep at most `budget` of the embedding parameters, and the values whose
       size changes at that price are promoted most-frequent first while the
       budget allows (`keras_embdim.twins.land_on_budget`): the result is at the
       budget within one value's size step and never above it. Every value's
       size is then frozen (`TwinsMaskLayer.set_value_sizes`), and training
       continues on those sizes (`after="finetune"`) or restarts from the
       initial weights with them (`after="retrain"`).

    Args:
        budget: kept fraction of embedding parameters, in (0, 1].
        twins_epochs: epochs that train the twins with the tables frozen.
        search_epochs: epochs of joint search after those.
        size_weight: weight of the size penalty (docs/methods.md).
        after, layers, log_dir, verbose: as for `SingleShotPruner`.

    Example:

    ```python
    emb = ked.TwinsMaskLayer(keras.layers.Embedding(10_000, 16))
    model.fit(train, epochs=3, callbacks=[ked.TwinsMaskSearch(budget=0.2)])
    ```
    """

    layer_types = (TwinsMaskLayer,)

    def __init__(
        self,
        budget: float,
        *,
        twins_epochs: int = 0,
        search_epochs: int = 1,
        size_weight: float = 1.0,
        after: str = "finetune",
        layers: Sequence[str] | None = None,
        log_dir: Any = None,
        verbose: int = 1,
    ):
        twins_epochs = check_int("twins_epochs", twins_epochs, 0)
        search_epochs = check_int("search_epochs", search_epochs, 1)
        super().__init__(
            budget,
            search_epochs=twins_epochs + search_epochs,
            min_dim=0,
            after=after,
            layers=layers,
            log_dir=log_dir,
            verbose=verbose,
        )
        if isinstance(size_weight, bool) or not (
            isinstance(size_weight, (int, float)) and math.isfinite(size_weight) and size_weight >= 0
        ):
            raise ValueError(f"`size_weight` must be a number >= 0; received size_weight={size_weight!r}.")
        self.twins_epochs = twins_epochs
        self.size_weight = float(size_weight)
        self.trace: list[dict] = []
        self._started = 0.0

    def on_train_begin(self, logs=None):
        if self.phase == "done":
            return
        self._discover()
        self._sync_layers()
        if self._completed_in_layers():
            self._adopt_finished_search("the start of fit")
            return
        frozen = [l.name for l in self._layers if l.frozen]
        if frozen:
            raise ValueError(
                f"TwinsMaskSearch: layers {frozen} have frozen sizes already, the others not; "
                "wrap a new embedding to search again."
            )
        _, full = total_params(self._layers)
        floor = sum(l.min_dim * int(sum(l.field_vocab_sizes)) for l in self._layers)
        target = budget_lib.budget_params(self.budget, full)
        if floor > target:
            raise ValueError(
                f"TwinsMaskSearch: budget={self.budget} keeps {target:,} of {full:,} embedding parameters, "
                f"but the layers' min_dim alone keeps {floor:,}; raise budget to at least {floor / full:.4f} "
                "or build the layers with a smaller min_dim. The model was not changed."
            )
        for layer in self._layers:
            layer.size_weight.assign(self.size_weight)
            layer.size_target.assign(self.budget)
            layer.freeze_table(self.twins_epochs > 0)
        _compat.force_retrace(self.model)
        self._started = time.perf_counter()

    def _on_batch(self, batch, logs=None):
        if self.phase == "search":
            self._step += 1

    def _completed_in_layers(self) -> bool:
        return all(layer.frozen for layer in self._layers)

    def _resume_search(self, epoch: int) -> None:
        # the table trains again once the twins-only epochs are over
        for layer in self._layers:
            layer.freeze_table(epoch < self.twins_epochs)
        _compat.force_retrace(self.model)

    def _on_search_epoch_end(self, epoch: int) -> None:
        kept, full = total_params(self._layers)
        self.trace.append({"epoch": int(epoch), "step": self._step, "kept_fraction": kept / full})
        if epoch + 1 == self.twins_epochs:
            for layer in self._layers:
                layer.freeze_table(False)
            _compat.force_retrace(self.model)

    def _finish(self):
        search_seconds = time.perf_counter() - self._started
        kept_before, full = total_params(self._layers)
        target = budget_lib.budget_params(self.budget, full)
        blocks, inverses = [], []
        for layer in self._layers:
            layer.freeze_table(False)
            z, inverse, g_counts, mult = layer.group_logits(biased=False)
            blocks.append(
                {"z": z, "multiplicity": mult, "order": g_counts, "min_dim": layer.min_dim, "output_dim": layer.output_dim}
            )
            inverses.append(inverse)
        per_layer, price = twins.land_on_budget(blocks, target)
        self._rewind()
        optimizer = getattr(self.model, "optimizer", None)
        sizes_by_layer = {}
        for layer, inverse, grouped in zip(self._layers, inverses, per_layer):
            sizes = np.empty(inverse.shape, np.int32)
            sizes[np.argsort(inverse, kind="stable")] = grouped
            layer.size_bias.assign(price * layer.output_dim)
            layer.set_value_sizes(sizes, optimizer=optimizer)
            sizes_by_layer[layer.name] = sizes
        _compat.force_retrace(self.model)
        kept_after, _ = total_params(self._layers)
        self.phase = "done"
        self.result = {
            "budget": self.budget,
            "params_before": int(kept_before),
            "params_full": int(full),
            "params_after": int(kept_after),
            "kept_fraction": kept_after / full,
            "twins_kept_fraction": kept_before / full,
            "price": float(price),
            "step": self._step,
            "search_seconds": search_seconds,
            "sizes": sizes_by_layer,
            "scores": {},
        }
        if self._writer is not None:
            with self._writer.as_default():
                for layer in self._layers:
                    m = layer.dimension_mask()
                    for name, s in zip(m.field_names, m.value_sizes):
                        tf.summary.histogram(f"value_sizes/{layer.name}/{name}", s, step=self._step)
        self._announce(
            f"searched {self._step} steps (the twins kept {100 * kept_before / full:.1f}% before landing on the budget); "
            "per-value sizes frozen"
        )
