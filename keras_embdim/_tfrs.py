"""TensorFlow Recommenders: what keras_embdim needs to know of a `tfrs.Model`."""

from __future__ import annotations

import inspect
from typing import Any


def takes_whole_batch(model: Any) -> bool:
    """`compute_loss(inputs, training)` (tfrs.Model), not Keras' `(x, y, y_pred, ...)`."""
    try:
        params = inspect.signature(model.compute_loss).parameters
    except (TypeError, ValueError):
        return False
    return "inputs" in params and "y_pred" not in params


