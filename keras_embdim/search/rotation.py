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

The optimizer's state of the rotated variables (table and kernels) is reset:
moments of the old basis do not describe the new one (Adam's second moments do
not rotate). Its cost: a few steps of larger updates of those variables (their
slots restart from zero while the step count, and so Adam's bias correction,
goes on). Rotating the moments with the variables instead (first moments as
the variables, second moments by the squares of the rotation) was measured on
the planted ranks and not kept: better where fields are alike, worse for
`score="fisher"` where they differ, the setting the rotation is for
(`docs/results/planted.md`, "Rotation with the optimizer's moments rotated").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from keras_embdim import _utils
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


def why_not_rotatable(model: Any, layers: list) -> str | None:
    """Why a layer of `layers` cannot be rotated in `model` (its output reaches something other
    than Dense layers through data-moving layers), naming it; None if every one can."""
    from keras_embdim.export.fold import kernel_rows

    for layer in layers:
        _, why = kernel_rows(model, layer)
        if why is not None:
            return f"layer '{layer.name}' cannot be rotated to its principal axes: {why}"
    return None


def require_rotatable(model: Any, layers: list, component: str, option: str = "rotate=True") -> None:
    """Raise before training, with the model unchanged, if a layer of `layers` cannot be rotated
    in `model` (`why_not_rotatable`). `component` names the search in the message (`"PMEPruner"`,
    `"SingleShotPruner"`), `option` the argument that asked for the rotation."""
    why = why_not_rotatable(model, layers)
    if why is not None:
        raise ValueError(f"{component}({option}): {why}. Search without {option}.")


def rotate_layer(model: Any, layer: Any, optimizer: Any = None) -> list[np.ndarray]:
    """Rotate every field of `layer` to its principal axes, and the kernel rows that consume it
    back, so that `model` computes what it computed before (to float32 rounding).

    Args:
        model: the functional model `layer` is called in.
        layer: a searchable layer whose mask is still full.
        optimizer: the model's optimizer; its state of the rotated variables is reset.

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
    rotations = []
    for start, n in zip(starts, layer.field_vocab_sizes):
        q = principal_axes(field_gram(table, int(start), int(start + n)))
        for a, b in row_ops.chunks(int(start), int(start + n)):
            rows = row_ops.read_rows(table, a, b).astype(np.float64)
            row_ops.assign_rows(table, a, b, (rows @ q).astype(np.float32))
        rotations.append(q)
    kernels = []
    for k in found:
        kernel = _utils.to_numpy(k.dense.kernel).astype(np.float64)
        for position in k.rows:
            for f, idx in enumerate(position):
                kernel[idx] = rotations[f].T @ kernel[idx]
        k.dense.kernel.assign(kernel.astype(np.float32))
        kernels.append(k.dense.kernel)
    if optimizer is not None:
        _utils.reset_optimizer_state(optimizer, [table, *kernels])
    return rotations
