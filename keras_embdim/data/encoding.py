"""Turning raw categorical columns into contiguous ids, and the dataset container."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

OOV_ID = 0
ENV_VAR = "KERAS_EMBDIM_DATA"


@dataclass
class CTRData:
    """A CTR dataset split in three, every field already mapped to ids.

    Attributes:
        name: dataset name.
        field_names: one name per categorical field.
        vocab_sizes: rows of each field's table (id 0 is the OOV bucket for the
            real-data loaders).
        train, valid, test: `(x, y)` with `x` int32 `[N, F]`, `y` float32 `[N]`.
        value_counts: per field, how often each id occurs in `train`.
        informative_fields: for generated data, the fields the label depends on.
        planted_ranks: for `make_planted_ctr` data, the dims each field needs
            (0 for a noise field): the "rank oracle" allocation.
    """

    name: str
    field_names: list[str]
    vocab_sizes: list[int]
    train: tuple[np.ndarray, np.ndarray]
    valid: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    value_counts: list[np.ndarray] = field(default_factory=list)
    informative_fields: list[int] | None = None
    planted_ranks: list[int] | None = None

    def __post_init__(self):
        if not self.value_counts:
            x = self.train[0]
            self.value_counts = [np.bincount(x[:, f], minlength=n) for f, n in enumerate(self.vocab_sizes)]

    @property
    def num_fields(self) -> int:
        return len(self.field_names)

    def inputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """`[N, F]` ids as the dict of named per-field inputs the zoo models take."""
        return {name: x[:, i] for i, name in enumerate(self.field_names)}

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in ("train", "valid", "test"):
            raise ValueError(f"split must be 'train', 'valid' or 'test'; received {name!r}.")
        return getattr(self, name)

    def dataset(self, split: str = "train", batch_size: int = 1024, shuffle: bool | None = None, seed: int = 0):
        """A `tf.data.Dataset` of `(dict of field ids, label)` batches."""
        import tensorflow as tf

        x, y = self.split(split)
        ds = tf.data.Dataset.from_tensor_slices((self.inputs(x), y))
        if shuffle if shuffle is not None else split == "train":
            ds = ds.shuffle(min(len(y), 200_000), seed=seed, reshuffle_each_iteration=True)
        return ds.batch(batch_size).prefetch(2)

    def describe(self) -> str:
        n = [len(s[1]) for s in (self.train, self.valid, self.test)]
        return (
            f"{self.name}: {self.num_fields} fields, {sum(self.vocab_sizes):,} ids, "
            f"rows train/valid/test = {n[0]:,}/{n[1]:,}/{n[2]:,}, "
            f"positive rate {float(np.mean(self.train[1])):.3f}"
        )


def encode_columns(
    frames: Sequence[pd.DataFrame], columns: Sequence[str], *, min_count: int = 1
) -> tuple[list[np.ndarray], list[int]]:
    """Map each column to contiguous ids learned on `frames[0]` (the training part).

    Id 0 is the OOV bucket (missing values, values unseen in training, values
    seen fewer than `min_count` times); ids 1.. go to values by decreasing
    training frequency, so that the most frequent value has id 1.

    Returns:
        per frame an int32 array `[rows, len(columns)]`, and the vocabulary size
        of each column (1 + number of kept values).
    """
    if min_count < 1:
        raise ValueError(f"`min_count` must be >= 1; received {min_count}.")
    outs = [np.zeros((len(f), len(columns)), dtype=np.int32) for f in frames]
    vocab = []
    for j, col in enumerate(columns):
        counts = frames[0][col].dropna().astype(str).value_counts(sort=False)
        counts = counts[counts >= min_count]
        order = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        mapping = {v: i + 1 for i, (v, _) in enumerate(order)}
        vocab.append(len(mapping) + 1)
        for out, frame in zip(outs, frames):
            s = frame[col]
            ids = s.astype(str).map(mapping)
            ids[s.isna()] = np.nan
            out[:, j] = ids.fillna(OOV_ID).to_numpy(dtype=np.int64)
    return outs, vocab


def split_indices(n: int, seed: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> list[np.ndarray]:
    """A fixed random split of `range(n)` into parts of the given fractions."""
    if abs(sum(fractions) - 1) > 1e-9 or any(f < 0 for f in fractions):
        raise ValueError(f"`fractions` must be non-negative and sum to 1; received {fractions}.")
    perm = np.random.default_rng(seed).permutation(n)
    cuts = np.cumsum([int(round(f * n)) for f in fractions[:-1]])
    return np.split(perm, cuts)


def resolve_path(dataset: str, path: str | os.PathLike | None, marker: str) -> str:
    """The folder holding `dataset`'s files.

    `path` may be the dataset folder itself or a root holding it; otherwise
    `$KERAS_EMBDIM_DATA/<dataset>`. Nothing is ever downloaded.
    """
    candidates = []
    if path is not None:
        path = os.fspath(path)
        candidates += [path, os.path.join(path, dataset)]
    elif os.environ.get(ENV_VAR):
        candidates.append(os.path.join(os.environ[ENV_VAR], dataset))
    for c in candidates:
        if os.path.exists(os.path.join(c, marker)):
            return c
    if not candidates:
        raise FileNotFoundError(
            f"no data path for {dataset!r}: pass path=... or set {ENV_VAR} to the folder that "
            f"holds {dataset}/ (e.g. ../shared/data). Loaders never download."
        )
    raise FileNotFoundError(f"{dataset!r}: no {marker!r} under {candidates}.")
