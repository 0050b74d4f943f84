"""`TwinsMaskLayer`: per-value sizes from value frequency (AMTL), behind an embedding.

Three parts, each with one job: the sublayers `FrequencyCounter` and `Twins`
(`keras_embdim.layers.twins_parts`), and
- `TwinsMaskLayer`: the wrapped embedding, its `FieldLayout`, the
  straight-through prefix mask, the size penalty, and once the search is over
  the frozen per-value sizes.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from keras_embdim import _compat, _utils
from keras_embdim._compat import keras, register_serializable
from keras_embdim.fields import FieldLayout, as_int_ids
from keras_embdim.layers.searchable_embedding import SearchableEmbedding, zero_beyond_sizes
from keras_embdim.layers.state import LayerState
from keras_embdim.layers.twins_parts import FrequencyCounter, Twins
from keras_embdim.mask import DimensionMask
from keras_embdim.search import twins
from keras_embdim.searchable import DimensionSearchable
from keras_embdim.validation import check_bool, check_int, check_number

_EVAL_CHUNK = 1 << 16


@register_serializable(package="keras_embdim")
class TwinsMaskLayer(LayerState, keras.layers.Layer, DimensionSearchable):
    """Per-value embedding sizes from an adaptively-masked twins layer (AMTL).

    Wraps an embedding layer (a plain `keras.layers.Embedding`, or keras_embdim's
    `PrunableEmbedding` / `SearchableEmbedding`, single- or multi-field) and
    multiplies each looked-up row by a prefix mask: value i keeps its first
    `k_i` dimensions. `k_i` is a learned function of how often value i occurs:

    - frequency features of the value (its count relative to the largest and to
      the mean count of its field, plus the field as a one-hot), from counts the
      layer gathers while training (`FrequencyCounter`), or `frequencies` given;
    - two twin MLPs of the same shape map them to logits over the sizes
      `min_dim..D` (`Twins`); the frequent-value branch and the rare-value
      branch are mixed with weight `q_i = log(1+c_i) / log(1+max count of the field)`;
    - the forward mask is the prefix of the argmax size, exactly 0/1; the
      gradient reaches the twins through `softmax(z / temperature)`
      (straight-through, `keras_embdim.search.twins.straight_through_mask`);
    - a size penalty `size_weight * relu(expected kept fraction - size_target)`
      is added to the loss, the kept fraction being estimated on a uniform
      sample of the vocabulary (each distinct value costs its size once, however
      often it occurs).

    `keras_embdim.TwinsMaskSearch` drives it to a parameter budget and then
    freezes every value's size (`set_value_sizes`); after that the twins are
    not evaluated any more, and `DimensionExporter` ships each value's kept
    prefix in a packed layout without the twins.

    Args:
        embedding: the embedding layer to mask.
        field_vocab_sizes: for a plain `Embedding` over several fields that
            share one id space (ids already offset, input `[..., F]` with column
            f holding field f's ids, as `keras_embdim.layers.FieldOffsets`
            makes): each field's vocabulary size. Default: one field.
        field_names: names of the fields for reports (plain Embedding only).
        frequencies: optional known counts per value (one array per field, or
            one array over all rows); then the layer does not count.
        hidden_units: width of each twin's hidden layer.
        min_dim: smallest size a value can get (0 lets rare values vanish).
        temperature: softmax temperature of the straight-through gradient.
        logit_scale: the twins' logits are `logit_scale * (mixed MLP output)`,
            so that they move fast enough under the model's optimizer (an Adam
            step moves a weight by about the learning rate; a search lasts a
            few hundred steps).
        size_weight, size_target: the size penalty (`TwinsMaskSearch` sets them).
        penalty_sample: vocabulary rows sampled per step for the size penalty.
        count_frequencies: count values in training steps (default: unless
            `frequencies` are given).
        validate_ids: assert that ids lie in their field's range.
        frozen: the sizes are fixed (a layer loaded after its search).

    Example:

    >>> import numpy as np, keras_embdim as ked
    >>> layer = ked.TwinsMaskLayer(ked.keras.layers.Embedding(100, 8))
    >>> tuple(layer(np.array([[1, 2, 3]])).shape)
    (1, 3, 8)
    """

    granularity = "value"

    def __init__(
        self,
        embedding: Any,
        *,
        field_vocab_sizes: Sequence[int] | None = None,
        field_names: Sequence[str] | None = None,
        frequencies: Any = None,
        hidden_units: int = 16,
        min_dim: int = 1,
        temperature: float = 1.0,
        logit_scale: float = 10.0,
        size_weight: float = 0.0,
        size_target: float = 1.0,
        penalty_sample: int = 1024,
        count_frequencies: bool | None = None,
        validate_ids: bool = True,
        frozen: bool = False,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if isinstance(embedding, dict):
            embedding = keras.layers.deserialize(embedding)
        if not isinstance(embedding, keras.layers.Embedding):
            raise TypeError(
                "`embedding` must be a keras.layers.Embedding or a keras_embdim embedding layer; "
                f"received {type(embedding).__name__}."
            )
        ours = isinstance(embedding, SearchableEmbedding)
        if ours and type(embedding).__name__ not in ("SearchableEmbedding", "PrunableEmbedding"):
            raise TypeError(
                f"`embedding` is a {type(embedding).__name__}, which searches its own dimensions; "
                "wrap a plain Embedding or a PrunableEmbedding."
            )
        if ours and embedding.built and not embedding.dimension_mask().is_full:
            raise ValueError(f"`embedding` '{embedding.name}' has a dimension mask already; wrap an unsearched layer.")
        self.embedding = embedding
        self._ours = ours
        self._given_vocab = field_vocab_sizes is not None
        self._given_names = field_names is not None
        if ours:
            if field_vocab_sizes is not None:
                raise ValueError(
                    f"`field_vocab_sizes` is for a plain Embedding; '{embedding.name}' knows its fields "
                    f"({list(embedding.field_vocab_sizes)})."
                )
            self.layout = embedding.layout
        else:
            n = int(embedding.input_dim)
            vocab = (n,) if field_vocab_sizes is None else tuple(check_int("field_vocab_sizes", v, 1) for v in field_vocab_sizes)
            if sum(vocab) != n:
                raise ValueError(
                    f"`field_vocab_sizes` must add up to the Embedding's input_dim={n}; "
                    f"received {list(vocab)} (sum {sum(vocab)})."
                )
            multi = field_vocab_sizes is not None
            if field_names is None:
                field_names = (embedding.name,) if len(vocab) == 1 else tuple(f"field_{i}" for i in range(len(vocab)))
            self.layout = FieldLayout(vocab, field_names, multi_field=multi, global_ids=multi)
        self.output_dim = int(embedding.output_dim)
        self.hidden_units = check_int("hidden_units", hidden_units, 1)
        self.min_dim = check_int("min_dim", min_dim, 0)
        if self.min_dim > self.output_dim:
            raise ValueError(f"`min_dim` must be <= output_dim={self.output_dim}; received min_dim={min_dim}.")
        self._init_temperature = check_number("temperature", temperature, low=0, strict=True)
        self.logit_scale = check_number("logit_scale", logit_scale, low=0, strict=True)
        self._init_size_weight = check_number("size_weight", size_weight, low=0)
        self._init_size_target = check_number("size_target", size_target, low=0)
        self.penalty_sample = check_int("penalty_sample", penalty_sample, 1)
        freq = self._parse_frequencies(frequencies)
        self.count_frequencies = ((frequencies is None) if count_frequencies is None
                                  else check_bool("count_frequencies", count_frequencies))
        self.validate_ids = check_bool("validate_ids", validate_ids)
        self.frozen = check_bool("frozen", frozen)
        self._table_frozen = False  # twins-first warm start: no update of the table
        self.supports_masking = True
        # the twins and their counts compute in float32 whatever the policy: bfloat16 reads a count
        # of 257 as 256, and the logits decide every value's size (docs/guides/deployment.md)
        self.counter = FrequencyCounter(self.layout, freq, name="frequency_counter", dtype="float32")
        self.twins = Twins(self.counter.num_features, self.hidden_units, self.num_candidates, self.logit_scale,
                           name="twins", dtype="float32")
        self.twins.trainable = not self.frozen  # a frozen layer (loaded after its search) no longer trains them

    def _parse_frequencies(self, frequencies) -> np.ndarray | None:
        """Known counts: one array per field, or one over all rows."""
        if frequencies is None:
            return None
        if isinstance(frequencies, (list, tuple)) and len(frequencies) == self.num_fields and all(
            np.ndim(f) == 1 for f in frequencies
        ):
            shapes = [np.shape(f) for f in frequencies]
            if any(shape != (n,) for shape, n in zip(shapes, self.field_vocab_sizes)):
                raise ValueError(
                    f"`frequencies` must hold one count per value of each field {list(self.field_vocab_sizes)}; "
                    f"received lengths {shapes}."
                )
            frequencies = np.concatenate([np.asarray(f, np.float64) for f in frequencies])
        freq = np.asarray(frequencies, np.float64)
        if freq.shape != (self.layout.num_rows,):
            raise ValueError(
                f"`frequencies` must be {self.layout.num_rows} counts (one per row) or one array per field; "
                f"received shape {freq.shape}."
            )
        if not np.all(np.isfinite(freq)) or freq.min(initial=0) < 0:
            raise ValueError("`frequencies` must be finite counts >= 0.")
        return freq.astype(np.float32)

    # ------------------------------------------------------------ properties
    @property
    def embedding_variable(self):
        return _compat.get_embedding_variable(self.embedding)

    @property
    def num_candidates(self) -> int:
        return self.output_dim - self.min_dim + 1

    # ----------------------------------------------------------------- build
    def build(self, input_shape=None):
        if self.built:
            return
        if not self.embedding.built:
            self.embedding.build(input_shape)
        self.counter.build()
        self.twins.build()
        const = keras.initializers.Constant
        # read at float32 under a mixed policy too (`_compat.NO_AUTOCAST`): they decide the sizes
        scalar = dict(shape=(), trainable=False, **_compat.NO_AUTOCAST)
        self.temperature = self.add_weight(name="temperature", initializer=const(self._init_temperature), **scalar)
        self.size_weight = self.add_weight(name="size_weight", initializer=const(self._init_size_weight), **scalar)
        self.size_target = self.add_weight(name="size_target", initializer=const(self._init_size_target), **scalar)
        self.size_bias = self.add_weight(name="size_bias", initializer="zeros", **scalar)
        self.value_sizes = self.add_weight(
            name="value_sizes", shape=(self.layout.num_rows,), initializer=const(self.output_dim), dtype="int32",
            trainable=False,
        )
        # 1 once the sizes are fixed: saved with the weights (checkpoints, BackupAndRestore)
        self.search_frozen = self.add_weight(
            name="search_frozen", initializer=const(float(self.frozen)), **scalar
        )
        self.built = True

    # ------------------------------------------------------------------ call
    def _logits_for(self, counts: tf.Tensor, fields: tf.Tensor, biased: bool = True) -> tf.Tensor:
        """Twins logits `[..., K]` of values with the given counts and field indices."""
        q, s = self.counter.features(counts, fields)
        z = self.twins(s, q)
        if biased:
            z = twins.biased_logits(z, self.size_bias, self.min_dim, self.output_dim)
        return z

    def search_penalty(self) -> tf.Tensor:
        """The size penalty on a fresh vocabulary sample (0 once frozen): for logs."""
        return tf.zeros([]) if self.frozen else self.size_penalty()

    def size_penalty(self) -> tf.Tensor:
        """`size_weight * relu(kept fraction - size_target)` on a uniform vocabulary sample."""
        total = self.layout.num_rows
        if total <= self.penalty_sample:
            rows = tf.range(total, dtype=tf.int32)
        else:
            rows = tf.random.uniform([self.penalty_sample], 0, total, dtype=tf.int32)
        z = self._logits_for(_utils.gather_rows(self.counter.counts, rows), self.layout.field_of_rows(rows))
        _, size = twins.straight_through_mask(z, self.temperature, self.min_dim, self.output_dim)
        frac = tf.reduce_mean(size) / float(self.output_dim)
        return tf.convert_to_tensor(self.size_weight) * tf.nn.relu(frac - tf.convert_to_tensor(self.size_target))

    def call(self, inputs, training=None):
        if self._serving is not None:
            return self._serving.padded(self.serving_ids(inputs), dtype=tf.as_dtype(self.compute_dtype))
        ids = self.layout.checked(inputs, self.name, self.validate_ids)
        emb = self.embedding(ids)
        if self._table_frozen:
            emb = tf.stop_gradient(emb) + 0.0 * emb  # zero gradient: the table does not move
        rows = tf.cast(self.layout.rows(ids), tf.int32)
        fields = self.layout.field_index(rows)
        if self.frozen:
            sizes = _utils.gather_rows(self.value_sizes, rows)
            mask = tf.cast(tf.range(self.output_dim) < tf.expand_dims(sizes, -1), emb.dtype)
            return emb * mask
        # a resource gather, not a dense read: the counts are scatter-updated, and TensorFlow copies a
        # scatter-updated variable whole on every dense read (40 MB per step at 1e7 rows)
        mask = self._grouped_mask(_utils.gather_rows(self.counter.counts, rows), fields)
        if training is True:
            self.add_loss(self.size_penalty())
        out = emb * tf.cast(mask, emb.dtype)
        if training is True and self.count_frequencies:
            out = self._count_in_backward(out, rows, fields)
        return out

    def _grouped_mask(self, counts: tf.Tensor, fields: tf.Tensor) -> tf.Tensor:
        """The prefix mask `[..., D]` of every lookup, the twins run once per distinct
        (field, count) of the batch: lookups with the same field and count have the
        same features, hence the same logits. Frequent ids repeat within a batch and
        rare ones share small counts, so a batch holds far fewer groups than lookups
        (measured: the per-lookup twins made an AMTL step 1.5x a plain one on 26
        fields x 1024 rows)."""
        shape = tf.shape(counts)
        # the exact bits of the (non-negative) float count, so no two counts merge
        bits = tf.cast(tf.bitcast(tf.cast(tf.reshape(counts, [-1]), tf.float32), tf.int32), tf.int64)
        key = tf.cast(tf.reshape(fields, [-1]), tf.int64) * (2**31) + bits
        uniq, idx = tf.unique(key)
        u_fields = tf.cast(uniq // (2**31), tf.int32)
        u_counts = tf.bitcast(tf.cast(uniq % (2**31), tf.int32), tf.float32)
        z = self._logits_for(u_counts, u_fields)
        mask, _ = twins.straight_through_mask(z, self.temperature, self.min_dim, self.output_dim)
        return tf.reshape(tf.gather(mask, idx), tf.concat([shape, [self.output_dim]], 0))

    def _count_in_backward(self, out: tf.Tensor, rows: tf.Tensor, fields: tf.Tensor) -> tf.Tensor:
        """Count this step's ids in the backward pass of the training step.

        So a step's logits see the counts of the steps before it, on one
        device and under a distribution strategy alike. Why not in the forward
        pass: under a strategy, counting gathers every replica's ids
        (`all_gather`), a point where the replicas' threads wait for each
        other, and Keras keeps a layer's added losses in one list per layer
        that the replica threads share: a collective between the forward
        pass's `add_loss` and the loss computation let one replica read both
        replicas' size penalties (measured: the penalty weighed 1.5x on two
        replicas). In the backward pass each replica has read its own losses.
        A call with `training=True` outside a training step (no gradient) does
        not count."""

        @tf.custom_gradient
        def counted(x):
            def grad(upstream):
                self.counter.count(rows, fields)  # a stateful op: tf.function runs it with the step
                return upstream

            return tf.identity(x), grad

        return counted(out)

    def serving_ids(self, inputs) -> tf.Tensor:
        """Local ids per field (global ids of a shared id space made local); see
        `SearchableEmbedding.serving_ids`."""
        ids = as_int_ids(inputs, self.name)
        self.layout.check_axis(ids, self.name)
        return self.layout.local(ids)

    def compute_mask(self, inputs, mask=None):
        return self.embedding.compute_mask(inputs, mask)

    def compute_output_shape(self, input_shape):
        return self.embedding.compute_output_shape(input_shape)

    # -------------------------------------------------------- mask protocol
    def group_logits(self, biased: bool = False):
        """`(z [G, K], inverse [rows], group counts [G], multiplicity [G])` over the vocabulary."""
        g_fields, g_counts, inverse, mult = self.counter.groups()
        parts = [
            _utils.to_numpy(self._logits_for(tf.constant(g_counts[s : s + _EVAL_CHUNK]),
                                             tf.constant(g_fields[s : s + _EVAL_CHUNK]), biased))
            for s in range(0, len(g_fields), _EVAL_CHUNK)
        ]
        z = np.concatenate(parts) if parts else np.zeros((0, self.num_candidates), np.float32)
        return z, inverse, g_counts, mult

    def current_sizes(self) -> np.ndarray:
        """`[rows]` size of every value now (frozen sizes, or the twins' choice)."""
        if not self.built:
            return np.full(self.layout.num_rows, self.output_dim, np.int32)
        if self.frozen:
            return _utils.to_numpy(self.value_sizes).astype(np.int32)
        z, inverse, _, _ = self.group_logits(biased=True)
        sizes = twins.size_table(self.min_dim, self.output_dim)
        return sizes[np.argmax(z, axis=1)][inverse]

    def dimension_mask(self) -> DimensionMask:
        sizes = self.layout.split(self.current_sizes().astype(np.int32, copy=False))
        widest = np.array([s.max(initial=0) for s in sizes])
        keep = np.arange(self.output_dim)[None, :] < widest[:, None]
        return DimensionMask(self.field_vocab_sizes, keep, self.field_names, value_sizes=sizes)

    def set_dimension_mask(self, mask, **kwargs) -> None:
        raise ValueError(
            f"layer '{self.name}' sizes each value (TwinsMaskLayer); it takes per-value sizes "
            "(`set_value_sizes`), not a per-field mask."
        )

    def set_value_sizes(self, sizes, *, optimizer=None, zero_pruned: bool = True) -> None:
        """Fix every value's size (the search is over; the twins are no longer used).

        Args:
            sizes: `[sum(n_f)]` ints in `[0, output_dim]`, or one array per field.
            optimizer: if given, its state for the removed entries is zeroed.
            zero_pruned: zero the removed entries of the table.

        The caller retraces the training step (`TwinsMaskSearch` does).
        """
        if not self.built:
            self.build()
        sizes = self._checked_sizes(sizes)
        self.value_sizes.assign(sizes)
        self.search_frozen.assign(1.0)
        self._freeze_python_state()
        if zero_pruned:
            zero_beyond_sizes(self.embedding_variable, sizes, optimizer)

    def _freeze_python_state(self) -> None:
        self.frozen = True
        self.twins.trainable = False  # unused from now on: no "gradients do not exist" warnings

    def sync_search_state(self) -> bool:
        """A restored `search_frozen` flag fixes the (restored) per-value sizes."""
        if not self.built or self.frozen or float(_utils.to_numpy(self.search_frozen)) < 0.5:
            return False
        self._freeze_python_state()
        return True

    def freeze_table(self, frozen: bool = True) -> None:
        """Stop (or resume) updates of the embedding table; the caller retraces."""
        self._table_frozen = bool(frozen)

    # ------------------------------------------------------- saving/loading
    def _state_variables(self) -> list:
        """Own variables in a fixed order (the counter's and the twins' are their sublayers')."""
        return [self.temperature, self.size_weight, self.size_target, self.size_bias, self.value_sizes,
                self.search_frozen]

    # ---------------------------------------------------------------- config
    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            embedding=keras.layers.serialize(self.embedding),
            field_vocab_sizes=list(self.field_vocab_sizes) if self._given_vocab else None,
            field_names=list(self.field_names) if self._given_names else None,
            hidden_units=self.hidden_units,
            min_dim=self.min_dim,
            temperature=self._init_temperature,
            logit_scale=self.logit_scale,
            size_weight=self._init_size_weight,
            size_target=self._init_size_target,
            penalty_sample=self.penalty_sample,
            count_frequencies=self.count_frequencies,
            validate_ids=self.validate_ids,
            frozen=self.frozen,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["embedding"] = keras.layers.deserialize(config["embedding"])
        return cls(**config)
