"""Storage precision of exported tables: float32, float16, or int8 with a per-row scale.

The math, apart from Keras and from the layouts that use it:

- `"float16"`: values rounded to half precision (2 B each; relative error
  below 2^-11 for normal values, see `numpy.float16`);
- `"int8"`: row r is stored as `q = round(x / s_r)` in [-127, 127] with
  `s_r = max |x_r| / 127` rounded to float16 (2 B per row: its relative
  rounding, below 2^-11, is small against int8's own), and read back as
  `q * s_r`: absolute error at most about `s_r / 2` per entry.

`dequantize(quantize(x))` is what the served model computes, so an export's
verification compares the served predictions with the model run on exactly
these values, and the precision's own effect is reported apart.
"""

from __future__ import annotations

import numpy as np

DTYPES = ("float32", "float16", "int8")


def check_dtype(table_dtype: str) -> str:
    if table_dtype not in DTYPES:
        raise ValueError(f"`table_dtype` must be one of {DTYPES}; received table_dtype={table_dtype!r}.")
    return table_dtype


def itemsize(table_dtype: str) -> int:
    """Bytes of one stored value (an int8 row's float16 scale apart)."""
    return {"float32": 4, "float16": 2, "int8": 1}[check_dtype(table_dtype)]


def row_scales(rows: np.ndarray) -> np.ndarray:
    """Per-row int8 scale `max |x| / 127` in float16 (1 for an all-zero row, which reads back as 0)."""
    peak = np.abs(np.asarray(rows, np.float32)).max(axis=-1, initial=0.0)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float16)
    # a scale too small for float16 (rows below ~1e-5) would round to 0: keep the smallest normal one
    return np.maximum(scale, np.float16(np.finfo(np.float16).tiny))


def quantize(rows: np.ndarray, table_dtype: str, scales: np.ndarray | None = None):
    """`(stored, scales)` of a `[n, k]` array (`scales` is None unless int8).

    For int8, `scales` may be given (per row, e.g. computed from a row's kept
    prefix when the stored array is a flat buffer of several rows' values).
    """
    rows = np.asarray(rows, np.float32)
    check_dtype(table_dtype)
    if table_dtype == "float32":
        return rows, None
    if table_dtype == "float16":
        return rows.astype(np.float16), None
    if scales is None:
        scales = row_scales(rows)
    q = np.clip(np.round(rows / scales.astype(np.float32)[..., None]), -127, 127).astype(np.int8)
    return q, scales


def dequantize(stored: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
    """The float32 values the serving graph computes from `quantize`'s output."""
    out = np.asarray(stored).astype(np.float32)
    return out * scales.astype(np.float32)[..., None] if scales is not None else out


def round_trip(table: np.ndarray, table_dtype: str) -> np.ndarray:
    """`dequantize(quantize(table))`, row by row (int8 scales per row)."""
    return dequantize(*quantize(table, table_dtype))
