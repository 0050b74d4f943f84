"""Principal axes of each field's embedding columns (SSEDS `rotate=True`).

SSEDS keeps or drops whole columns of a field's table. A trained table whose
information lies in an r-dimensional subspace spreads that subspace over all
D columns in whatever basis training happened to find, so no r columns hold
it: keeping r of them loses part of it, and the column scores cannot tell a
field of rank 2 from one of rank 8. Rotated to the principal axes of its rows
(the eigenvectors of `E_f^T E_f`, largest first), the field's information is
concentrated in its leading columns, which a column search can then keep.

The rotation does not change what the model computes when the field's output
reaches `Dense` layers only through data-moving layers (`Concatenate`,
`Flatten`, ...): `E_f W_f = (E_f Q_f)(Q_f^T W_f)` with `Q_f` orthogonal, so
the table takes `E_f Q_f` and the kernel rows that multiply the field take
`Q_f^T W_f` (`keras_embdim.export.fold.kernel_rows` finds them). Any other
consumer (an FM inner product between fields rotated differently, pooling,
attention) would change, so such a layer is not rotated: `rotate_layer`
raises and says why.

The optimizer's state of the rotated variables (table and kernels) is rotated
with them (`rotate_optimizer_state`): first moments exactly as the variables
(`m Q`, `Q^T m`), second moments as the mean squared gradient of the new
coordinates would be if the old ones were uncorrelated (`v (Q * Q)`,
`(Q * Q)^T v`, elementwise squares of `Q`): the diagonal is all the optimizer
keeps of the gradient's covariance, so that is the estimate it allows. Zeroing
the state instead (what this module did before) makes the next steps of Adam,
its bias correction long done, move every entry of the rotated variables by
about the learning rate whatever its gradient (`m / sqrt(v)` with both
restarting from zero): a jolt to the columns of noise fields just when the
gate gradients that rank the columns are being summed. Slots of an optimizer
that keeps other state are zeroed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from keras_embdim import _compat, _utils
from keras_embdim import rows as row_ops
from keras_embdim.fields import field_offsets


def principal_axes(gram: np.ndarray) -> np.ndarray:
    """`Q` (`[D, D]`, orthogonal): the eigenvectors of the symmetric `gram`, as columns, by
    decreasing eigenvalue; each column's largest entry (in absolute value) is made positive,
    so the result does not depend on the eigen-solver's signs.

    Example:

    >>> principal_axes(np.diag([1.0, 4.0])).tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    """
    gram = np.asarray(gram, np.float64)
    values, vectors = np.linalg.eigh((gram + gram.T) / 2)
    q = vectors[:, np.argsort(values, kind="stable")[::-1]]
    signs = np.sign(q[np.argmax(np.abs(q), axis=0), np.arange(q.shape[1])])
    return q * np.where(signs == 0, 1.0, signs)


def field_gram(table: Any, start: int, stop: int) -> np.ndarray:
    """`E^T E` (float64, `[D, D]`) of the rows `[start, stop)` of a table variable, chunk by chunk."""
    gram = None
    for a, b in row_ops.chunks(start, stop):
        x = row_ops.read_rows(table, a, b).astype(np.float64)
        gram = x.T @ x if gram is None else gram + x.T @ x
    return gram


def rotate_layer(model: Any, layer: Any, optimizer: Any = None) -> list[np.ndarray]:
    """Rotate every field of `layer` to its principal axes, and the kernel rows that consume it
    back, so that `model` computes what it computed before (to float32 rounding).

    Args:
        model: the functional model `layer` is called in.
        layer: a searchable layer whose mask is still full.
        optimizer: the model's optimizer; its state of the rotated variables is rotated with them
            (`rotate_optimizer_state`).

    Returns:
        The rotation `Q_f` of each field.

    Raises:
        ValueError: the layer's output reaches something other than Dense layers through
            data-moving layers (the rotation would change the model); nothing is changed.
    """
    from keras_embdim.export.fold import kernel_rows

    found, why = kernel_rows(model, layer)
    if why is not None:
        raise ValueError(
            f"layer '{layer.name}' cannot be rotated to its principal axes: {why}. The rotation keeps the "
            "model's function only where the layer's output reaches Dense layers through Concatenate, Flatten, "
            "Reshape and the like; search without rotate=True."
        )
    table = layer.embedding_variable
    starts = field_offsets(layer.field_vocab_sizes)
    ranges = [(int(a), int(a + n)) for a, n in zip(starts, layer.field_vocab_sizes)]
    rotations = [principal_axes(field_gram(table, a, b)) for a, b in ranges]
    _rotate_table_rows(table, ranges, rotations)
    kernels = [(k.dense.kernel, [idx for position in k.rows for idx in position],
                [rotations[f] for position in k.rows for f in range(len(position))]) for k in found]
    for kernel, rows, qs in kernels:
        _rotate_kernel_rows(kernel, rows, qs)
    if optimizer is not None:
        rotate_optimizer_state(optimizer, table, ranges, rotations, kernels)
    return rotations


def rotate_optimizer_state(optimizer: Any, table: Any, ranges: list, rotations: list, kernels: list) -> None:
    """Rotate the optimizer's state of `table` (field f's rows `ranges[f]` times `rotations[f]`) and
    of each `(kernel, rows, rotations)` (the rows `rows[i]` of `kernel` times `rotations[i]^T`), as
    `rotate_layer` rotates the variables themselves (module docstring): first moments alike,
    second moments by the elementwise squares of the rotations; any other slot is zeroed."""
    parts = [(table, lambda v, qs: _rotate_table_rows(v, ranges, qs), rotations)]
    parts += [(kernel, lambda v, qs, rows=rows: _rotate_kernel_rows(v, rows, qs), qs) for kernel, rows, qs in kernels]
    for variable, rotate, qs in parts:
        first, second = _compat.optimizer_moment_slots(optimizer, variable)
        for slot in first:
            rotate(slot, qs)
        for slot in second:
            rotate(slot, [q * q for q in qs])
        moved = {id(slot) for slot in first + second}
        for slot in _compat.optimizer_slots(optimizer, variable):
            if id(slot) not in moved:
                slot.assign(tf.zeros(slot.shape, slot.dtype))


def _rotate_table_rows(table: Any, ranges: list, rotations: list) -> None:
    """Rows `[a, b)` of `table` (a variable or a slot of one) times `rotations[f]`, chunk by chunk."""
    for (start, stop), q in zip(ranges, rotations):
        for a, b in row_ops.chunks(start, stop):
            rows = row_ops.read_rows(table, a, b).astype(np.float64)
            row_ops.assign_rows(table, a, b, (rows @ q).astype(np.float32))


def _rotate_kernel_rows(kernel: Any, rows: list, rotations: list) -> None:
    """`kernel[rows[i]] = rotations[i]^T @ kernel[rows[i]]` (the kernel of a Dense, or a slot of one)."""
    value = _utils.to_numpy(kernel).astype(np.float64)
    for idx, q in zip(rows, rotations):
        value[idx] = q.T @ value[idx]
    kernel.assign(value.astype(np.float32))
