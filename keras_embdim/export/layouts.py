"""Per-value layouts: each value keeps its own number of leading columns.

All fields of a layer are packed into one table: global row `g = start_f + id`
(fields one after another, as in the training table), and value `g` keeps its
first `d_g` columns. Every layout stores

- `values`: `[sum_g d_g + 1]`, the kept prefixes one after another and one
  trailing zero (the slot that the XLA lookup's removed columns read),

plus an index that gives each row's start in `values` and its size:

- `"offsets"` (fastest): `base`, int32 per block of `B` rows, and `local`, uint8
  per row (with a sentinel row at the end): `start(g) = base[g >> s] + local[g]`
  and `d_g = start(g + 1) - start(g)`. `B` is the largest power of two up to 16
  with `(B - 1) * D <= 255` (16 for D = 16): `1 + 4 / B` bytes per row (for wide
  rows uint16 local offsets, whichever is smaller).
- `"runs"`: the maximal runs of consecutive rows of one size (`run_row` int32,
  `run_size` uint8, `run_start` int32; a lookup is a binary search): 9 bytes per
  run. Tiny when sizes follow the id order, as they do for vocabularies sorted
  by frequency (`keras.layers.StringLookup` sorts them so).
- `"planes"` (smallest for scattered sizes): sizes written as
  `size_offset + size_scale * code` (the smallest size and the gcd of the
  steps), the codes' `b` bits stored as bit planes: per block of 64 rows, `b`
  uint64 words (bit j of word k = bit k of row j's code) and the block's int32
  start. The sizes before a row are `sum_k 2^k popcount(plane_k & below)`:
  `b / 8 + 1 / 16` bytes per row, a lookup of two gathers and word arithmetic
  and popcounts on the `[N]` words of each plane.
- `"sparse"` (smallest when one size dominates, as 0 does after a per-value
  search at a low budget): rows at one `common` size are only marked, the
  others ("listed") get a planes index of their own. Per block of 64 rows a
  uint64 word marks the listed rows and an int32 counts the listed rows
  before the block; the listed rows' sizes are bit planes as above (their own
  offset, scale and bits). With `r` listed rows before row `g`,
  `start(g) = common * (g - r) + (sizes of the first r listed rows)`:
  `3 / 16 + m / n * (b / 8 + 1 / 16)` bytes per row for `m` listed of `n`.

- `"head"` (the default when it fits; not under XLA): every row's first `m`
  columns (`base_width`) in a dense `[n, m]` table `base` (rows narrower
  zero-padded); the rows wider than `m` are keyed in a hash table. Those of
  size `head_from` or more (the head) are stored whole (`W` the widest size,
  narrower head rows zero-padded) in a `[H + 1, W]` table `head` (a zero row
  last), read by one row gather; the others (the tail) keep their columns
  past `m` in `values`. Stored per keyed row: its step from the previous key
  (`key_steps`, uint8, uint16 or int32, whichever takes the fewest bytes with
  a filler key over each longer gap) and its size code (`key_codes`: size -
  m, `head_from - m` for a head row, two per byte while below 16). Served, a
  hash table (`head_index`, filled from them when the SavedModel loads) gives
  a head row its place in `head` and a tail row its start and size in
  `values`, every other row `head`'s zero row. A lookup is one hash lookup
  and one row gather from `head` for every row; the rows outside the head
  that hold anything (`tf.where`: the tail rows, and with a base every one)
  read `base` and `values` and are written over their places
  (`tf.dynamic_stitch`): no index is decoded at serving time. `m`
  and `head_from` leave the fewest rows in the tail within `max_overhead`
  (`head_plan`). After a per-value search the widest rows are few but take
  most lookups (the frequent values keep the most columns), so most of a
  request costs a hash lookup and a row gather. The hash table lives in
  memory only (docs/reference/methods.md: its size).

`layout="auto"` takes the fastest layout whose bytes stay within
`max_overhead` x the kept values' bytes, else the smallest (why: docs/reference/methods.md);
the head layout only when its rows hold at least `HEAD_MIN_SHARE` of the
kept values, and not for an XLA-compiled lookup (the hash table and the
split are not XLA ops; `choose_layout`).

The index and the values are built apart (`pack_index`, then the values row
chunk by row chunk, `keras_embdim.export.compact`), so a table is never copied
whole. Lookups (`read_rows`: `start_and_size`, then `ranged_rows` or
`prefix_rows`; the head layout's hash table from `lookup_index`) use
standard TensorFlow ops only, so a SavedModel built on them serves without
keras_embdim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import tensorflow as tf

LAYOUTS = ("head", "offsets", "runs", "planes", "sparse")
# how a lookup reads the rows once it has their starts and sizes (`prefix_rows`, `ranged_rows`)
READS = ("auto", "prefix", "ranged")  # auto: ranged for the head layout's other rows, else prefix
# preference when several fit the byte limit (measured: benchmarks/serving.py)
SPEED_ORDER = ("head", "offsets", "runs", "planes", "sparse")
# static shapes (XLA): layouts whose lookup keeps the shape of the request at every step
STATIC_ORDER = ("offsets", "runs", "planes", "sparse")
# "auto" takes the head layout only when the widest rows hold at least this share of the kept values
HEAD_MIN_SHARE = 0.05
PLANE_SHIFT = 6  # planes: 64 rows per block (one uint64 word per bit)


@dataclass
class PackedTable:
    """Numpy arrays of one layer's per-value compact table (all its fields).

    `arrays["values"]` may be missing while the values are being filled
    (`pack_index`); every other array is the layout's index.
    """

    layout: str
    arrays: dict = field(repr=False)  # name -> np.ndarray, in a fixed order
    field_starts: np.ndarray  # int32 [F]: global row of each field's id 0
    num_rows: int
    output_dim: int
    kept: int  # sum of the sizes
    bits: int = 0  # planes layout: bits per code
    shift: int = 0  # offsets layout: log2 rows per block
    size_offset: int = 0  # planes layout: size = size_offset + size_scale * code
    size_scale: int = 1
    common: int = 0  # sparse layout: the size of the unlisted rows
    head_rows: int = 0  # head layout: rows of size `head_from` or more, stored in `arrays["head"]`
    head_width: int = 0  # head layout: the widest size W, the head table's width (whole rows, narrower ones padded)
    head_from: int = 0  # head layout: the smallest size in the head
    head_kept: int = 0  # head layout: the head rows' own sizes, summed
    base_width: int = 0  # head layout: m, every row's first m columns in `arrays["base"]`
    tail_kept: int = 0  # head layout: the values in `values` (the tail rows' columns past m), without the zero slot

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()))

    @property
    def values_size(self) -> int:
        """Length of `arrays["values"]`: the values it holds and the trailing zero slot."""
        return (self.tail_kept if self.layout == "head" else self.kept) + 1

    @property
    def overhead(self) -> float:
        """Bytes over the kept values' own bytes (`4 * kept`)."""
        return self.nbytes / (4 * self.kept) if self.kept else float("inf")

    @property
    def meta(self) -> dict:
        """The static arguments of `start_and_size` / `prefix_rows`."""
        return dict(layout=self.layout, bits=self.bits, shift=self.shift, size_offset=self.size_offset,
                    size_scale=self.size_scale, common=self.common, head_rows=self.head_rows,
                    head_width=self.head_width, head_from=self.head_from, base_width=self.base_width,
                    tail_kept=self.tail_kept)


def _offsets_params(D: int) -> tuple[int, type]:
    """(log2 rows per block, local offset dtype) of the fewest bytes per row."""
    best = None
    for dtype in (np.uint8, np.uint16, np.uint32):
        top = np.iinfo(dtype).max
        s = 4
        while s > 0 and ((1 << s) - 1) * D > top:
            s -= 1
        cost = np.dtype(dtype).itemsize + 4 / (1 << s)
        if best is None or cost < best[0]:
            best = (cost, s, dtype)
    return best[1], best[2]


def _index_dtype(total: int):
    return np.int32 if total < 2**30 else np.int64  # start + zero slot must not overflow


_CHUNK = 1 << 18  # rows per step of the index construction (a multiple of every block size); its
# int64 temporaries (2 MB each) stay small beside the tables of a 1e6-row field


def _chunks(n: int):
    for a in range(0, n, _CHUNK):
        yield a, min(a + _CHUNK, n)


def _histogram(sizes: np.ndarray, output_dim: int) -> np.ndarray:
    """How many rows have each size `0..D` (chunk by chunk: no whole-vocabulary temporary)."""
    counts = np.zeros(output_dim + 1, np.int64)
    for a, b in _chunks(sizes.shape[0]):
        counts += np.bincount(sizes[a:b], minlength=output_dim + 1)
    return counts


def _affine(histogram: np.ndarray) -> tuple[int, int, int]:
    """`(offset, scale, bits)` with every present size `offset + scale * code`, code < 2^bits."""
    present = np.flatnonzero(histogram)
    if present.size == 0:
        return 0, 1, 0
    offset = int(present.min())
    steps = present - offset
    scale = int(np.gcd.reduce(steps)) if steps.any() else 1
    return offset, scale, int((present.max() - offset) // scale).bit_length()


def _num_runs(sizes: np.ndarray) -> int:
    """Maximal runs of equal sizes (chunk by chunk)."""
    n = sizes.shape[0]
    if n == 0:
        return 1
    runs = 1
    for a, b in _chunks(n):
        lo = max(a - 1, 0)
        runs += int(np.count_nonzero(sizes[lo + 1 : b] != sizes[lo : b - 1]))
    return runs


def _planes_bytes(rows: int, bits: int, isz: int) -> int:
    """A planes index over `rows` rows: per 64 rows a start and `bits` uint64 words."""
    return (-(-max(rows, 1) >> PLANE_SHIFT)) * (isz + 8 * bits)


def _sparse_plan(histogram: np.ndarray, isz: int) -> tuple[int, int]:
    """`(common size, index bytes)` of the sparse layout: the size left unlisted that makes the index smallest."""
    n = int(histogram.sum())
    mark = (-(-max(n, 1) >> PLANE_SHIFT)) * (8 + 4)  # a uint64 word and an int32 count per 64 rows
    best = (0, mark + _planes_bytes(1, 0, isz))  # no rows
    for i, size in enumerate(np.flatnonzero(histogram)):
        listed = histogram.copy()
        listed[size] = 0
        cost = mark + _planes_bytes(n - int(histogram[size]) + 1, _affine(listed)[2], isz)
        if i == 0 or cost < best[1]:  # ties: the smallest size
            best = (int(size), cost)
    return best


def _static_bytes(sizes: np.ndarray, output_dim: int) -> dict[str, int]:
    """Bytes of each single-index layout (`STATIC_ORDER`): values and index."""
    n, D = sizes.shape[0], output_dim
    histogram = _histogram(sizes, D)
    total = int(histogram @ np.arange(D + 1))
    isz = np.dtype(_index_dtype(total + 1)).itemsize
    values = 4 * (total + 1)
    shift, local_t = _offsets_params(D)
    local = np.dtype(local_t).itemsize
    size_b = 1 if D <= 255 else 2
    bits = _affine(histogram)[2]
    blocks = -(-max(n, 1) >> PLANE_SHIFT)
    return {
        "offsets": values + local * (n + 1) + isz * (-(-(n + 1) >> shift)),
        "runs": values + _num_runs(sizes) * (4 + size_b + isz),
        "planes": values + blocks * (isz + 8 * bits),
        "sparse": values + _sparse_plan(histogram, isz)[1],
    }


@dataclass(frozen=True)
class HeadPlan:
    """The shape of a head layout (`head_plan`); `nbytes` its bytes (values, tables and keys)."""

    base_width: int  # m: every row's first m columns in `base` ([n, m], rows narrower zero-padded)
    head_from: int  # rows of this size or more: the head, `[H + 1, W]` (whole rows), found by the hash table
    step_dtype: type  # the keys' steps (`_KEY_STEP_DTYPES`), with filler keys over longer gaps
    keys: int  # keys stored (the rows wider than m, and the fillers)
    head_rows: int
    tail_rows: int  # rows wider than m and narrower than head_from: their values in `values`
    nbytes: int
    head_kept: int  # the head rows' own kept values (their sizes, summed)

    @property
    def nibbles(self) -> bool:
        """Whether the keys' size codes are stored two per byte (`in_nibbles`)."""
        return in_nibbles(self.head_from - self.base_width)


_KEY_STEP_DTYPES = (np.uint8, np.uint16, np.int32)


def in_nibbles(head_code: int) -> bool:
    """Whether a head layout stores its keys' size codes two per byte (the first in the low half):
    when every code, up to `head_code` (= head_from - base_width, a head row's), is below 16."""
    return head_code < 16


def _key_gaps(sizes: np.ndarray, base_width: int) -> tuple[int, dict]:
    """`(rows wider than base_width, {step dtype: filler keys})`: the steps from one such row to the
    next (the first from row -1) above a dtype's largest take a filler key every that many rows."""
    count, last = 0, -1
    fillers = {np.uint8: 0, np.uint16: 0, np.int32: 0}
    for a, b in _chunks(sizes.shape[0]):
        rows = a + np.flatnonzero(sizes[a:b] > base_width)
        if rows.size:
            steps = np.diff(rows, prepend=last).astype(np.int64) - 1
            for dtype in (np.uint8, np.uint16):
                fillers[dtype] += int((steps // np.iinfo(dtype).max).sum())
            count, last = count + rows.size, int(rows[-1])
    return count, fillers


def head_plan(sizes: np.ndarray, output_dim: int, max_overhead: float = 1.10) -> HeadPlan:
    """The head layout of the fewest rows outside `base` and `head` that keeps within `max_overhead`
    x the kept bytes (else the smallest).

    For each base width m (every row's first m columns, dense) and each `head_from` (rows of that
    size or more whole, padded to the widest size W), the bytes are `base`, `head` with its zero
    row, the other rows' values and one key per row wider than m (its step from the previous key,
    in the dtype of fewest bytes with a filler key over each longer gap, and its size code, half a
    byte while the codes stay below 16). The rows between m and `head_from` (the tail) are the ones whose
    lookups take the split (`_head_layout_rows`): the plan keeps them fewest.
    """
    n = int(sizes.shape[0])
    histogram = _histogram(sizes, output_dim)
    width = int(np.flatnonzero(histogram).max(initial=0))
    kept = int(histogram @ np.arange(histogram.size))
    limit = max_overhead * 4 * kept
    at = np.arange(histogram.size)
    present = [int(x) for x in np.flatnonzero(histogram)]
    fitting, smallest = None, None
    for m in range(width + 1):
        base = 4 * n * m
        if base > limit and smallest is not None:
            break  # wider bases only grow
        count, fillers = _key_gaps(sizes, m) if m < width else (0, {d: 0 for d in _KEY_STEP_DTYPES})
        # head_from: a size that rows have (any between two such sizes is the same split)
        for head_from in [x for x in present if x > m] if m < width else [width]:
            head = int(histogram[head_from:].sum()) if m < width else 0
            tail = histogram[m + 1 : head_from]
            tail_kept = int(tail @ (at[m + 1 : head_from] - m))
            nibbles = in_nibbles(head_from - m)
            best_keys = None
            for dtype in _KEY_STEP_DTYPES:
                keys = count + fillers[dtype]
                kb = keys * np.dtype(dtype).itemsize + ((keys + 1) // 2 if nibbles else keys)
                if best_keys is None or kb < best_keys[0]:
                    best_keys = (kb, dtype, keys)
            nbytes = base + 4 * width * (head + 1) + 4 * (tail_kept + 1) + best_keys[0]
            plan = HeadPlan(m, head_from, best_keys[1], best_keys[2], head, int(tail.sum()), nbytes,
                            int(histogram[head_from:] @ at[head_from:]) if m < width else 0)
            if smallest is None or nbytes < smallest.nbytes:
                smallest = plan
            if nbytes <= limit:
                if fitting is None or (plan.tail_rows, plan.nbytes) < (fitting.tail_rows, fitting.nbytes):
                    fitting = plan
                break  # a larger head_from only moves rows to the tail
    return fitting or smallest


def head_keys(key_steps: np.ndarray) -> np.ndarray:
    """The global rows of a head layout's keys from its `key_steps` (numpy; `head_index` does it at load)."""
    return np.cumsum(key_steps, dtype=np.int64) - 1


def head_codes(key_codes: np.ndarray, keys: int, nibbles: bool) -> np.ndarray:
    """The keys' size codes (int64) from a head layout's `key_codes` (numpy; `head_index` does it at load)."""
    if not nibbles:
        return key_codes[:keys].astype(np.int64)
    pairs = np.stack([key_codes & 15, key_codes >> 4], 1).reshape(-1)
    return pairs[:keys].astype(np.int64)


def layout_bytes(sizes: np.ndarray, output_dim: int, max_overhead: float = 1.10) -> dict[str, int]:
    """Bytes each layout would take for these per-row sizes (float32 values, without packing).

    `max_overhead` matters to the head layout only (`head_plan`: which rows it takes).
    """
    sizes = np.asarray(sizes)
    return {**_static_bytes(sizes, output_dim), "head": head_plan(sizes, output_dim, max_overhead).nbytes}


def choose_layout(sizes: np.ndarray, output_dim: int, max_overhead: float = 1.10, static: bool = False) -> str:
    """The fastest layout within `max_overhead` x the kept bytes, else the smallest.

    The head layout is a candidate when its head rows (`head_plan`) hold at least
    `HEAD_MIN_SHARE` of the kept values: a per-value search gives the widest
    sizes to the values it found most important, the frequent ones, and then
    those few rows take most lookups; without such a head most lookups would take
    its split. `static=True` (an XLA-compiled lookup) leaves it out: its lookup
    splits the request by row kind (shapes known only at run time) and reads a
    hash table.
    """
    return layout_choice(sizes, output_dim, max_overhead, static)[0]


def layout_choice(sizes: np.ndarray, output_dim: int, max_overhead: float = 1.10,
                  static: bool = False) -> tuple[str, dict[str, int]]:
    """`(choose_layout(...), bytes of each layout it weighed)` from one pass over the sizes
    (`"head"` is among the bytes unless `static`)."""
    sizes = np.asarray(sizes)
    nbytes = _static_bytes(sizes, output_dim)
    histogram = _histogram(sizes, output_dim)
    kept = int(histogram @ np.arange(output_dim + 1))
    limit = max_overhead * 4 * kept
    order = STATIC_ORDER
    if not static:
        plan = head_plan(sizes, output_dim, max_overhead)
        nbytes["head"] = plan.nbytes
        # the values read by the head's row gather (every one when all rows are in the base: one gather)
        whole = kept if plan.base_width >= int(np.flatnonzero(histogram).max(initial=0)) else plan.head_kept
        if kept and whole >= HEAD_MIN_SHARE * kept:
            order = SPEED_ORDER
    for name in order:
        if nbytes[name] <= limit:
            return name, nbytes
    return min(order, key=lambda k: (nbytes[k], order.index(k))), nbytes


def check_layout(value: str, jit_compile: bool = False) -> str:
    """`value` if it is `"auto"` or names a layout that the lookup can run, else a ValueError
    naming the argument (the head layout splits each request at run time: not under XLA)."""
    if value != "auto" and value not in LAYOUTS:
        raise ValueError(f"`value_layout` must be 'auto' or one of {LAYOUTS}; received value_layout={value!r}.")
    if value == "head" and jit_compile:
        raise ValueError("value_layout='head' splits each request at run time and looks rows up in a hash table, "
                         "which XLA cannot compile: use "
                         f"jit_compile=False, or one of {STATIC_ORDER}.")
    return value


def check_read(value: str) -> str:
    """`value` if it names a row reader (`READS`), else a ValueError naming the argument."""
    if value not in READS:
        raise ValueError(f"`value_read` must be one of {READS}; received value_read={value!r}.")
    return value


def reads_ranged(read: str, layout: str) -> bool:
    """Whether a lookup of `layout` reads its rows with `ranged_rows` under the reader `read`: `"auto"`
    takes it for the head layout (its other rows are the narrow, rarely looked-up ones: only their
    kept values are read; measured faster than `prefix_rows` there, benchmarks/serving.py) and
    `prefix_rows` for the single-index layouts (traffic hits their widest rows)."""
    return check_read(read) == "ranged" or (read == "auto" and layout == "head")


def check_sizes(sizes, num_rows: int, output_dim: int) -> np.ndarray:
    """`sizes` as an integer `[num_rows]` array in `[0, output_dim]` (int32 kept as is), or a
    ValueError naming them."""
    sizes = np.asarray(sizes)
    if sizes.shape != (num_rows,) or not (np.issubdtype(sizes.dtype, np.integer) or np.all(np.mod(sizes, 1) == 0)):
        raise ValueError(
            f"sizes must be {num_rows} integers in [0, {output_dim}], got shape {sizes.shape} of {sizes.dtype}."
        )
    if not np.issubdtype(sizes.dtype, np.integer):
        sizes = sizes.astype(np.int32)
    if num_rows and (sizes.min() < 0 or sizes.max() > output_dim):
        raise ValueError(
            f"sizes must be {num_rows} integers in [0, {output_dim}], got values in [{sizes.min()}, {sizes.max()}]."
        )
    return sizes


class _MarkWriter:
    """A mark index (`mark`, `rank`) of a stream of flags, fed in chunks of any length: per block
    of 64 rows a uint64 word (bit j = row j's flag) and an int32 count of the flagged rows before
    the block.

    Args:
        rows: rows the index must answer for (blocks past the rows written
            count every flagged row).
    """

    def __init__(self, rows: int):
        blocks = -(-max(rows, 1) >> PLANE_SHIFT)
        self.mark = np.zeros(blocks, np.uint64)
        self.rank = np.zeros(blocks, np.int32)
        self.row = self.count = 0
        self.pending = np.zeros(0, bool)

    def add(self, flags: np.ndarray) -> None:
        if self.pending.size:
            flags = np.concatenate([self.pending, flags])
        whole = (flags.shape[0] >> PLANE_SHIFT) << PLANE_SHIFT
        self._write(flags[:whole])
        self.pending = np.array(flags[whole:], bool)

    def close(self) -> tuple[np.ndarray, np.ndarray]:
        self._write(self.pending)
        self.rank[-(-self.row >> PLANE_SHIFT) :] = self.count
        return self.mark, self.rank

    def _write(self, flags: np.ndarray) -> None:
        n = flags.shape[0]
        if not n:
            return
        k0, m = self.row >> PLANE_SHIFT, -(-n >> PLANE_SHIFT)
        grid = np.zeros(m << PLANE_SHIFT, np.uint64)
        grid[:n] = flags
        grid = grid.reshape(m, -1)
        self.mark[k0 : k0 + m] = (grid << np.arange(1 << PLANE_SHIFT, dtype=np.uint64)).sum(1, dtype=np.uint64)
        per_block = grid.sum(1, dtype=np.int64)
        self.rank[k0 : k0 + m] = self.count + np.cumsum(per_block) - per_block
        self.count += int(per_block.sum())
        self.row += n


class _PlaneWriter:
    """The planes index (`base`, `planes`) of a stream of sizes, fed in chunks of any length.

    Args:
        rows: rows the index must answer for (blocks of 64 are allocated for
            them; blocks past the rows written start at the total).
        offset, scale, bits: every size is `offset + scale * code`, `code < 2^bits`.
        itype: dtype of the starts.
    """

    def __init__(self, rows: int, offset: int, scale: int, bits: int, itype):
        blocks = -(-max(rows, 1) >> PLANE_SHIFT)
        self.base = np.zeros(blocks, itype)
        self.planes = np.zeros((blocks, bits), np.uint64) if bits else None
        self.offset, self.scale, self.bits = offset, scale, bits
        self.row = self.running = 0
        self.pending = np.zeros(0, np.int64)  # fewer than 64 sizes, not yet a whole block

    def add(self, sizes: np.ndarray) -> None:
        if self.pending.size:
            sizes = np.concatenate([self.pending, sizes])
        whole = (sizes.shape[0] >> PLANE_SHIFT) << PLANE_SHIFT
        self._write(sizes[:whole])
        self.pending = np.array(sizes[whole:], np.int64)

    def close(self) -> dict:
        self._write(self.pending)
        self.base[-(-self.row >> PLANE_SHIFT) :] = self.running  # blocks past the last row written
        return {"base": self.base, **({"planes": self.planes} if self.bits else {})}  # one size: no planes

    def _write(self, sizes: np.ndarray) -> None:
        """Sizes of the rows from `self.row` (a block start) on."""
        n = sizes.shape[0]
        if not n:
            return
        rows_per = 1 << PLANE_SHIFT
        k0, m = self.row >> PLANE_SHIFT, -(-n >> PLANE_SHIFT)
        ends = np.cumsum(sizes, dtype=np.int64)
        self.base[k0 : k0 + m] = self.running + (ends - sizes)[::rows_per]
        if self.bits:
            codes = np.zeros(m * rows_per, np.uint64)
            codes[:n] = (sizes - self.offset) // self.scale
            grid = codes.reshape(m, rows_per)
            weights = np.arange(rows_per, dtype=np.uint64)
            for k in range(self.bits):  # bit j of plane k's word = bit k of row j's code
                self.planes[k0 : k0 + m, k] = (((grid >> np.uint64(k)) & np.uint64(1)) << weights).sum(
                    1, dtype=np.uint64)
        self.running += int(ends[-1])
        self.row += n


def pack_index(
    sizes: np.ndarray,
    output_dim: int,
    *,
    field_sizes: Sequence[int] | None = None,
    layout: str = "auto",
    max_overhead: float = 1.10,
) -> PackedTable:
    """The index of a per-value layout, without its values (`arrays` lacks `"values"`).

    Built a million rows at a time: besides the index itself (at most about 1.3
    bytes per row; the head layout also a one-byte-per-row copy of the sizes
    for its tail), no temporary spans the whole vocabulary.

    Args:
        sizes: `[n]` integers in `[0, output_dim]`, all fields' rows one after another.
        output_dim: D.
        field_sizes: rows per field (default: one field).
        layout: `"auto"` or one of `LAYOUTS`.
        max_overhead: bytes allowed over the kept values' bytes, for `"auto"` and for the
            head layout's padding (`head_from`).
    """
    n = int(np.asarray(sizes).shape[0]) if np.ndim(sizes) == 1 else -1
    sizes = check_sizes(sizes, max(n, 0), output_dim)
    D = int(output_dim)
    field_sizes = [n] if field_sizes is None else [int(v) for v in field_sizes]
    if sum(field_sizes) != n:
        raise ValueError(f"field_sizes must add up to the table's {n} rows, got {sum(field_sizes)}.")
    if layout == "auto":
        layout = choose_layout(sizes, D, max_overhead)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'auto' or one of {LAYOUTS}, got {layout!r}.")
    if n >= 2**31 - 1:
        raise ValueError(f"tables of {n} rows (>= 2**31) are not supported.")
    histogram = _histogram(sizes, D)
    total = int(histogram @ np.arange(D + 1))
    itype = _index_dtype(total + 1)
    size_t = np.uint8 if D <= 255 else np.uint16
    arrays: dict = {}
    bits = shift = offset = common = head_rows = head_width = head_from = head_kept = base_width = tail_kept = 0
    scale = 1

    def starts_of(a, b, running):
        """Start of rows a..b (b excluded) and of row b, given the start of row a."""
        st = np.empty(b - a + 1, np.int64)
        st[0] = running
        np.cumsum(sizes[a:b], out=st[1:])
        st[1:] += running
        return st

    if layout == "offsets":
        shift, local_t = _offsets_params(D)
        blocks = -(-(n + 1) >> shift)
        base = np.empty(blocks, itype)
        local = np.empty(n + 1, local_t)
        running = 0
        for a, b in _chunks(n):
            st = starts_of(a, b, running)[:-1]
            base[a >> shift : -(-b >> shift)] = st[:: 1 << shift]
            local[a:b] = st - base[np.arange(a, b) >> shift]
            running = int(st[-1]) + int(sizes[b - 1])
        if (n >> shift) < blocks and n % (1 << shift) == 0:
            base[n >> shift] = running  # the sentinel row opens a block of its own
        local[n] = running - int(base[n >> shift])
        arrays["base"], arrays["local"] = base, local
    elif layout == "runs":
        rows, run_sizes, run_starts, running = [], [], [], 0
        for a, b in _chunks(n):
            chunk = sizes[a:b]
            first = np.flatnonzero(np.diff(chunk)) + 1
            if a == 0 or chunk[0] != sizes[a - 1]:
                first = np.concatenate([[0], first])
            st = starts_of(a, b, running)
            rows.append((a + first).astype(np.int32))
            run_sizes.append(chunk[first].astype(size_t))
            run_starts.append(st[first].astype(itype))
            running = int(st[-1])
        if not rows:
            rows, run_sizes, run_starts = [np.zeros(1, np.int32)], [np.zeros(1, size_t)], [np.zeros(1, itype)]
        arrays["run_row"] = np.concatenate(rows)
        arrays["run_size"] = np.concatenate(run_sizes)
        arrays["run_start"] = np.concatenate(run_starts)
    elif layout == "planes":
        offset, scale, bits = _affine(histogram)
        writer = _PlaneWriter(n, offset, scale, bits, itype)
        for a, b in _chunks(n):
            writer.add(sizes[a:b])
        arrays.update(writer.close())
    elif layout == "sparse":  # rows of the common size unmarked, the listed ones in planes of their own
        common = _sparse_plan(histogram, np.dtype(itype).itemsize)[0]
        listed_histogram = histogram.copy()
        listed_histogram[common] = 0
        offset, scale, bits = _affine(listed_histogram)
        marks = _MarkWriter(n)
        # + 1: unlisted rows after the last listed one
        writer = _PlaneWriter(n - int(histogram[common]) + 1, offset, scale, bits, itype)
        for a, b in _chunks(n):
            listed = sizes[a:b] != common
            marks.add(listed)
            writer.add(sizes[a:b][listed])
        arrays["mark"], arrays["rank"] = marks.close()
        arrays.update(writer.close())
    else:  # head: `base` (m columns of every row), the head rows whole, the others in `values`; keys for all
        plan = head_plan(sizes, D, max_overhead)
        m, head_from = plan.base_width, plan.head_from
        head_width = int(np.flatnonzero(histogram).max(initial=0))
        head_rows, head_kept, base_width = plan.head_rows, plan.head_kept, m
        tail_kept = int(sum(int(histogram[s]) * (s - m) for s in range(m + 1, head_from)))
        top = np.iinfo(plan.step_dtype).max
        steps = np.empty(plan.keys, plan.step_dtype)
        codes = np.zeros(plan.keys, np.uint8 if D < 256 else np.uint16)
        at, last = 0, -1
        for a, b in _chunks(n if m < head_width else 0):
            rows = a + np.flatnonzero(sizes[a:b] > m)
            if not rows.size:
                continue
            gaps = np.diff(rows, prepend=last).astype(np.int64)
            fill = (gaps - 1) // top  # filler keys before each row, every `top` rows
            real = at + np.cumsum(fill + 1) - 1  # where each row's own key goes
            steps[at : real[-1] + 1] = top
            steps[real] = gaps - fill * top
            codes[real] = np.minimum(sizes[rows], head_from) - m  # the head rows all at `head_code`
            at, last = int(real[-1]) + 1, int(rows[-1])
        assert at == plan.keys, (at, plan.keys)
        if plan.nibbles:
            codes = np.append(codes, np.zeros(codes.size % 2, codes.dtype)).astype(np.uint8)
            codes = codes[0::2] | (codes[1::2] << 4)
        arrays = {"key_steps": steps, "key_codes": codes}
    field_starts = np.concatenate([[0], np.cumsum(field_sizes)[:-1]]).astype(np.int32)
    return PackedTable(layout, arrays, field_starts, n, D, total, bits, shift, offset, scale, common,
                       head_rows, head_width, head_from, head_kept, base_width, tail_kept)


def split_rows(dense: np.ndarray, sizes: np.ndarray, packed: PackedTable) -> dict:
    """The parts of a chunk of rows in a head layout: `{"base": [k, m], "head": [h, W], "values": [t]}`.

    Args:
        dense: `[k, D]` rows, their kept prefixes then zeros (any dtype).
        sizes: their sizes.
        packed: the head layout's `PackedTable` (`base_width`, `head_from`, `head_width`).
    """
    m, W, head_from = packed.base_width, packed.head_width, packed.head_from
    out = {"base": dense[:, :m]}
    if m >= W:  # every row whole in `base`
        return {**out, "head": dense[:0, :W], "values": dense[:0, 0]}
    wide = sizes >= head_from
    tail = (sizes > m) & ~wide
    rest = dense[tail, m:W]
    keep = np.arange(m, W)[None, :] < sizes[tail, None]
    return {**out, "head": dense[wide, :W], "values": rest[keep]}


def pack(
    table: np.ndarray,
    sizes: np.ndarray | Sequence[np.ndarray],
    *,
    field_sizes: Sequence[int] | None = None,
    layout: str = "auto",
    max_overhead: float = 1.10,
) -> PackedTable:
    """Pack a whole in-memory `[n, D]` table whose row `g` keeps its first `sizes[g]` columns.

    The exporter packs from the layer's variable in row chunks instead
    (`keras_embdim.export.compact`); this is the reference for tests and tools.

    Args:
        table: the full table, all fields' rows one after another.
        sizes: `[n]` integers in `[0, D]`, or one array per field.
        field_sizes: rows per field (default: one field, or the lengths of
            `sizes` when it is given per field).
        layout: `"auto"` or one of `LAYOUTS`.
        max_overhead: bytes allowed over the kept values' bytes, for `"auto"` and for the
            head layout's padding (`head_from`).
    """
    table = np.asarray(table, dtype=np.float32)
    if table.ndim != 2:
        raise ValueError(f"table must be [rows, dim], got shape {table.shape}.")
    n, D = table.shape
    if not isinstance(sizes, np.ndarray) and len(sizes) and np.ndim(sizes[0]) == 1:
        if field_sizes is None:
            field_sizes = [len(s) for s in sizes]
        sizes = np.concatenate([np.asarray(s) for s in sizes]) if len(sizes) else np.zeros(0)
    sizes = check_sizes(sizes, n, D)
    packed = pack_index(sizes, D, field_sizes=field_sizes, layout=layout, max_overhead=max_overhead)
    keep = np.arange(D)[None, :] < sizes[:, None]
    if packed.layout == "head":  # `base`, the head rows (padded) in a table of their own with a zero row, the rest
        parts = split_rows(np.where(keep, table, 0), sizes, packed)
        head = np.concatenate([parts["head"], np.zeros((1, parts["head"].shape[1]), np.float32)])
        base = {"base": parts["base"]} if packed.base_width else {}
        packed.arrays = {"values": np.append(parts["values"], np.float32(0)), "head": head, **base, **packed.arrays}
        return packed
    packed.arrays = {"values": np.concatenate([table[keep], np.zeros(1, np.float32)]), **packed.arrays}
    return packed


def unpack_sizes(packed: PackedTable) -> np.ndarray:
    """The per-row sizes back from a `PackedTable` (numpy; tests and reports).

    A head layout's head rows come back at `head_width`, the width they are
    stored at (a row narrower than that is padded with zeros).
    """
    a, n = packed.arrays, packed.num_rows
    g = np.arange(n)
    if packed.layout == "offsets":
        s = packed.shift
        start = a["base"][np.arange(n + 1) >> s].astype(np.int64) + a["local"]
        return np.diff(start)
    if packed.layout == "runs":
        r = np.searchsorted(a["run_row"], g, side="right") - 1
        return a["run_size"][r].astype(np.int64)
    if packed.layout == "planes":
        return _plane_sizes(a, g, packed)
    if packed.layout == "sparse":
        listed = _marked_np(a["mark"], g)
        sizes = np.full(n, packed.common, np.int64)
        sizes[listed] = _plane_sizes(a, np.arange(int(listed.sum())), packed)
        return sizes
    if packed.layout != "head":
        raise ValueError(f"unknown layout {packed.layout!r}.")
    sizes = np.full(n, packed.base_width, np.int64)
    keys, codes = keyed_rows(packed)
    sizes[keys] = np.where(codes == packed.head_from - packed.base_width, packed.head_width, codes + packed.base_width)
    return sizes


def keyed_rows(packed: PackedTable) -> tuple[np.ndarray, np.ndarray]:
    """A head layout's keyed rows (those wider than `base_width`) and their size codes (numpy;
    the hash table's keys, `head_index`), filler keys left out."""
    steps = packed.arrays["key_steps"]
    keys = head_keys(steps)
    codes = head_codes(packed.arrays["key_codes"], steps.size, in_nibbles(packed.head_from - packed.base_width))
    return keys[codes > 0], codes[codes > 0]


def _marked_np(mark: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Whether rows `g` are marked in a mark index (numpy; the reference of `_marked`)."""
    return ((mark[g >> PLANE_SHIFT] >> (g & ((1 << PLANE_SHIFT) - 1)).astype(np.uint64)) & np.uint64(1)).astype(bool)


def _plane_sizes(a: dict, g: np.ndarray, packed: PackedTable) -> np.ndarray:
    """Sizes of the rows `g` of a planes index (numpy, bit by bit: the reference of the lookups)."""
    code = np.zeros(g.size, np.int64)
    if packed.bits:
        words = a["planes"][g >> PLANE_SHIFT]  # [n, bits]
        bit = (words >> (g & ((1 << PLANE_SHIFT) - 1)).astype(np.uint64)[:, None]) & np.uint64(1)
        code = (bit.astype(np.int64) << np.arange(packed.bits)).sum(1)
    return packed.size_offset + packed.size_scale * code


def unpack(packed: PackedTable) -> np.ndarray:
    """The masked `[n, D]` table back (numpy; tests). A head layout's stored rows: `base`'s
    padding and the head rows' padding are zeros, so it is the same table."""
    out = np.zeros((packed.num_rows, packed.output_dim), np.float32)
    if packed.layout == "head":
        m, W = packed.base_width, packed.head_width
        if m:
            out[:, :m] = packed.arrays["base"]
        keys, codes = keyed_rows(packed)
        wide = codes == packed.head_from - m
        out[keys[wide], :W] = packed.arrays["head"][:-1]
        tail = keys[~wide]
        keep = np.arange(m, W)[None, :] < (codes[~wide] + m)[:, None]
        rest = np.zeros((tail.size, W - m), np.float32)
        rest[keep] = packed.arrays["values"][:-1]
        out[tail, m:W] = rest
        return out
    sizes = unpack_sizes(packed)
    keep = np.arange(packed.output_dim)[None, :] < sizes[:, None]
    out[keep] = packed.arrays["values"][:-1]
    return out


def start_and_size(arrays: dict, g: tf.Tensor, *, layout: str, bits: int = 0, shift: int = 0,
                   size_offset: int = 0, size_scale: int = 1, common: int = 0, head_rows: int = 0,
                   head_width: int = 0, head_from: int = 0, base_width: int = 0,
                   tail_kept: int = 0) -> tuple[tf.Tensor, tf.Tensor]:
    """`(start, size)` in `values` of the global rows `g` (`[N]` int32), from a layout's index.

    Both are int32, or int64 when the values need 64-bit offsets. Takes a
    `PackedTable.meta` of a single-index layout (`STATIC_ORDER`); the head layout
    (`head_rows` ... `tail_kept`) finds its rows in a hash table and is read with `read_rows`.
    """
    index = arrays["run_start"] if layout == "runs" else arrays.get("base")
    itype = tf.int64 if index is not None and index.dtype == tf.int64 else tf.int32
    if layout == "offsets":
        # separate gathers: measured faster than one gather of [g, g + 1] pairs
        nxt = g + 1
        start = tf.cast(tf.gather(arrays["base"], tf.bitwise.right_shift(g, shift)), itype) + tf.cast(
            tf.gather(arrays["local"], g), itype
        )
        end = tf.cast(tf.gather(arrays["base"], tf.bitwise.right_shift(nxt, shift)), itype) + tf.cast(
            tf.gather(arrays["local"], nxt), itype
        )
        return start, end - start
    if layout == "runs":
        r = tf.searchsorted(arrays["run_row"], g, side="right", out_type=tf.int32) - 1
        size = tf.cast(tf.gather(arrays["run_size"], r), itype)
        start = tf.cast(tf.gather(arrays["run_start"], r), itype) + tf.cast(g - tf.gather(arrays["run_row"], r), itype) * size
        return start, size
    if layout == "planes":
        return _plane_start_and_size(arrays, g, itype, bits, size_offset, size_scale)
    if layout != "sparse":  # the head layout reads its rows with `read_rows`
        raise ValueError(f"start_and_size: layout must be one of {STATIC_ORDER}, got {layout!r}.")
    listed, r = _marked(arrays["mark"], arrays["rank"], g)
    return _listed_start_and_size(arrays, g - r if common > 0 else None, listed, r, itype, bits, size_offset,
                                  size_scale, common)


def _marked(mark, rank, g: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """`(flag, r)` of rows `g` (int32) in a mark index: whether each is marked (int32 0/1) and
    how many marked rows come before it."""
    local = tf.cast(tf.bitwise.bitwise_and(g, (1 << PLANE_SHIFT) - 1), tf.uint64)
    block = tf.bitwise.right_shift(g, PLANE_SHIFT)
    block = block[:, None]  # gather_nd: faster than gather for scalar slices (as in `prefix_rows`)
    word = tf.gather_nd(mark, block)
    below = tf.bitwise.left_shift(tf.ones_like(local), local) - 1
    r = tf.gather_nd(rank, block) + tf.cast(tf.raw_ops.PopulationCount(x=tf.bitwise.bitwise_and(word, below)),
                                            tf.int32)
    flag = tf.cast(tf.bitwise.bitwise_and(tf.bitwise.right_shift(word, local), 1), tf.int32)
    return flag, r


def _listed_start_and_size(arrays: dict, unlisted, listed, t, itype, bits: int, size_offset: int,
                           size_scale: int, common: int):
    """`(start, size)` of rows in a layout whose unlisted rows all have size `common`: `unlisted`
    unlisted rows before each, `t` rows of the planes before it (`listed`: whether it is listed,
    0/1; None: every row is)."""
    before, size = _plane_start_and_size(arrays, t, itype, bits, size_offset, size_scale)
    start = before + tf.cast(unlisted, itype) * common if common > 0 else before
    if listed is None:
        return start, size
    listed = tf.cast(listed, itype)
    return start, common + listed * (size - common) if common > 0 else listed * size


def head_index(key_steps, key_codes, *, head_rows: int, head_from: int, base_width: int,
               tail_kept: int) -> tf.lookup.StaticHashTable:
    """The head layout's served index: a hash table from each keyed row (a row wider than
    `base_width`; int32 global row, the running sum of `key_steps` minus 1) to its `head_value`,
    and to `head_rows` (`head`'s zero row, nothing past `base`) for every other row.

    Filled from the `key_steps` and `key_codes` variables when the table is initialized
    (in a SavedModel: when it loads, after the variables are restored), so the keys are
    stored once, as steps and size codes in the variables, and the values not at all.
    """
    code_bits = _code_bits(head_from - base_width)
    # int64 values (and keys: the CPU table has no int32 -> int64 kernel) when a tail start needs them
    dtype = tf.int64 if head_rows + 1 + ((tail_kept + 1) << code_bits) >= 2**31 else tf.int32
    init = _HeadIndexInit(key_steps, key_codes, head_rows=head_rows, head_code=head_from - base_width,
                          code_bits=code_bits, dtype=dtype)
    return tf.lookup.StaticHashTable(init, tf.constant(head_rows, dtype))


def lookup_index(arrays: dict, meta: dict) -> tf.lookup.StaticHashTable | None:
    """The hash table a lookup of this layout reads (`head_index`; built from `arrays`, tensors or
    variables), or None: only a head layout with keyed rows (`base_width < head_width`) has one."""
    if meta["layout"] != "head" or meta["base_width"] >= meta["head_width"]:
        return None
    return head_index(arrays["key_steps"], arrays["key_codes"], head_rows=meta["head_rows"],
                      head_from=meta["head_from"], base_width=meta["base_width"], tail_kept=meta["tail_kept"])


def _code_bits(head_code: int) -> int:
    """Bits of a tail row's size code (1 .. head_code - 1) in its hash value."""
    return max(1, (head_code - 1).bit_length())


class _HeadIndexInit(tf.lookup.KeyValueTensorInitializer):
    """Initializes a head layout's table from its keys' steps and size codes when it runs
    (not when built: the saved graph holds no copy of them).

    A key of code `head_code` is a head row: its value is its place in `head` (the head rows
    in row order). A key of code `0 < c < head_code` is a tail row: `head_rows + 1 + (start <<
    code_bits | c)`, `start` its first value in `values` (the tail rows' codes summed before
    it, in row order). Filler keys (code 0) are left out.
    """

    def __init__(self, key_steps, key_codes, *, head_rows: int, head_code: int, code_bits: int, dtype):
        self._steps, self._codes = key_steps, key_codes
        self._head_rows, self._head_code, self._code_bits = head_rows, head_code, code_bits
        super().__init__(tf.zeros([0], dtype), tf.zeros([0], dtype))

    def initialize(self, table):
        steps = tf.convert_to_tensor(self._steps)
        count = int(steps.shape[0])
        keys = tf.cumsum(tf.cast(steps, tf.int32)) - 1
        packed = tf.cast(tf.convert_to_tensor(self._codes), tf.int32)
        if in_nibbles(self._head_code):  # two codes per byte, the first in the low half
            packed = tf.reshape(tf.stack([tf.bitwise.bitwise_and(packed, 15), tf.bitwise.right_shift(packed, 4)], 1),
                                [-1])
        codes = packed[:count]
        real = codes > 0
        dtype = self.value_dtype
        keys, codes = tf.cast(tf.boolean_mask(keys, real), dtype), tf.boolean_mask(codes, real)
        codes = tf.cast(codes, dtype)
        head = tf.equal(codes, self._head_code)
        place = tf.cumsum(tf.cast(head, dtype)) - 1
        size = tf.where(head, tf.zeros_like(codes), codes)
        start = tf.cumsum(size, exclusive=True)
        shifted = tf.bitwise.left_shift(start, tf.cast(self._code_bits, dtype))
        tail = self._head_rows + 1 + tf.bitwise.bitwise_or(shifted, size)
        values = tf.where(head, place, tail)
        if count == 0:  # no key (the table refuses an empty import): a key no row has
            keys, values = tf.constant([-1], dtype), tf.constant([self._head_rows], dtype)
        return tf.raw_ops.LookupTableImportV2(table_handle=table.resource_handle, keys=keys, values=values)


def read_rows(arrays: dict, g: tf.Tensor, width: int, *, layout: str, ranged: bool = False, static: bool = False,
              index: tf.lookup.StaticHashTable | None = None, bits: int = 0, shift: int = 0, size_offset: int = 0,
              size_scale: int = 1, common: int = 0, head_rows: int = 0, head_width: int = 0, head_from: int = 0,
              base_width: int = 0, tail_kept: int = 0) -> tf.Tensor:
    """`[N, width]` rows of the global rows `g` (`[N]` int32), in the storage dtype: each row's
    kept prefix, then zeros.

    Args:
        arrays: a `PackedTable`'s arrays as tensors or variables.
        g: global rows.
        width: columns to return (wider rows are cut).
        layout, bits, shift, size_offset, size_scale, common, head_rows, head_width, head_from,
            base_width, tail_kept: the `PackedTable.meta`.
        ranged: read with `ranged_rows` instead of `prefix_rows` (not with `static`); the head
            layout: its tail rows.
        static: keep every intermediate at the request's shape (XLA; not the head layout).
        index: the head layout only: `head_index(...)` of its arrays, built once (a table is a
            resource: the SavedModel must track it).
    """
    if layout == "head":
        if (index is None and base_width < head_width) or static:
            raise ValueError("read_rows: the head layout needs `index` (`lookup_index` of its arrays) and "
                             f"static=False; got index={index!r}, static={static}.")
        return _head_layout_rows(arrays, g, width, index, ranged=ranged, head_rows=head_rows, head_width=head_width,
                                 head_from=head_from, base_width=base_width, tail_kept=tail_kept)
    start, size = start_and_size(arrays, g, layout=layout, bits=bits, shift=shift, size_offset=size_offset,
                                 size_scale=size_scale, common=common)
    return (ranged_rows if ranged else prefix_rows)(arrays["values"], start, size, width)


def _to_width(rows: tf.Tensor, width: int) -> tf.Tensor:
    """`[N, w]` rows cut or zero-padded to `[N, width]`."""
    w = int(rows.shape[-1])
    if w == width:  # the tensor itself: no slice op
        return rows
    return rows[:, :width] if w > width else tf.pad(rows, [[0, 0], [0, width - w]])


def _head_layout_rows(arrays: dict, g: tf.Tensor, width: int, index, *, ranged: bool, head_rows: int,
                      head_width: int, head_from: int, base_width: int, tail_kept: int) -> tf.Tensor:
    """`read_rows` of the head layout: every row by one hash lookup and one row gather from `head`
    (a row not in the head reads its zero row); then the rows outside the head that hold anything
    (the tail rows, and with `base` every one), picked out by `tf.where`: their first `m` columns
    from `base`, the rest from `values` (start and size from their hash values), written over
    their places by `tf.dynamic_stitch` (later indices win: all rows, then these). The stitch
    copies rows whole; `tf.tensor_scatter_nd_update` wrote them element by element and took
    about twice its op time at batch 512 (step stats of a Frappe export).

    No index is decoded at serving time: the hash table holds every keyed row's place or
    start and size. After a per-value search the head rows are few but take most lookups
    (`docs/results/serving.md`), so the split and the reads of `base` and `values` run for
    the others only.
    """
    m, W, H = base_width, head_width, head_rows
    if m >= W:  # every row whole in `base` (or every row empty)
        return _to_width(tf.gather(arrays["base"], g) if W else tf.zeros(tf.stack([tf.shape(g)[0], 0]),
                                                                          arrays["values"].dtype), width)
    v = index.lookup(tf.cast(g, index.key_dtype))  # place in `head`; `H` (its zero row) for rows not keyed; tail: above
    rows = tf.gather(arrays["head"], tf.minimum(v, H))
    if m or tail_kept:
        at = tf.where(v >= H if m else v > H)  # with `base`, every row outside the head reads it
        parts = [tf.gather(arrays["base"], tf.gather_nd(g, at))] if m else []
        if tail_kept:
            code = tf.gather_nd(v, at) - (H + 1)
            code = tf.maximum(code, 0) if m else code  # rows not keyed: start 0, size 0
            code_bits = _code_bits(head_from - m)
            start = tf.bitwise.right_shift(code, tf.cast(code_bits, code.dtype))
            size = tf.bitwise.bitwise_and(code, (1 << code_bits) - 1)
            if ranged:
                parts.append(ranged_rows(arrays["values"], start, size, W - m))
            else:
                parts.append(_to_width(prefix_rows(arrays["values"], start, size, min(head_from - 1, W) - m), W - m))
        other = parts[0] if len(parts) == 1 else tf.concat(parts, 1)
        places = tf.range(tf.shape(rows)[0])
        rows = tf.dynamic_stitch([places, tf.cast(at[:, 0], tf.int32)], [rows, _to_width(other, W)])
    return _to_width(rows, width)


def _plane_start_and_size(arrays: dict, g: tf.Tensor, itype, bits: int, size_offset: int, size_scale: int):
    """`(start, size)` of the rows `g` of a planes index (`base`, `planes`).

    Plane by plane on `[N]` words (`tf.unstack`), not on the `[N, bits]` words with
    the row's shift broadcast along the planes: a binary op that broadcasts a
    `[N, 1]` operand over a short last axis takes several times the op time of
    the same elements unbroadcast (measured on the serving graph's step stats)."""
    local = tf.bitwise.bitwise_and(g, (1 << PLANE_SHIFT) - 1)
    block = tf.bitwise.right_shift(g, PLANE_SHIFT)
    start = tf.cast(tf.gather(arrays["base"], block), itype)
    local_i = tf.cast(local, itype)
    before = size = None
    if bits:
        words = tf.unstack(tf.gather(arrays["planes"], block), num=bits, axis=1)  # bits x [N] uint64
        shift64 = tf.cast(local, tf.uint64)
        below = tf.bitwise.left_shift(tf.ones_like(shift64), shift64) - 1  # rows before, in this block
        one = tf.constant(1, tf.uint64)

        def weighted(x, k):  # x * 2^k
            return x if k == 0 else x * tf.constant(1 << k, itype)

        # the sum of the codes before the row, and the row's own code
        before = tf.add_n([weighted(tf.cast(tf.raw_ops.PopulationCount(x=tf.bitwise.bitwise_and(w, below)), itype), k)
                           for k, w in enumerate(words)])
        size = tf.add_n([weighted(tf.cast(tf.bitwise.bitwise_and(tf.bitwise.right_shift(w, shift64), one), itype), k)
                         for k, w in enumerate(words)])
        if size_scale != 1:
            before, size = before * size_scale, size * size_scale
    if size_offset:
        start += local_i * size_offset
        size = size + size_offset if size is not None else tf.fill(tf.shape(g), tf.constant(size_offset, itype))
    if before is not None:
        start += before
    if size is None:
        size = tf.zeros_like(start)
    return start, size


def ranged_rows(values, start: tf.Tensor, size: tf.Tensor, width: int) -> tf.Tensor:
    """`[N, width]` rows: row n holds `values[start_n : start_n + size_n]`, then zeros.

    Reads only the kept values of the looked-up rows (`tf.ragged.range` builds
    their flat index, one element gather reads them, `RaggedTensorToTensor`
    pads the rows), at the price of the ragged ops' fixed cost. Faster than
    `prefix_rows` when the looked-up rows are narrow against `width` (requests
    spread over rare values); slower when traffic hits the widest rows, as it
    does after every per-value search (frequent values keep the most columns).
    Not for XLA (ragged shapes).
    """
    splits_t = tf.int64 if start.dtype == tf.int64 else tf.int32
    ranges = tf.ragged.range(start, start + size, row_splits_dtype=splits_t)
    kept = tf.gather(values, ranges.flat_values)
    rows = tf.RaggedTensor.from_row_splits(kept, ranges.row_splits, validate=False)
    return rows.to_tensor(shape=[None, width])


def prefix_rows(values, start: tf.Tensor, size: tf.Tensor, width: int) -> tf.Tensor:
    """`[N, width]` rows as `ranged_rows`, in static shapes: one `[N, width]` index and one element gather.

    The default reader (and the one XLA needs): its cost is `N x width`
    element reads and a few ops, whatever the sizes.

    Column j of row n reads `values[start_n + j]` if `j < size_n`, else the
    trailing zero slot: `idx = min(start + CT[size], zero)` with `CT[s, j] = j`
    for `j < s`, else `zero` (one row gather and two elementwise ops; measured
    faster than a `where`).
    """
    zero = int(values.shape[0]) - 1
    np_itype = np.int64 if start.dtype == tf.int64 else np.int32
    j = np.arange(width)
    ct = np.where(j[None, :] < np.arange(width + 1)[:, None], j[None, :], zero).astype(np_itype)
    idx = tf.minimum(start[:, None] + tf.gather(tf.constant(ct), tf.cast(tf.minimum(size, width), tf.int32)), zero)
    return tf.gather_nd(values, idx[..., None])  # gather_nd: faster than gather for scalar slices


def packed_lookup(
    arrays: dict,
    ids,
    *,
    layout: str,
    field_starts: np.ndarray,
    output_dim: int,
    multi_field: bool,
    bits: int = 0,
    shift: int = 0,
    size_offset: int = 0,
    size_scale: int = 1,
    common: int = 0,
    head_rows: int = 0,
    head_width: int = 0,
    head_from: int = 0,
    base_width: int = 0,
    tail_kept: int = 0,
    ranged: bool = False,
    static: bool = False,
    index: tf.lookup.StaticHashTable | None = None,
) -> tf.Tensor:
    """Rebuild `[..., D]` (single field) or `[..., F, D]` embeddings from a packed table.

    Args:
        arrays: the `PackedTable.arrays`, as tensors or variables (`values`
            may be float16, or int8 with a float16 `scales` per row).
        ids: local ids, `[...]` for a single field or `[..., F]` for several.
        layout, field_starts, output_dim, bits, shift, size_offset, size_scale, common, head_rows,
            head_width, head_from, base_width, tail_kept: from the `PackedTable`.
        multi_field: whether the last axis of `ids` indexes fields.
        ranged: read the rows with `ranged_rows` (not under XLA) instead of `prefix_rows`.
        static: request-shaped intermediates only (needed under XLA; `read_rows`).
        index: the head layout's `head_index(...)` of its arrays (`ValueLookup` builds it).
    """
    ids = tf.cast(ids, tf.int32)
    shape = tf.shape(ids)
    g = ids + tf.constant(field_starts, tf.int32) if multi_field else ids
    g = tf.reshape(g, [-1])
    out = read_rows(arrays, g, output_dim, layout=layout, ranged=ranged, static=static, index=index, bits=bits,
                    shift=shift, size_offset=size_offset, size_scale=size_scale, common=common, head_rows=head_rows,
                    head_width=head_width, head_from=head_from, base_width=base_width, tail_kept=tail_kept)
    if out.dtype != tf.float32:  # float16 or int8 storage (keras_embdim.export.quantize)
        out = tf.cast(out, tf.float32)
    if "scales" in arrays:  # int8: one float16 scale per row
        out = out * tf.cast(tf.gather(arrays["scales"], g), tf.float32)[:, None]
    return tf.reshape(out, tf.concat([shape, [output_dim]], 0))
