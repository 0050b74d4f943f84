"""`SearchableEmbedding`: the base of every embedding layer whose dimensions are searched."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from keras_embdim import _compat, _utils
from keras_embdim import rows as row_ops
from keras_embdim._compat import keras
from keras_embdim.fields import FieldLayout, as_int_ids, parse_vocab
from keras_embdim.layers.state import LayerState
from keras_embdim.mask import DimensionMask, size_dtype
from keras_embdim.search.probes import EntryProbe, GateProbe
from keras_embdim.searchable import DimensionSearchable
from keras_embdim.validation import check_bool


def zero_beyond_sizes(table, sizes: np.ndarray, optimizer=None) -> None:
    """Zero the entries of each row beyond its size, in the table and its optimizer slots."""
    for variable in [table, *_compat.optimizer_slots(optimizer, table)]:
        row_ops.zero_beyond_sizes(variable, sizes)


class SearchableEmbedding(LayerState, keras.layers.Embedding, DimensionSearchable):
    """An `Embedding` with a per-field dimension mask; base of keras_embdim's layers.

    It keeps `keras.layers.Embedding`'s constructor arguments, its `embeddings`
    weight (name and shape), `mask_zero` semantics and output shape, and adds:

    - a multi-field form: `input_dim=[n_1, ..., n_F]` makes one layer over F
      categorical fields; its input is `[..., F]` local ids (field `f` takes ids
      in `[0, n_f)`), its output `[..., F, output_dim]`. The fields share one
      concatenated `embeddings` table of `sum(n_f)` rows (`layout`, a
      `keras_embdim.fields.FieldLayout`);
    - a non-trainable `dimension_mask` weight `[F, output_dim]` of 0/1: masked
      columns output exactly 0 and receive zero gradient; or per-value sizes
      (`set_value_sizes`): value i keeps its first `d_i` columns;
    - id validation (an id outside its field's vocabulary is an error, never a
      silent read of another field's row);
    - the protocol the callbacks and the exporter use
      (`keras_embdim.searchable.DimensionSearchable`).

    Subclasses change how the mask is produced (`_output_mask`) and may add
    search state (`_build_search_state`, `_search_state_variables`).

    Args:
        input_dim: vocabulary size (one field), or one per field.
        output_dim: embedding dimension D.
        field_names: names of the fields (reports, errors); default
            `field_<i>`, or the layer's name for one field.
        validate_ids: assert that every id lies in its field's vocabulary.
        per_value: the layer holds per-value sizes (set by `set_value_sizes`;
            in the config so that a saved model keeps it).
        **kwargs: the other `keras.layers.Embedding` arguments.
    """

    def __init__(
        self,
        input_dim: int | Sequence[int],
        output_dim: int,
        *,
        field_names: Sequence[str] | None = None,
        validate_ids: bool = True,
        per_value: bool = False,
        **kwargs: Any,
    ):
        vocab, multi = parse_vocab(input_dim)
        for key, default in _compat.EMBEDDING_UNSUPPORTED_KWARGS:
            value = kwargs.pop(key, default)
            if value != default:
                raise ValueError(
                    f"`{key}` is not supported by {type(self).__name__} (received {value!r}); "
                    "searched tables are compacted at export instead."
                )
        weights = kwargs.pop("weights", None)
        super().__init__(input_dim=int(sum(vocab)), output_dim=output_dim, **kwargs)
        self._field_names = tuple(str(n) for n in field_names) if field_names is not None else None
        self.layout = FieldLayout.from_input_dim(list(vocab) if multi else vocab[0], self._field_names, self.name)
        self.validate_ids = check_bool("validate_ids", validate_ids)
        # per-value granularity: value i keeps its first value_sizes[i] columns
        self.per_value = check_bool("per_value", per_value)
        self._probe = None  # a GateProbe or EntryProbe while a search scores
        # Extra training losses attached by callbacks (e.g. OrthogonalRegularizer):
        # callables (layer, rows [..., (F,) D] before masking, mask) -> scalar.
        self._penalties: list = []
        if weights is not None:
            self.build()
            self.set_weights(weights if isinstance(weights, list) else [weights])

    # ------------------------------------------------------------ properties
    @property
    def granularity(self) -> str:
        return "value" if self.per_value else "field"

    @property
    def embedding_variable(self):
        return _compat.get_embedding_variable(self)

    # ----------------------------------------------------------------- build
    def build(self, input_shape=None):
        if self.built:
            return
        table = self.add_weight(
            name="embeddings",
            shape=(self.layout.num_rows, self.output_dim),
            initializer=self.embeddings_initializer,
            regularizer=self.embeddings_regularizer,
            constraint=self.embeddings_constraint,
            trainable=True,
        )
        _compat.set_embedding_variable(self, table)
        self._mask_variable = self.add_weight(
            name="dimension_mask",
            shape=(self.num_fields, self.output_dim),
            initializer="ones",
            trainable=False,
            **_compat.NO_AUTOCAST,
        )
        self._value_sizes = self.add_weight(
            name="value_sizes",
            shape=(self.layout.num_rows,),
            initializer=keras.initializers.Constant(self.output_dim),
            dtype="int32",
            trainable=False,
        )
        self._build_search_state()
        self.built = True

    def _build_search_state(self) -> None:
        """Subclasses add their search variables here."""

    def _search_state_variables(self) -> list:
        """Subclasses list their search variables (saved after table and mask)."""
        return []

    # ------------------------------------------------------------------ call
    def _output_mask(self, training=None) -> tf.Tensor:
        """The `[F, D]` 0/1 mask applied in the forward pass."""
        return tf.convert_to_tensor(self._mask_variable)

    def call(self, inputs, training=None):
        if self._serving is not None:
            return self._serving.padded(self.serving_ids(inputs), dtype=tf.as_dtype(self.compute_dtype))
        ids = self.layout.checked(inputs, self.name, self.validate_ids)
        rows = self.layout.rows(ids)
        emb = tf.cast(_utils.gather_rows(self.embedding_variable, rows), self.compute_dtype)
        field_mask = tf.cast(self._output_mask(training), emb.dtype)
        if not self.multi_field:
            field_mask = field_mask[0]
        mask = field_mask
        if self.per_value:
            sizes = _utils.gather_rows(self._value_sizes, rows)
            prefix = tf.range(self.output_dim)[None, :] < tf.expand_dims(tf.reshape(sizes, [-1]), -1)
            prefix = tf.reshape(tf.cast(prefix, emb.dtype), tf.shape(emb))
            mask = field_mask * prefix
        if training is True:
            for penalty in self._penalties:
                self.add_loss(penalty(self, emb, field_mask))
        if self._probe is not None:
            return self._probe.gate(emb, mask, self.multi_field, rows)
        return emb * mask

    def serving_ids(self, inputs) -> tf.Tensor:
        """The local ids (`[..., F]`, or `[...]` for one field) a serving lookup takes.

        Their range is checked by the lookup (`on_invalid_id`), not here.
        """
        ids = as_int_ids(inputs, self.name)
        self.layout.check_axis(ids, self.name)
        return ids

    # -------------------------------------------------------- mask protocol
    def dimension_mask(self) -> DimensionMask:
        keep = _utils.to_numpy(self._mask_variable) > 0.5 if self.built else np.ones(
            (self.num_fields, self.output_dim), bool
        )
        if not (self.per_value and self.built):
            return DimensionMask(self.field_vocab_sizes, keep, self.field_names)
        # sizes are <= D: read in the narrowest signed integers that hold D (1 B per row up to D = 127)
        flat = _utils.to_numpy(tf.cast(self._value_sizes, size_dtype(self.output_dim)))
        sizes = self.layout.split(flat)
        keep = keep & (np.arange(self.output_dim)[None, :] < np.array([s.max(initial=0) for s in sizes])[:, None])
        return DimensionMask(self.field_vocab_sizes, keep, self.field_names, value_sizes=sizes)

    def set_value_sizes(self, sizes, *, optimizer=None, zero_pruned: bool = True) -> None:
        """Switch to per-value sizes: value i keeps its first `sizes[i]` columns.

        Args:
            sizes: `[sum(n_f)]` ints in `[0, output_dim]` (rows of the
                concatenated table), or one array per field.
            optimizer: if given, its state for the removed entries is zeroed.
            zero_pruned: zero the removed entries of the stored table.

        The caller retraces the training step (`PMEPruner` does).
        """
        if not self.built:
            self.build()
        sizes = self._checked_sizes(sizes)
        if not (_utils.to_numpy(self._mask_variable) > 0.5).all():
            raise ValueError(
                f"layer '{self.name}' has a per-field mask; per-value sizes replace it, they do not combine with it."
            )
        self._value_sizes.assign(sizes)
        self.per_value = True
        if zero_pruned:
            zero_beyond_sizes(self.embedding_variable, sizes, optimizer)

    def set_dimension_mask(self, mask, *, optimizer=None, zero_pruned: bool = True) -> None:
        """Impose a per-field mask.

        Args:
            mask: a `DimensionMask` or a `[F, D]` 0/1 array.
            optimizer: if given, its state for the removed columns is zeroed too,
                so that momentum cannot move them.
            zero_pruned: zero the removed columns of the stored table.
        """
        if not self.built:
            self.build()
        keep = mask.keep if isinstance(mask, DimensionMask) else np.asarray(mask)
        if keep.shape != (self.num_fields, self.output_dim):
            raise ValueError(
                f"layer '{self.name}': mask must have shape ({self.num_fields}, {self.output_dim}); "
                f"received {keep.shape}."
            )
        if keep.dtype != bool and not np.all((keep == 0) | (keep == 1)):  # 0.5 would be read as kept
            odd = np.unique(keep[(keep != 0) & (keep != 1)])[:3].tolist()
            raise ValueError(f"layer '{self.name}': mask must hold only 0/1 or booleans; received {odd}.")
        keep = keep.astype(bool)
        if self.per_value:
            raise ValueError(
                f"layer '{self.name}' has per-value sizes; a per-field mask does not combine with them."
            )
        self._mask_variable.assign(keep.astype(np.float32))
        if zero_pruned and not keep.all():
            table = self.embedding_variable
            for variable in [table, *_compat.optimizer_slots(optimizer, table)]:
                for f, (start, n) in enumerate(zip(self.layout.offsets, self.field_vocab_sizes)):
                    if not keep[f].all():
                        row_ops.scale_rows(variable, int(start), int(start + n), tf.constant(keep[f][None, :]))

    def sync_search_state(self) -> bool:
        """Restored per-value sizes (a PME search that ended before the
        checkpoint) switch the layer to per-value lookups."""
        if not self.built or self.per_value:
            return False
        if int(_utils.to_numpy(self._value_sizes).min(initial=self.output_dim)) < self.output_dim:
            self.per_value = True
            return True
        return False

    # ----------------------------------------------------- probes, penalties
    def add_penalty(self, penalty) -> None:
        """Attach a training loss `penalty(layer, rows, mask) -> scalar` (the caller retraces)."""
        if penalty not in self._penalties:
            self._penalties.append(penalty)

    def remove_penalty(self, penalty) -> None:
        if penalty in self._penalties:
            self._penalties.remove(penalty)

    def attach_gate_probe(self) -> GateProbe:
        """Record gate gradients from now on (the caller retraces the step)."""
        if not isinstance(self._probe, GateProbe):
            self._probe = GateProbe(self.num_fields, self.output_dim)
        return self._probe

    def attach_entry_probe(self) -> EntryProbe:
        """Record entry importances `|w * dL/dw|` from now on (the caller retraces)."""
        if not isinstance(self._probe, EntryProbe):
            self._probe = EntryProbe(self.layout.num_rows, self.output_dim)
        return self._probe

    def detach_probe(self) -> None:
        self._probe = None

    # ------------------------------------------------------- saving/loading
    def _state_variables(self) -> list:
        return [self.embedding_variable, self._mask_variable, self._value_sizes, *self._search_state_variables()]

    def _load_other_store(self, store, n: int) -> bool:
        if n != 1:
            return False
        # A plain keras.layers.Embedding's store: warm start, the mask stays as it is.
        self.embedding_variable.assign(np.asarray(store["0"]))
        return True

    def set_weights(self, weights):
        """Also accepts `[table]` alone: a plain Embedding's weights (warm start)."""
        if len(weights) == 1 and len(self.weights) > 1:
            table = self.embedding_variable
            value = np.asarray(weights[0])
            if tuple(value.shape) != tuple(table.shape):
                raise ValueError(
                    f"layer '{self.name}': table shape {value.shape} does not match "
                    f"{tuple(table.shape)}."
                )
            table.assign(value)
            return
        super().set_weights(weights)

    def quantize(self, *args, **kwargs):
        raise NotImplementedError(
            f"{type(self).__name__} is not quantized in place; DimensionExporter compacts it."
        )

    def enable_lora(self, *args, **kwargs):
        raise NotImplementedError(f"LoRA is not supported by {type(self).__name__}.")

    def get_config(self) -> dict:
        config = super().get_config()
        vocab = self.field_vocab_sizes
        config["input_dim"] = list(vocab) if self.multi_field else vocab[0]
        config["field_names"] = list(self._field_names) if self._field_names else None
        config["validate_ids"] = self.validate_ids
        config["per_value"] = self.per_value
        for key in ("lora_rank", "lora_alpha", "quantization_config", "input_length", "sparse"):
            config.pop(key, None)
        return config
