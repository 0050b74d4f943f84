"""`TwinsMaskSearch`: drives TwinsMaskLayer (AMTL) to a parameter budget."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from keras_embdim import _utils
from keras_embdim.callbacks.search_callback import EpochBoundedSearch
from keras_embdim.layers.twins_mask_layer import TwinsMaskLayer
from keras_embdim.search import budget as budget_lib, twins
from keras_embdim.searchable import total_params
from keras_embdim.validation import check_int, check_number


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
       budget allows (`keras_embdim.search.twins.land_on_budget`): the result is at the
       budget within one value's size step and never above it. Every value's
       size is then frozen (`TwinsMaskLayer.set_value_sizes`), and training
       continues on those sizes (`after="finetune"`) or restarts from the
       initial weights with them (`after="retrain"`).

    Args:
        budget: kept fraction of embedding parameters, in (0, 1].
        twins_epochs: epochs that train the twins with the tables frozen.
        search_epochs: epochs of joint search after those.
        size_weight: weight of the size penalty (docs/reference/methods.md).
        after, layers, log_dir, verbose: as for `SingleShotPruner`.

    Example:

    ```python
    emb = ked.TwinsMaskLayer(keras.layers.Embedding(10_000, 16))
    model.fit(train, epochs=3, callbacks=[ked.TwinsMaskSearch(budget=0.2)])
    ```
    """

    layer_types = (TwinsMaskLayer,)
    method = "AMTL"
    logs_penalty = True

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
        self.twins_epochs = twins_epochs
        self.size_weight = check_number("size_weight", size_weight, low=0)
        self.trace: list[dict] = []

    def _check_layers_fresh(self) -> None:
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

    def _start(self) -> None:
        for layer in self._layers:
            layer.size_weight.assign(self.size_weight)
            layer.size_target.assign(self.budget)
            layer.freeze_table(self.twins_epochs > 0)
        _utils.force_retrace(self.model)

    def _plan(self) -> str:
        first = f"{self.twins_epochs} twins-only epoch{'s' if self.twins_epochs != 1 else ''} (tables frozen), " \
            if self.twins_epochs else ""
        joint = self.search_epochs - self.twins_epochs
        return (f"{first}{joint} joint search epoch{'s' if joint != 1 else ''} (size weight {self.size_weight:g}), "
                "then one price per parameter lands every value's size on the budget")

    def _completed_in_layers(self) -> bool:
        return all(layer.frozen for layer in self._layers)

    def _resume_search(self, epoch: int) -> None:
        # the table trains again once the twins-only epochs are over
        for layer in self._layers:
            layer.freeze_table(epoch < self.twins_epochs)
        _utils.force_retrace(self.model)

    def _on_search_epoch_end(self, epoch: int) -> None:
        kept, full = total_params(self._layers)
        self.trace.append({"epoch": int(epoch), "step": self._step, "kept_fraction": kept / full})
        if epoch + 1 == self.twins_epochs:
            for layer in self._layers:
                layer.freeze_table(False)
            _utils.force_retrace(self.model)

    def _finish(self):
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
        sizes_by_layer = {}
        for layer, inverse, grouped in zip(self._layers, inverses, per_layer):
            sizes = np.empty(inverse.shape, np.int32)
            sizes[np.argsort(inverse, kind="stable")] = grouped
            layer.size_bias.assign(price * layer.output_dim)
            layer.set_value_sizes(sizes, optimizer=self._optimizer)
            sizes_by_layer[layer.name] = sizes
        _utils.force_retrace(self.model)
        self._conclude(
            f"searched {self._step} steps (the twins kept {100 * kept_before / full:.1f}% before landing on the budget); "
            "per-value sizes frozen", sizes=sizes_by_layer, params_before=int(kept_before), price=float(price),
        )
