"""Dimension reports: what each searchable layer keeps, as records, DataFrame or text."""

from __future__ import annotations

from typing import Any

from keras_embdim.searchable import find_searchable_layers


def dimension_records(model_or_layers: Any) -> list[dict]:
    """One record per field of every searchable layer (see `DimensionMask.to_records`)."""
    layers = (
        list(model_or_layers)
        if isinstance(model_or_layers, (list, tuple))
        else find_searchable_layers(model_or_layers)
    )
    out = []
    for layer in layers:
        mask = layer.dimension_mask()
        for rec in mask.to_records():
            out.append({"layer": layer.name, "granularity": mask.granularity, **rec})
    return out


def dimension_report(model: Any):
    """A pandas DataFrame with one row per (layer, field)."""
    import pandas as pd

    return pd.DataFrame(dimension_records(model))


def dimension_summary(model_or_layers: Any) -> dict:
    """Totals plus per-layer records, JSON-serialisable (used by dimensions.json)."""
    recs = dimension_records(model_or_layers)
    before = sum(r["params_before"] for r in recs)
    after = sum(r["params_after"] for r in recs)
    layers: dict[str, list] = {}
    for r in recs:
        layers.setdefault(r["layer"], []).append({k: v for k, v in r.items() if k != "layer"})
    out = {
        "params_before": before,
        "params_after": after,
        "kept_fraction": (after / before) if before else 1.0,
        "layers": layers,
    }
    # kept dims per field at the end of every epoch of a search (search callbacks record it)
    from keras_embdim.callbacks.search_callback import dimension_history

    source = model_or_layers if isinstance(model_or_layers, (list, tuple)) else find_searchable_layers(model_or_layers)
    history = {l.name: dimension_history(l) for l in source if dimension_history(l)}
    if history:
        out["history"] = history
    return out


def format_report(model_or_layers: Any, max_fields: int = 40) -> str:
    """A text table of kept dims per field, for logs and the quickstart.

    Per-value layers show each field's mean size per value beside its largest
    (`15/16 mean 2.3`: the frequent values keep 15 dims, most values far fewer).
    """
    recs = dimension_records(model_or_layers)
    lines = [f"{'layer':<22}{'field':<18}{'vocab':>9}{'dims':>7}{'mean':>7}{'params':>12}"]
    for r in recs[:max_fields]:
        mean = f"{r['mean_value_dims']:>7.2f}" if "mean_value_dims" in r else f"{'':>7}"
        lines.append(
            f"{r['layer'][:21]:<22}{str(r['field'])[:17]:<18}{r['vocab']:>9}"
            f"{r['kept_dims']:>4}/{r['full_dims']:<2}{mean}{r['params_after']:>12}"
        )
    if len(recs) > max_fields:
        lines.append(f"... {len(recs) - max_fields} more fields")
    before = sum(r["params_before"] for r in recs)
    after = sum(r["params_after"] for r in recs)
    lines.append(
        f"embedding params: {before:,} -> {after:,} ({100 * after / max(before, 1):.1f}% kept)"
    )
    return "\n".join(lines)
