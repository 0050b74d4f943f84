"""PNG plots of searched dimensions (matplotlib, imported only when plotting)."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from keras_embdim.searchable import find_searchable_layers


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError("plots need matplotlib: pip install 'keras-embdim[dev]' or matplotlib") from err
    return plt


def plot_size_vs_frequency(
    model: Any, value_counts: Sequence[np.ndarray], path: str | os.PathLike, *, layer: str | None = None
) -> str:
    """Per-value sizes against how often each value occurs, one panel per field.

    Args:
        model: a model with a per-value searchable layer (PME, AMTL).
        value_counts: per field, the training count of each id (`CTRData.value_counts`).
        path: PNG file to write.
        layer: name of the layer (default: the first per-value layer).

    Returns:
        the path written.
    """
    layers = [l for l in find_searchable_layers(model) if l.dimension_mask().granularity == "value"]
    if layer is not None:
        layers = [l for l in layers if l.name == layer]
    if not layers:
        raise ValueError("plot_size_vs_frequency: the model has no searchable layer with per-value sizes.")
    mask = layers[0].dimension_mask()
    if len(value_counts) != mask.num_fields:
        raise ValueError(f"value_counts must have one array per field ({mask.num_fields}); got {len(value_counts)}.")
    plt = _pyplot()
    cols = min(4, mask.num_fields)
    rows = -(-mask.num_fields // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for f, ax in enumerate(axes.ravel()):
        if f >= mask.num_fields:
            ax.axis("off")
            continue
        counts = np.asarray(value_counts[f])
        sizes = mask.value_sizes[f]
        ax.scatter(np.maximum(counts, 0.5), sizes, s=4, alpha=0.4)
        ax.set_xscale("log")
        ax.set_ylim(-0.5, mask.output_dim + 0.5)
        ax.set_title(f"{mask.field_names[f]} (mean {sizes.mean():.1f})", fontsize=8)
        ax.set_xlabel("training count", fontsize=7)
        ax.set_ylabel("dims", fontsize=7)
    fig.tight_layout()
    path = os.fspath(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_dims_per_field(model: Any, path: str | os.PathLike) -> str:
    """Kept dims per field (mean per value for per-value layers), one bar each."""
    plt = _pyplot()
    names, dims = [], []
    for l in find_searchable_layers(model):
        m = l.dimension_mask()
        for f, name in enumerate(m.field_names):
            names.append(f"{l.name}/{name}")
            dims.append(float(m.value_sizes[f].mean()) if m.value_sizes is not None else float(m.kept_dims[f]))
    if not names:
        raise ValueError("plot_dims_per_field: the model has no searchable layer.")
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * len(names)), 3))
    ax.bar(range(len(names)), dims)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=70, fontsize=7, ha="right")
    ax.set_ylabel("kept dims")
    fig.tight_layout()
    path = os.fspath(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
