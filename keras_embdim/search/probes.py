"""Gradients of the loss with respect to output gates, read off training steps.

SSEDS scores a field-dimension by the sensitivity of the loss to a gate
`alpha[f, j]` that multiplies column `j` of field `f`'s embedding output, taken
at `alpha = 1` (the SNIP connection sensitivity). With
`out = e * alpha`, `dL/dalpha[f, j] = sum_batch dL/dout[b, f, j] * e[b, f, j]`.

`GateProbe.gate` computes `e * mask` with a custom gradient that, as a side
effect of the backward pass, adds that quantity for the current batch to
accumulators. A layer attaches a probe only while scoring, so whatever
`train_step` a model has (plain Keras, TFRS, custom) scores on the very batches
`fit` trains on, and steps outside scoring pay nothing.

The accumulators are plain variables: under MirroredStrategy every local
replica adds into the same one; under MultiWorkerMirroredStrategy each worker
holds the sum of its own shard, so every read goes through `sum_over_workers`
(one all-reduce when the search ends, on every worker at the same step).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_embdim.search import joint


def several_workers(strategy: tf.distribute.Strategy) -> bool:
    """Whether `strategy`'s replicas span several workers (so a local accumulator is one worker's share)."""
    n = strategy.num_replicas_in_sync
    return n > 1 and n > len(strategy.extended.worker_devices)


def sum_over_workers(value, strategy: tf.distribute.Strategy | None = None) -> np.ndarray:
    """A worker-local accumulator summed over the workers of `strategy`.

    Under one worker (no strategy, OneDevice, MirroredStrategy) the value is
    returned as is: the local replicas already add into the same variable.
    With several workers each replica contributes its worker's value divided
    by the number of local replicas to one all-reduce, so the result is the
    sum over workers, identical on every worker. Every worker must call it at
    the same point (it is a collective).

    Args:
        value: the local accumulator (tensor, variable or array).
        strategy: the model's strategy; default: the one in scope.
    """
    strategy = strategy or tf.distribute.get_strategy()
    local = np.asarray(value.numpy() if hasattr(value, "numpy") else value, np.float32)
    if not several_workers(strategy):
        return local
    share = tf.constant(local / len(strategy.extended.worker_devices))
    with strategy.scope():
        total = strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tf.identity(share)))
    return np.asarray(strategy.experimental_local_results(total)[0].numpy())


class GateProbe:
    """Accumulates per-batch gate gradients for one layer.

    Args:
        num_fields: F.
        output_dim: D.
    """

    def __init__(self, num_fields: int, output_dim: int):
        shape = (num_fields, output_dim)
        self.grad_sum = tf.Variable(tf.zeros(shape), trainable=False, name="gate_grad_sum")
        self.abs_sum = tf.Variable(tf.zeros(shape), trainable=False, name="gate_abs_sum")
        self.sq_sum = tf.Variable(tf.zeros(shape), trainable=False, name="gate_sq_sum")  # per example
        # per example, the outer product of a field's gate gradients (score="fisher_joint"); accumulated only
        # after record_pairs(True): B x F x D^2 per step
        self.pair_sum = tf.Variable(tf.zeros((num_fields, output_dim, output_dim)), trainable=False,
                                    name="gate_pair_sum")
        self.pairs = False
        self.examples = tf.Variable(0.0, trainable=False, name="gate_examples")
        self.batches = tf.Variable(0.0, trainable=False, name="gate_batches")

    def record_pairs(self, enabled: bool) -> None:
        """Whether the backward pass also accumulates `pair_sum` (read at the next trace)."""
        self.pairs = bool(enabled)

    def reset(self) -> None:
        self.examples.assign(0.0)
        for v in (self.grad_sum, self.abs_sum, self.sq_sum, self.pair_sum):
            v.assign(tf.zeros_like(v))
        self.batches.assign(0.0)

    def gate(self, emb: tf.Tensor, mask: tf.Tensor, multi_field: bool, rows: tf.Tensor | None = None) -> tf.Tensor:
        """`emb * mask`, recording `dL/dalpha` in the backward pass.

        Args:
            emb: `[..., D]` (single field) or `[..., F, D]` embeddings.
            mask: 0/1 mask broadcastable to `emb` (a tensor, not a variable).
            multi_field: which of the two layouts `emb` has.
            rows: the table rows looked up (unused here; see `EntryProbe`).
        """
        keep_axes = 2 if multi_field else 1
        probe = self

        @tf.custom_gradient
        def gated(e, m):
            def grad(upstream):
                g = upstream * e
                rank = g.shape.rank
                # per example (the batch axis kept), then over the batch
                inner = list(range(1, rank - keep_axes))
                per = tf.cast(tf.reduce_sum(g, axis=inner) if inner else g, tf.float32)
                per = tf.reshape(per, tf.concat([[-1], tf.shape(probe.grad_sum)], axis=0))
                n = tf.cast(tf.shape(per)[0], tf.float32)
                g = tf.reduce_sum(per, axis=0)
                probe.grad_sum.assign_add(g)
                probe.abs_sum.assign_add(tf.abs(g))
                # the loss is a batch mean: an example's own gradient is n x its share
                probe.sq_sum.assign_add(tf.reduce_sum(tf.square(per * n), axis=0))
                if probe.pairs:
                    probe.pair_sum.assign_add(tf.einsum("bfi,bfj->fij", per * n, per * n))
                probe.examples.assign_add(n)
                probe.batches.assign_add(1.0)
                return upstream * m, tf.zeros_like(m)

            return e * m, grad

        return gated(emb, tf.cast(mask, emb.dtype))

    def scores(self, mode: str = "abs_mean", strategy: tf.distribute.Strategy | None = None) -> np.ndarray:
        """Mean importance per gate `[F, D]` (unnormalised: the pruner
        normalises over all layers so that the global scores sum to 1).

        Args:
            mode: "mean_abs" averages `|dL/dalpha|` over batches; "abs_mean"
                takes `|mean dL/dalpha|` (gradients of opposite sign cancel);
                "taylor" takes `-mean dL/dalpha`, the first-order estimate of
                how much the loss rises if the column is removed (signed: a
                column whose removal lowers the loss ranks last); "fisher" takes
                half the mean over examples of `(dl/dalpha)^2` (each example's
                own loss `l`): the second-order estimate of that rise at a
                trained model, where the mean gradient is about zero (the
                empirical Fisher information of the gate); "fisher_joint" scores
                from the same per-example gradients with the cross terms of a
                field's columns (`keras_embdim.search.joint`: the estimated cost
                of cutting the field to its most needed columns; needs
                `record_pairs(True)` before the scored steps).
            strategy: the model's `tf.distribute` strategy (sums over workers).
        """
        n = float(self.total_batches(strategy))
        if n == 0:
            raise RuntimeError("the gate probe saw no batch: nothing to score.")
        if mode == "mean_abs":
            s = sum_over_workers(self.abs_sum, strategy) / n
        elif mode == "abs_mean":
            s = np.abs(sum_over_workers(self.grad_sum, strategy) / n)
        elif mode == "taylor":
            # first-order Taylor: removing column j changes the loss by about -dL/dalpha
            s = -sum_over_workers(self.grad_sum, strategy) / n
        elif mode == "fisher":
            # each example's gradient is read as n x its share of the batch-mean loss; a strategy that scales
            # each replica's loss (by 1 / replicas) scales every column's score alike: the same ranking
            examples = max(float(sum_over_workers(self.examples, strategy)), 1.0)
            s = 0.5 * sum_over_workers(self.sq_sum, strategy) / examples
        elif mode == "fisher_joint":
            if not self.pairs:
                raise ValueError("score 'fisher_joint' needs the pairs recorded: call record_pairs(True) before "
                                 "the scored steps.")
            examples = max(float(sum_over_workers(self.examples, strategy)), 1.0)
            s = joint.nested_removal_scores(sum_over_workers(self.pair_sum, strategy), examples)
        else:
            raise ValueError("`score` must be 'abs_mean', 'mean_abs', 'taylor', 'fisher' or 'fisher_joint'; "
                             f"received {mode!r}.")
        return s

    def total_batches(self, strategy: tf.distribute.Strategy | None = None) -> int:
        """Batches scored, over all workers."""
        return int(sum_over_workers(self.batches, strategy))


class EntryProbe:
    """Accumulates the importance `|w * dL/dw|` of every table entry (PME).

    Per occurrence of a row in a batch it adds `|e * upstream|` (the entry's
    value times the gradient reaching it through that lookup) to an
    accumulator of the table's shape, with one scatter-add per step:
    `O(batch * fields * D)`, never `O(table)`. Summing per occurrence rather
    than per step (`|w * sum g|`) avoids a per-step pass over the whole table.

    Args:
        num_rows: rows of the layer's (concatenated) table.
        output_dim: D.
    """

    def __init__(self, num_rows: int, output_dim: int):
        self.importance = tf.Variable(tf.zeros((num_rows, output_dim)), trainable=False, name="entry_importance")
        self.batches = tf.Variable(0.0, trainable=False, name="entry_batches")

    def reset(self) -> None:
        self.importance.assign(tf.zeros_like(self.importance))
        self.batches.assign(0.0)

    def gate(self, emb: tf.Tensor, mask: tf.Tensor, multi_field: bool, rows: tf.Tensor | None = None) -> tf.Tensor:
        probe = self
        D = emb.shape[-1]

        @tf.custom_gradient
        def gated(e, m):
            def grad(upstream):
                contrib = tf.cast(tf.abs(upstream * e), tf.float32)
                probe.importance.scatter_add(
                    tf.IndexedSlices(tf.reshape(contrib, [-1, D]), tf.reshape(tf.cast(rows, tf.int32), [-1]))
                )
                probe.batches.assign_add(1.0)
                return upstream * m, tf.zeros_like(m)

            return e * m, grad

        return gated(emb, tf.cast(mask, emb.dtype))

    def total_importance(self, strategy: tf.distribute.Strategy | None = None) -> np.ndarray | tf.Variable:
        """`[rows, D]` accumulated importance, summed over workers: under one worker the accumulator
        itself, which `keras_embdim.search.entries.select_entries` reads a chunk of rows at a time
        (a whole read of the scatter-updated variable copied it, and its numpy copy was one more:
        two tables' worth above PME's training peak, commit 1aa9c65); across workers the
        all-reduced array."""
        if not several_workers(strategy or tf.distribute.get_strategy()):
            return self.importance
        return sum_over_workers(self.importance, strategy)

    def total_batches(self, strategy: tf.distribute.Strategy | None = None) -> int:
        """Batches scored, over all workers."""
        return int(sum_over_workers(self.batches, strategy))
