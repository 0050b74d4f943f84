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
