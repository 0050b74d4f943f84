"""Second implementations (numpy) that tests compare the library against."""

from __future__ import annotations

import numpy as np

from keras_embdim.fields import field_offsets
from keras_embdim.mask import DimensionMask


def masked_lookup(table: np.ndarray, mask: DimensionMask, ids: np.ndarray, multi_field: bool) -> np.ndarray:
    """The masked training lookup: rows of the concatenated table times the field's 0/1 mask."""
    ids = np.asarray(ids, dtype=np.int64)
    keep = mask.as_float()
    if not multi_field:
        return table[ids] * keep[0]
    return table[ids + field_offsets(mask.vocab_sizes)] * keep


def prefix_lookup(table: np.ndarray, sizes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per-value sizes: row g keeps its first sizes[g] columns."""
    table = np.asarray(table)
    mask = np.arange(table.shape[1]) < np.asarray(sizes)[np.asarray(rows)][..., None]
    return table[rows] * mask


def split_export_bytes(table: np.ndarray, sizes: list, D: int, layout: str = "auto", static: bool = False) -> tuple:
    """`(bytes, layout of the packed fields or None)` of a per-value export by hand: the fields
    `dense_field_plan` stores whole (each row at the field's widest size, `group_widths` padding),
    the others packed as `layouts.pack` packs them."""
    from keras_embdim.export import compact, layouts

    dense = compact.dense_field_plan(sizes, D, layout=layout, static=static)
    vocab = np.array([len(s) for s in sizes])
    widths = np.array([int(np.max(s, initial=0)) for s in sizes])
    whole = int(compact.group_widths(widths[dense], vocab[dense]) @ vocab[dense]) if dense.any() else 0
    if dense.all():
        return 4 * whole, None
    starts = np.r_[0, np.cumsum(vocab)]
    rest = np.flatnonzero(~dense)
    rows = np.concatenate([table[starts[f]:starts[f + 1]] for f in rest])
    rest_sizes = [sizes[f] for f in rest]
    if layout == "auto":
        layout = layouts.choose_layout(np.concatenate(rest_sizes), D, static=static)
    packed = layouts.pack(rows, rest_sizes, field_sizes=vocab[rest], layout=layout)
    return 4 * whole + packed.nbytes, packed.layout
