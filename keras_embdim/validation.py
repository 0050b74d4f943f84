"""Argument checks: every bad argument gets one clear error naming it and the expected value."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))


def check_fraction(name: str, value: Any, *, allow_zero: bool = False, of: str = "the embedding parameters") -> float:
    """A fraction such as `budget`: `0 < value <= 1` (or `0 <= value` with `allow_zero`) `of` something."""
    interval = "[0, 1]" if allow_zero else "(0, 1]"
    if not _is_number(value):
        raise TypeError(f"`{name}` must be a number in {interval}; received {value!r}.")
    value = float(value)
    low_ok = value >= 0 if allow_zero else value > 0
    if math.isnan(value) or not low_ok or value > 1:
        raise ValueError(
            f"`{name}` must be a fraction of {of} in {interval}; received {name}={value!r}."
        )
    return value


def check_int(name: str, value: Any, low: int = 0) -> int:
    """An integer `>= low` (booleans are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"`{name}` must be an integer >= {low}; received {name}={value!r}.")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    """True or False (numpy's too); anything else, 0 and 1 included, is refused."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be True or False; received {name}={value!r}.")
    return bool(value)


def check_verbose(value: Any) -> int:
    """`verbose`: True, False or an integer >= 0 (0: silent)."""
    return int(value) if isinstance(value, (bool, np.bool_)) else check_int("verbose", value, 0)


def check_names(name: str, value: Any) -> list[str] | None:
    """None, or a list (tuple) of non-empty strings such as layer names; one bare string is refused
    (`list("emb")` would be three one-letter names)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not all(
            isinstance(v, str) and v for v in value):
        raise ValueError(f"`{name}` must be a list of names (e.g. {name}=['embedding']) or None; received "
                         f"{name}={value!r}.")
    return list(value)


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    """One of `allowed`."""
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {tuple(allowed)}; received {name}={value!r}.")
    return value


def check_number(name: str, value: Any, *, low: float | None = None, strict: bool = False) -> float:
    """A finite number, `>= low` (or `> low` with `strict`)."""
    if not _is_number(value) or not math.isfinite(float(value)):
        raise ValueError(f"`{name}` must be a finite number; received {name}={value!r}.")
    value = float(value)
    if low is not None and (value <= low if strict else value < low):
        raise ValueError(f"`{name}` must be a finite number {'>' if strict else '>='} {low:g}; received {name}={value!r}.")
    return value


def check_model(value: Any) -> Any:
    """A Keras model or layer of the Keras the package runs on (a `tf_keras` model under Keras 3, or the
    reverse, is refused too: the message names the Keras in use)."""
    from keras_embdim._compat import keras

    if not isinstance(value, keras.layers.Layer):
        raise TypeError(f"`model` must be a Keras model or layer (of the Keras keras_embdim runs on: "
                        f"{keras.__name__}); received a {type(value).__name__}.")
    return value


def is_parameter_server(strategy: Any) -> bool:
    """Whether `strategy` is a `ParameterServerStrategy` (`fit` then runs no batch-level callback)."""
    import tensorflow as tf

    ps_classes = tuple({tf.distribute.experimental.ParameterServerStrategy,
                        getattr(tf.distribute, "ParameterServerStrategy", tf.distribute.experimental.ParameterServerStrategy)})
    return isinstance(strategy, ps_classes)


def check_not_parameter_server(component: str, strategy: Any, why: str) -> None:
    """Refuse `ParameterServerStrategy` with an error that names `component` and what to do instead.

    Args:
        component: the callback, e.g. "SingleShotPruner (SSEDS)".
        strategy: the model's `tf.distribute` strategy.
        why: what in `component` needs more than the strategy gives.
    """
    if is_parameter_server(strategy):
        raise ValueError(
            f"{component} does not run under ParameterServerStrategy: {why}. Search under MirroredStrategy or "
            "MultiWorkerMirroredStrategy (or on one machine, on a sample of the data), then train the searched "
            f"model under ParameterServerStrategy without {component.split(' ')[0]}: its dimensions are ordinary "
            "weights of the layers, and ked.rebuild_mixed(model) gives plain tables (docs/guides/distribution.md)."
        )
