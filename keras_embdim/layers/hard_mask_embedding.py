"""`HardMaskEmbedding`: field-wise dimension search with hard auxiliary masks (HAM)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from keras_embdim import _compat, _utils
from keras_embdim._compat import keras, register_serializable
from keras_embdim.layers.searchable_embedding import SearchableEmbedding
from keras_embdim.mask import DimensionMask
from keras_embdim.search.hard_mask import hard_mask
from keras_embdim.validation import check_bool, check_fraction, check_number


@register_serializable(package="keras_embdim")
class HardMaskEmbedding(SearchableEmbedding):
    """Super-net embedding with a trainable hard mask per field and dimension (HAM).

    Every field `f` has auxiliary scores `a[f, :]` (`mask_logits`). The forward
    pass multiplies the embedding by the hard mask `1[a > 0]`, exactly 0/1, so
    the network evaluated during the search is the discrete candidate itself;
    gradients reach `a` through `sigmoid(a / temperature)` (straight-through).
    While searching, the layer adds the cost-weighted sparsity penalty
    `sparsity_weight * sum_f n_f sum_j sigmoid(a[f, j] / temperature) / (sum_f n_f * D)`
    to the training loss, so a column of a large table pays more; with a
    `target` only the excess over it is penalised (see `sparsity_penalty`).

    `keras_embdim.HardMaskSearch` drives the search (anneals the temperature,
    adapts `sparsity_weight` to a parameter budget, ranks the scores at the end
    and freezes the mask); after freezing the layer behaves like
    `PrunableEmbedding`. Without that callback the layer searches on its own
    with fixed temperature and penalty weight. While `search_paused` is True
    (`HardMaskSearch(warmup_epochs=...)`) the mask applies but its scores get
    a zero gradient and no penalty is added: the super-net trains as it is.

    Args:
        input_dim: vocabulary size, or one per field (multi-field form).
        output_dim: embedding dimension D of the super-net.
        initial_logit: starting `a` (positive: every dimension on).
        logit_scale: `a = logit_scale * mask_logits`; sets how fast the scores
            move under the model's optimizer (see `_scores`).
        temperature: starting temperature of the surrogate.
        sparsity_weight: penalty weight.
        target: kept fraction below which the penalty vanishes.
        frozen: the search is over; the layer uses its `dimension_mask`.
        **kwargs: `SearchableEmbedding` / `keras.layers.Embedding` arguments.

    Example:

    >>> import numpy as np, keras_embdim as ked
    >>> emb = ked.HardMaskEmbedding([10, 20], 4, initial_logit=1.0)
    >>> tuple(emb(np.array([[1, 2]])).shape)
    (1, 2, 4)
    >>> _ = emb.mask_logits.assign([[0.01, -0.01, 0.01, 0.01], [0.01, 0.01, -0.02, -0.02]])
    >>> emb.dimension_mask().kept_dims.tolist()
    [3, 2]
    """

    def __init__(
        self,
        input_dim: int | Sequence[int],
        output_dim: int,
        *,
        initial_logit: float = 0.3,
        logit_scale: float = 30.0,
        temperature: float = 1.0,
        sparsity_weight: float = 0.0,
        target: float = 0.0,
        frozen: bool = False,
        **kwargs: Any,
    ):
        super().__init__(input_dim, output_dim, **kwargs)
        self.initial_logit = check_number("initial_logit", initial_logit)
        self.logit_scale = check_number("logit_scale", logit_scale, low=0, strict=True)
        self.initial_temperature = check_number("temperature", temperature, low=0, strict=True)
        self.initial_sparsity_weight = check_number("sparsity_weight", sparsity_weight, low=0)
        self.initial_target = check_fraction("target", target, allow_zero=True)
        self.frozen = check_bool("frozen", frozen)
        # set by `HardMaskSearch` during its warm-up: the mask applies, its scores neither learn nor pay the
        # penalty (the caller retraces the training step when it changes)
        self.search_paused = False
        self._hard = None  # the hard mask of the call being traced
        self._costs = np.repeat(np.asarray(self.field_vocab_sizes, np.float32)[:, None], output_dim, axis=1)
        self._costs /= float(self._costs.sum())

    def _build_search_state(self) -> None:
        # read at float32 under a mixed policy too (`_compat.NO_AUTOCAST`): they decide the dims
        const = keras.initializers.Constant
        self.mask_logits = self.add_weight(
            name="mask_logits",
            shape=(self.num_fields, self.output_dim),
            initializer=const(self.initial_logit / self.logit_scale),
            trainable=not self.frozen,
            **_compat.NO_AUTOCAST,
        )
        scalar = dict(shape=(), trainable=False, **_compat.NO_AUTOCAST)
        self.temperature = self.add_weight(name="temperature", initializer=const(self.initial_temperature), **scalar)
        self.sparsity_weight = self.add_weight(name="sparsity_weight", initializer=const(self.initial_sparsity_weight),
                                               **scalar)
        self.sparsity_target = self.add_weight(name="sparsity_target", initializer=const(self.initial_target), **scalar)
        # 1 once the search ended: saved with the weights, so that a model
        # restored from a checkpoint taken after the search knows it
        self.search_frozen = self.add_weight(name="search_frozen", initializer=const(float(self.frozen)), **scalar)

    def _search_state_variables(self) -> list:
        return [self.mask_logits, self.temperature, self.sparsity_weight, self.sparsity_target, self.search_frozen]

    def sync_search_state(self) -> bool:
        """A restored `search_frozen` flag freezes the layer (its mask is restored too)."""
        if not self.built or self.frozen or float(_utils.to_numpy(self.search_frozen)) < 0.5:
            return False
        self.frozen = True
        _compat.set_trainable(self, self.mask_logits, False)
        return True

    # ---------------------------------------------------------------- search
    def _output_mask(self, training=None) -> tf.Tensor:
        base = tf.convert_to_tensor(self._mask_variable)
        if self.frozen:
            return base
        self._hard = hard_mask(self._scores(), tf.convert_to_tensor(self.temperature), learn=not self.search_paused)
        return base * self._hard

    def _scores(self) -> tf.Tensor:
        # a = logit_scale * theta: optimizers such as Adam move every weight by
        # about the learning rate per step whatever its gradient, so the scale
        # lets a logit cross 0 within an epoch without a separate learning rate.
        return tf.convert_to_tensor(self.mask_logits) * self.logit_scale

    def set_logit_scale(self, scale: float, *, keep_scores: bool = True) -> None:
        """Change `logit_scale`, the pace of the scores under Adam (see `_scores`).

        With `keep_scores` the stored `mask_logits` are divided so that the
        scores `a` stay what they are; without, the stored values are kept (they
        were learned under `scale`: a search resumed from a checkpoint). The
        caller retraces the training step (`HardMaskSearch(score_pace=...)` does).
        """
        scale = check_number("scale", scale, low=0, strict=True)
        if keep_scores and self.built:
            self.mask_logits.assign(_utils.to_numpy(self.mask_logits) * (self.logit_scale / scale))
        self.logit_scale = scale

    def mask_scores(self) -> np.ndarray:
        """The auxiliary scores `a` `[F, D]` (a dimension is on where `a > 0`)."""
        return _utils.to_numpy(self.mask_logits) * self.logit_scale

    def sparsity_penalty(self, hard: tf.Tensor | None = None) -> tf.Tensor:
        """`sparsity_weight * relu(kept fraction - target)`, cost-weighted.

        The kept fraction is `sum_f n_f sum_j m[f, j] / (sum_f n_f * D)` with the
        hard mask `m` in the forward pass and `sigmoid(a / t)`'s derivative in
        the backward pass (straight-through, like the mask). With `target = 0`
        this is HAM's cost-weighted penalty; with `target = budget` only the
        excess of the discrete candidate over the budget is penalised, so the
        pressure stops exactly when the candidate fits, and the task gradient
        alone decides which dimensions come back: the search settles at the
        budget. (A hinge on the soft fraction kept pushing: near a = 0,
        sigmoid(a / t) is about 0.5 for switched-off dims, and the search
        network fell to about 1% of the parameters.)
        """
        # forward: the hard kept fraction (the candidate's real size);
        # backward: the surrogate's gradient, as for the mask itself
        hard = hard if hard is not None else hard_mask(self._scores(), tf.convert_to_tensor(self.temperature))
        frac = tf.reduce_sum(hard * self._costs)
        excess = tf.nn.relu(frac - tf.convert_to_tensor(self.sparsity_target))
        return tf.convert_to_tensor(self.sparsity_weight) * excess

    def search_penalty(self) -> tf.Tensor:
        """The penalty the search adds to the loss now (0 once frozen or while paused): for logs."""
        return tf.zeros([]) if self.frozen or self.search_paused else self.sparsity_penalty()

    def call(self, inputs, training=None):
        self._hard = None
        out = super().call(inputs, training=training)
        if training is True and not self.frozen and not self.search_paused and self._serving is None:
            # reuse the mask this call computed (same trace), not a second copy
            self.add_loss(self.sparsity_penalty(self._hard))
        self._hard = None
        return out

    def dimension_mask(self) -> DimensionMask:
        mask = super().dimension_mask()
        if self.built and not self.frozen:
            mask.keep &= _utils.to_numpy(self.mask_logits) > 0
        return mask

    def freeze(self, mask=None, *, optimizer=None) -> None:
        """End the search: fix the mask (default: the current hard mask).

        The caller retraces the training step (`HardMaskSearch` does).
        """
        if not self.built:
            self.build()
        keep = self.dimension_mask().keep if mask is None else mask
        self.frozen = True
        self.set_dimension_mask(keep, optimizer=optimizer)
        self.search_frozen.assign(1.0)
        _compat.set_trainable(self, self.mask_logits, False)

    def end_search(self, mask: DimensionMask, *, optimizer=None) -> None:
        """A search that stopped falls back to `mask`: freeze on it."""
        self.freeze(mask.keep, optimizer=optimizer)

    def set_dimension_mask(self, mask, *, optimizer=None, zero_pruned: bool = True) -> None:
        super().set_dimension_mask(mask, optimizer=optimizer, zero_pruned=zero_pruned)
        if not self.frozen:
            # imposing a mask while searching: removed dims must stay off
            keep = mask.keep if isinstance(mask, DimensionMask) else np.asarray(mask, bool)
            logits = _utils.to_numpy(self.mask_logits)
            self.mask_logits.assign(np.where(keep, np.maximum(logits, 1e-3), np.minimum(logits, -1e-3)))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            initial_logit=self.initial_logit,
            logit_scale=self.logit_scale,
            temperature=self.initial_temperature,
            sparsity_weight=self.initial_sparsity_weight,
            target=self.initial_target,
            frozen=self.frozen,
        )
        return config
