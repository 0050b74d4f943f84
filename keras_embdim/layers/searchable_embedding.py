"""`SearchableEmbedding`: the base of every layer whose dimensions are searched."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from keras_embdim import _compat
from keras_embdim import rows as row_ops
from keras_embdim.fields import field_offsets
from keras_embdim._compat import keras
from keras_embdim.gate_probe import EntryProbe, GateProbe
from keras_embdim.mask import DimensionMask, DimensionSearchable


def _parse_vocab(input_dim: Any) -> tuple[tuple[int, ...], bool]:
    """`input_dim` is an int (one field) or a sequence of ints (several)."""
    def ok(n):
        return isinstance(n, (int, np.integer)) and not isinstance(n, bool) and int(n) > 0

    if ok(input_dim):
        return (int(input_dim),), False
    if isinstance(input_dim, (list, tuple, np.ndarray)) and len(input_dim) > 0 and all(
        ok(n) for n in input_dim
    ):
        return tuple(int(n) for n in input_dim), True
    raise ValueError(
        "`input_dim` must be a positive integer (one field) or a non-empty list of "
        f"positive integers (the vocabulary size of each field); received input_dim={input_dim!r}."
    )


def as_int_ids(inputs) -> tf.Tensor:
    """Ids as an integer tensor (floats are cast, as `keras.layers.Embedding` does)."""
    ids = tf.convert_to_tensor(inputs)
    if not ids.dtype.is_integer:
        ids = tf.cast(ids, tf.int32)
    return ids


def check_field_axis(ids: tf.Tensor, num_fields: int, layer_name: str) -> None:
    """A multi-field layer's ids must be `[..., F]`: one column per field."""
    shape = ids.shape
    if shape.rank == 0 or (shape.rank is not None and shape[-1] is not None and shape[-1] != num_fields):
        raise ValueError(
            f"layer '{layer_name}' embeds {num_fields} fields: its ids must have shape [..., {num_fields}] "
            f"(one column per field); received shape {tuple(shape)}."
        )


def check_id_range(ids: tf.Tensor, low, high, layer_name: str, fields: dict) -> tf.Tensor:
    """`ids` after asserting `low <= ids < high` (per field along the last axis).

    One comparison in unsigned arithmetic (`uint(ids - low) < high - low`: a
    negative difference wraps to a huge value), so that the check costs four
    ops in the serving graph, not the eight of two `tf.debugging` asserts.
    """
    low, high = np.asarray(low), np.asarray(high)
    shifted = ids - tf.constant(low, ids.dtype) if np.any(low) else ids
    unsigned = tf.uint64 if ids.dtype.size > 4 else tf.uint32
    ok = tf.reduce_all(tf.cast(shifted, unsigned) < tf.constant(high - low, unsigned))
    check = tf.debugging.Assert(
        ok,
        [
            f"layer '{layer_name}': embedding ids must be >= 0 (>= the field's offset for global ids) and "
            f"< the field's vocabulary size; vocabulary sizes are {fields}"
        ],
    )
    with tf.control_dependencies([check]):
        return tf.identity(ids)


def zero_beyond_sizes(table, sizes: np.ndarray, optimizer=None) -> None:
    """Zero the entries of each row beyond its size, in the table and its optimizer slots."""
    for variable in [table, *_compat.optimizer_slots(optimizer, table)]:
        row_ops.zero_beyond_sizes(variable, sizes)


class SearchableEmbedding(keras.layers.Embedding, DimensionSearchable):
    """An `Embedding` with a per-field dimension mask; base of keras_embdim's layers.

    It keeps `keras.layers.Embedding`'s constructor arguments, its `embeddings`
    weight (name and shape), `mask_zero` semantics and output shape, and adds:

    - a multi-field form: `input_dim=[n_1, ..., n_F]` makes one layer over F
      categorical fields; its input is `[..., F]` local ids (field `f` takes ids
      in `[0, n_f)`), its output `[..., F, output_dim]`. The fields share one
      concatenated `embeddings` table of `sum(n_f)` rows;
    - a non-trainable `dimension_mask` weight `[F, output_dim]` of 0/1: masked
      columns output exactly 0 and receive zero gradient;
    - id validation (an id outside its field's vocabulary is an error, never a
      silent read of another field's row);
    - the hooks the callbacks and the exporter use (`keras_embdim.mask`).

    Subclasses change how the mask is produced (`_output_mask`) and may add
    search state (`_build_search_state`, `_search_state_variables`).
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
        vocab, multi = _parse_vocab(input_dim)
        for key, default in _compat.EMBEDDING_UNSUPPORTED_KWARGS:
            value = kwargs.pop(key, default)
            if value != default:
                raise ValueError(
                    f"`{key}` is not supported by {type(self).__name__} (received {value!r}); "
                    "searched tables are compacted at export instead."
                )
        weights = kwargs.pop("weights", None)
        super().__init__(input_dim=int(sum(vocab)), output_dim=output_dim, **kwargs)
        if field_names is not None:
            field_names = tuple(str(n) for n in field_names)
            if len(field_names) != len(vocab):
                raise ValueError(
                    f"`field_names` must name each of the {len(vocab)} fields; received {field_names!r}."
                )
        self._vocab_sizes = vocab
        self._multi_field = multi
        self._field_names = field_names
        self.validate_ids = bool(validate_ids)
        # per-value granularity: value i keeps its first value_sizes[i] columns
        self.per_value = bool(per_value)
        self._offsets = field_offsets(vocab)
        self._gate_probe = None  # a GateProbe or EntryProbe while a search scores
        self._serving = None  # an export lookup (keras_embdim.export.lookup) while exporting
        # Extra training losses attached by callbacks (e.g. OrthogonalRegularizer):
        # callables (layer, rows [..., (F,) D] before masking, mask) -> scalar.
        self._penalties: list = []
        if weights is not None:
            self.build()
            self.set_weights(weights if isinstance(weights, list) else [weights])

    # ------------------------------------------------------------ properties
    @property
    def field_vocab_sizes(self) -> tuple[int, ...]:
        return self._vocab_sizes

    @property
    def num_fields(self) -> int:
        return len(self._vocab_sizes)

    @property
    def multi_field(self) -> bool:
        return self._multi_field

    @property
    def field_names(self) -> tuple[str, ...]:
        if self._field_names is not None:
            return self._field_names
        if not self._multi_field:
            return (self.name,)
        return tuple(f"field_{i}" for i in range(self.num_fields))

    @property
    def embedding_variable(self):
        return _compat.get_embedding_variable(self)

    # ----------------------------------------------------------------- build
    def build(self, input_shape=None):
        if self.built:
            return
        table = self.add_weight(
            name="embeddings",
            shape=(int(sum(self._vocab_sizes)), self.output_dim),
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
        )
        self._value_sizes = self.add_weight(
            name="value_sizes",
            shape=(int(sum(self._vocab_sizes)),),
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
    def _prepare_ids(self, inputs) -> tf.Tensor:
        ids = as_int_ids(inputs)
        if self._multi_field:
            check_field_axis(ids, len(self._vocab_sizes), self.name)
        if self.validate_ids:
            limit = np.asarray(self._vocab_sizes if self._multi_field else self._vocab_sizes[0])
            ids = check_id_range(ids, 0, limit, self.name, dict(zip(self.field_names, self._vocab_sizes)))
        return ids

    def _output_mask(self, training=None) -> tf.Tensor:
        """The `[F, D]` 0/1 mask applied in the forward pass."""
        return tf.convert_to_tensor(self._mask_variable)

    def call(self, inputs, training=None):
        if self._serving is not None:
            return self._serving.padded(self.serving_ids(inputs), dtype=tf.as_dtype(self.compute_dtype))
        ids = self._prepare_ids(inputs)
        rows = ids + tf.constant(self._offsets, ids.dtype) if self._multi_field else ids
        emb = tf.gather(self.embedding_variable, rows)
        emb = tf.cast(emb, self.compute_dtype)
        field_mask = tf.cast(self._output_mask(training), emb.dtype)
        if not self._multi_field:
            field_mask = field_mask[0]
        mask = field_mask
        if self.per_value:
            sizes = tf.gather(tf.convert_to_tensor(self._value_sizes), rows)
            prefix = tf.range(self.output_dim)[None, :] < tf.expand_dims(tf.reshape(sizes, [-1]), -1)
            prefix = tf.reshape(tf.cast(prefix, emb.dtype), tf.shape(emb))
            mask = field_mask * prefix
        if training is True:
            for penalty in self._penalties:
                self.add_loss(penalty(self, emb, field_mask))
        if self._gate_probe is not None:
            return self._gate_probe.gate(emb, mask, self._multi_field, rows)
        return emb * mask

    # -------------------------------------------------------- mask protocol
    def dimension_mask(self) -> DimensionMask:
        keep = _compat.to_numpy(self._mask_variable) > 0.5 if self.built else np.ones(
            (self.num_fields, self.output_dim), bool
        )
        if not (self.per_value and self.built):
            return DimensionMask(self._vocab_sizes, keep, self.field_names)
        flat = _compat.to_numpy(self._value_sizes).astype(np.int32, copy=False)  # 4 B per row: sizes are <= D
        sizes = [flat[o : o + n] for o, n in zip(self._offsets, self._vocab_sizes)]
        keep = keep & (np.arange(self.output_dim)[None, :] < np.array([s.max(initial=0) for s in sizes])[:, None])
        return DimensionMask(self._vocab_sizes, keep, self.field_names, value_sizes=sizes)

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
        if isinstance(sizes, (list, tuple)) and len(sizes) == self.num_fields and np.ndim(sizes[0]) == 1:
            sizes = np.concatenate([np.asarray(s) for s in sizes])
        sizes = np.asarray(sizes)
        total = int(sum(self._vocab_sizes))
        if sizes.shape != (total,) or not np.issubdtype(sizes.dtype, np.integer):
            raise ValueError(
                f"layer '{self.name}': sizes must be {total} integers (one per row), or one array per field; "
                f"received shape {sizes.shape} of {sizes.dtype}."
            )
        if sizes.min(initial=0) < 0 or sizes.max(initial=0) > self.output_dim:
            raise ValueError(f"layer '{self.name}': sizes must lie in [0, {self.output_dim}].")
        if not (_compat.to_numpy(self._mask_variable) > 0.5).all():
            raise ValueError(
                f"layer '{self.name}' has a per-field mask; per-value sizes replace it, they do not combine with it."
            )
        self._value_sizes.assign(sizes.astype(np.int32))
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
        keep = keep.astype(bool)
        if self.per_value:
            raise ValueError(
                f"layer '{self.name}' has per-value sizes; a per-field mask does not combine with them."
            )
        self._mask_variable.assign(keep.astype(np.float32))
        if zero_pruned and not keep.all():
            table = self.embedding_variable
            for variable in [table, *_compat.optimizer_slots(optimizer, table)]:
                for f, (start, n) in enumerate(zip(self._offsets, self._vocab_sizes)):
                    if not keep[f].all():
                        row_ops.scale_rows(variable, int(start), int(start + n), tf.constant(keep[f][None, :]))

    def sync_search_state(self) -> bool:
        """Restored per-value sizes (a PME search that ended before the
        checkpoint) switch the layer to per-value lookups."""
        if not self.built or self.per_value:
            return False
        if int(_compat.to_numpy(self._value_sizes).min(initial=self.output_dim)) < self.output_dim:
            self.per_value = True
            return True
        return False

    def add_penalty(self, penalty) -> None:
        """Attach a training loss `penalty(layer, rows, mask) -> scalar` (the caller retraces)."""
        if penalty not in self._penalties:
            self._penalties.append(penalty)

    def remove_penalty(self, penalty) -> None:
        if penalty in self._penalties:
            self._penalties.remove(penalty)

    def attach_gate_probe(self) -> GateProbe:
        """Record gate gradients from now on (the caller retraces the step)."""
        if not isinstance(self._gate_probe, GateProbe):
            self._gate_probe = GateProbe(self.num_fields, self.output_dim)
        return self._gate_probe

    def attach_entry_probe(self) -> EntryProbe:
        """Record entry importances `|w * dL/dw|` from now on (the caller retraces)."""
        if not isinstance(self._gate_probe, EntryProbe):
            self._gate_probe = EntryProbe(int(sum(self._vocab_sizes)), self.output_dim)
        return self._gate_probe

    def detach_gate_probe(self) -> None:
        self._gate_probe = None

    def serving_ids(self, inputs) -> tf.Tensor:
        """The local ids (`[..., F]`, or `[...]` for one field) a serving lookup takes.

        Their range is checked by the lookup (`on_invalid_id`), not here.
        """
        ids = as_int_ids(inputs)
        if self._multi_field:
            check_field_axis(ids, len(self._vocab_sizes), self.name)
        return ids

    def use_serving_lookup(self, lookup) -> None:
        """While set (the exporter traces the serving graph), `call` returns
        `lookup.padded(serving_ids(inputs))`; None switches back."""
        self._serving = lookup

    # ------------------------------------------------------- saving/loading
    def _state_variables(self) -> list:
        return [self.embedding_variable, self._mask_variable, self._value_sizes, *self._search_state_variables()]

    def save_own_variables(self, store):
        if not self.built:
            return
        for i, v in enumerate(self._state_variables()):
            store[str(i)] = _compat.to_numpy(v)

    def load_own_variables(self, store):
        if not self.built:
            return
        variables = self._state_variables()
        n = _compat.store_len(store)
        if n == 1:
            # A plain keras.layers.Embedding's store: warm start, mask stays as is.
            self.embedding_variable.assign(np.asarray(store["0"]))
            return
        if n != len(variables):
            raise ValueError(
                f"layer '{self.name}' expects {len(variables)} saved variables "
                f"(embeddings, dimension_mask, value_sizes, search state) or 1 (a plain Embedding's table); "
                f"the file holds {n}."
            )
        for i, v in enumerate(variables):
            v.assign(np.asarray(store[str(i)]))

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
        config["input_dim"] = list(self._vocab_sizes) if self._multi_field else self._vocab_sizes[0]
        config["field_names"] = list(self._field_names) if self._field_names else None
        config["validate_ids"] = self.validate_ids
        config["per_value"] = self.per_value
        for key in ("lora_rank", "lora_alpha", "quantization_config", "input_length", "sparse"):
            config.pop(key, None)
        return config
