"""The two sublayers of `TwinsMaskLayer` (AMTL): a frequency counter and the twins.

- `FrequencyCounter`: how often each value occurs, counted in training steps
  (or given), and the frequency features the twins read;
- `Twins`: the two MLPs, frequent and rare branch, mixed by the value's
  normalised count, giving logits over the candidate sizes (the math:
  `keras_embdim.search.twins`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from keras_embdim import _compat, _utils
from keras_embdim._compat import keras
from keras_embdim.fields import FieldLayout
from keras_embdim.search import twins


class FrequencyCounter(keras.layers.Layer):
    """How often each value of a layer's fields occurs, and the features the twins read.

    Variables: `counts` per table row, per field the largest count
    (`field_max`) and the total (`field_total`). Built by `TwinsMaskLayer`.

    Args:
        layout: the fields (`keras_embdim.fields.FieldLayout`).
        frequencies: known counts per row (then the owner does not count), or None.
    """

    def __init__(self, layout: FieldLayout, frequencies: np.ndarray | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.layout = layout
        self._initial = frequencies

    def build(self, input_shape=None):
        if self.built:
            return
        rows, F = self.layout.num_rows, self.layout.num_fields
        freq = self._initial if self._initial is not None else np.zeros(rows, np.float32)
        per_field = self.layout.split(freq)
        const = keras.initializers.Constant
        # read at float32 under a mixed policy too: bfloat16 reads a count of 257 as 256
        self.counts = self.add_weight(name="counts", shape=(rows,), trainable=False,
                                      initializer=const(freq) if freq.any() else "zeros",
                                      **_compat.NO_AUTOCAST)
        largest = np.array([f.max(initial=0.0) for f in per_field], np.float32)
        self.field_max = self.add_weight(name="field_max", shape=(F,), trainable=False, initializer=const(largest),
                                         **_compat.NO_AUTOCAST)
        self.field_total = self.add_weight(name="field_total", shape=(F,), trainable=False,
                                           initializer=const(np.array([f.sum() for f in per_field], np.float32)),
                                           **_compat.NO_AUTOCAST)
        self.built = True

    def features(self, counts: tf.Tensor, fields: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """`(q, s)` of values with these counts and fields: the twins' mixing weight and
        inputs (frequency features, and the field as a one-hot when there are several)."""
        vocab = tf.constant(np.asarray(self.layout.vocab_sizes, np.float32))
        fmax = tf.gather(tf.convert_to_tensor(self.field_max), fields)
        fmean = tf.gather(tf.convert_to_tensor(self.field_total) / vocab, fields)
        q, s = twins.frequency_features(counts, fmax, fmean)
        if self.layout.num_fields > 1:
            s = tf.concat([s, tf.one_hot(fields, self.layout.num_fields)], axis=-1)
        return q, s

    @property
    def num_features(self) -> int:
        F = self.layout.num_fields
        return twins.NUM_FREQUENCY_FEATURES + (F if F > 1 else 0)

    def count(self, rows: tf.Tensor, fields: tf.Tensor) -> None:
        """Add one occurrence for every looked-up row (all replicas' under a strategy)."""
        flat = tf.reshape(rows, [-1])
        flat_fields = tf.reshape(fields, [-1])
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            # each replica sees its part of the batch: gather the ids of all replicas so
            # that every replica makes the same (whole-batch) update
            flat = ctx.all_gather(flat, axis=0)
            flat_fields = ctx.all_gather(flat_fields, axis=0)
        ones = tf.ones(tf.shape(flat), tf.float32)
        counts = _compat.tf_variable(self.counts)
        counts.scatter_add(tf.IndexedSlices(ones, flat))
        seen = tf.math.unsorted_segment_max(tf.gather(counts, flat), flat_fields, self.layout.num_fields)
        self.field_max.assign(tf.maximum(tf.convert_to_tensor(self.field_max), seen))
        self.field_total.assign_add(tf.math.unsorted_segment_sum(ones, flat_fields, self.layout.num_fields))

    def groups(self):
        """Distinct `(field, count)` pairs (values the twins cannot tell apart):
        `(fields [G], counts [G], inverse [rows], multiplicity [G])`."""
        # one 1-D unique per field, not `np.unique(axis=0)` over (field, count) rows: that sorts a
        # structured dtype and took 38 s per call at 1e7 rows (1-D float32: about 1 s)
        g_fields, g_counts, inverse, mult = [], [], [], []
        start = 0
        for f, part in enumerate(self.layout.split(_utils.to_numpy(self.counts).astype(np.float32, copy=False))):
            uniq, inv, n = np.unique(part, return_inverse=True, return_counts=True)
            g_fields.append(np.full(uniq.size, f, np.int32))
            g_counts.append(uniq)
            inverse.append(inv.reshape(-1) + start)
            mult.append(n)
            start += uniq.size
        return (np.concatenate(g_fields), np.concatenate(g_counts).astype(np.float32, copy=False),
                np.concatenate(inverse), np.concatenate(mult))


class Twins(keras.layers.Layer):
    """AMTL's twin MLPs: `logit_scale * (q h(s) + (1 - q) l(s))` over the candidate sizes.

    Every value starts at full size: the last size's bias starts high, so a
    warm start keeps the trained model's output. Built by `TwinsMaskLayer`.
    """

    def __init__(self, num_inputs: int, hidden_units: int, num_candidates: int, logit_scale: float, **kwargs: Any):
        super().__init__(**kwargs)
        self.num_inputs, self.hidden_units, self.num_candidates = num_inputs, hidden_units, num_candidates
        self.logit_scale = float(logit_scale)

    def build(self, input_shape=None):
        if self.built:
            return
        start = np.zeros(self.num_candidates, np.float32)
        start[-1] = 2.0 / self.logit_scale
        H, K = self.hidden_units, self.num_candidates
        for branch in ("high", "low"):
            setattr(self, f"{branch}_w1", self.add_weight(name=f"{branch}_w1", shape=(self.num_inputs, H),
                                                           initializer="glorot_uniform"))
            setattr(self, f"{branch}_b1", self.add_weight(name=f"{branch}_b1", shape=(H,), initializer="zeros"))
            setattr(self, f"{branch}_w2", self.add_weight(name=f"{branch}_w2", shape=(H, K),
                                                           initializer=keras.initializers.RandomNormal(stddev=0.01)))
            setattr(self, f"{branch}_b2", self.add_weight(name=f"{branch}_b2", shape=(K,),
                                                           initializer=keras.initializers.Constant(start)))
        self.built = True

    @property
    def high(self) -> tuple:
        """The frequent-value branch `(w1, b1, w2, b2)`."""
        return self.high_w1, self.high_b1, self.high_w2, self.high_b2

    @property
    def low(self) -> tuple:
        """The rare-value branch `(w1, b1, w2, b2)`."""
        return self.low_w1, self.low_b1, self.low_w2, self.low_b2

    def call(self, features: tf.Tensor, q: tf.Tensor) -> tf.Tensor:
        return self.logit_scale * twins.twins_logits(features, q, self.high, self.low)
