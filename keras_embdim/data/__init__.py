"""Datasets: a synthetic CTR generator and loaders for real CTR data."""

from keras_embdim.data.encoding import ENV_VAR, CTRData, encode_columns, split_indices
from keras_embdim.data.loaders import (
    load_avazu,
    load_criteo,
    load_dataset,
    load_frappe,
    load_movielens,
)
from keras_embdim.data.synthetic import make_planted_ctr, make_synthetic_ctr

__all__ = [
    "CTRData",
    "ENV_VAR",
    "encode_columns",
    "load_avazu",
    "load_criteo",
    "load_dataset",
    "load_frappe",
    "load_movielens",
    "make_planted_ctr",
    "make_synthetic_ctr",
    "split_indices",
]
