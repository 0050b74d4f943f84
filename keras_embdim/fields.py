"""Field layout of a multi-field table: fields' rows one after another."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def field_offsets(vocab_sizes: Sequence[int]) -> np.ndarray:
    """Row of each field's id 0 in the concatenated table."""
    return np.concatenate([[0], np.cumsum(np.asarray(vocab_sizes, np.int64))[:-1]]).astype(np.int64)
