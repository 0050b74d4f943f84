"""`LayerState`: what keras_embdim's embedding layers share around their field layout.

- The field properties (`field_names`, `field_vocab_sizes`, `num_fields`,
  `multi_field`) read the layer's `layout` (`keras_embdim.fields.FieldLayout`),
  as do the exporter's per-field ids (`serving_field_ids`) and whether served
  ids are taken as they come (`serving_ids_unshifted`).

- Their own variables are saved and loaded in one fixed order
  (`_state_variables`), so that `.keras` files, `save_weights` and
  checkpoints carry masks, per-value sizes and search state, and a store of
  the wrong length is a clear error.
- Per-value sizes are checked the same way everywhere (`_checked_sizes`).
- The exporter switches a layer to a serving lookup (`use_serving_lookup`).
"""

from __future__ import annotations

import numpy as np

from keras_embdim import _compat, _utils


class LayerState:
    """Mixin for a Keras layer with a `layout` (`keras_embdim.fields.FieldLayout`) and `output_dim`."""

    _serving = None  # an export lookup (keras_embdim.export.lookup) while the exporter traces

    @property
    def field_vocab_sizes(self) -> tuple[int, ...]:
        return self.layout.vocab_sizes

    @property
    def field_names(self) -> tuple[str, ...]:
        return self.layout.names

    @property
    def num_fields(self) -> int:
        return self.layout.num_fields

    @property
    def multi_field(self) -> bool:
        return self.layout.multi_field

    def serving_field_ids(self, columns) -> list:
        """`serving_ids` from one id tensor per field; see `DimensionSearchable.serving_field_ids`."""
        return self.layout.local_columns(columns, self.name)

    @property
    def serving_ids_unshifted(self) -> bool:
        """See `DimensionSearchable.serving_ids_unshifted`: true unless the ids are global ids of a
        shared id space (made local by subtracting each field's offset)."""
        return not self.layout.global_ids

    @property
    def weights(self) -> list:
        """The layer's weights in a fixed order, whatever becomes (non-)trainable during a search
        (`_compat.stable_weight_order`): `get_weights` / `set_weights` across it match."""
        return _compat.stable_weight_order(self, super().weights)

    def _state_variables(self) -> list:  # pragma: no cover - interface
        """The layer's own variables, in the order they are saved."""
        raise NotImplementedError

    def _load_other_store(self, store, n: int) -> bool:
        """A store of another form this layer accepts (e.g. a plain Embedding's one table);
        True if it was loaded."""
        return False

    def save_own_variables(self, store):
        if not self.built:
            return
        for i, v in enumerate(self._state_variables()):
            store[str(i)] = _utils.to_numpy(v)

    def load_own_variables(self, store):
        if not self.built:
            return
        variables = self._state_variables()
        n = _utils.store_len(store)
        if self._load_other_store(store, n):
            return
        if n != len(variables):
            raise ValueError(
                f"layer '{self.name}' ({type(self).__name__}) expects {len(variables)} saved variables; "
                f"the file holds {n}."
            )
        for i, v in enumerate(variables):
            v.assign(np.asarray(store[str(i)]))

    def use_serving_lookup(self, lookup) -> None:
        """While set (the exporter traces the serving graph), `call` returns
        `lookup.padded(serving_ids(inputs))`; None switches back."""
        self._serving = lookup

    def _checked_sizes(self, sizes) -> np.ndarray:
        """Per-value sizes (`[rows]` or one array per field) as int32 `[rows]` in `[0, output_dim]`."""
        sizes = self.layout.join(sizes)
        total = self.layout.num_rows
        if sizes.shape != (total,) or not np.issubdtype(sizes.dtype, np.integer):
            raise ValueError(
                f"layer '{self.name}': sizes must be {total} integers (one per row), or one array per field; "
                f"received shape {sizes.shape} of {sizes.dtype}."
            )
        if sizes.min(initial=0) < 0 or sizes.max(initial=0) > self.output_dim:
            raise ValueError(f"layer '{self.name}': sizes must lie in [0, {self.output_dim}].")
        return sizes.astype(np.int32)
