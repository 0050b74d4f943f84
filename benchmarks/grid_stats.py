"""Statistics of the benchmark grid: aggregates over seeds, significance, and the targets.

Pure functions of the cached records (`benchmarks/results/runs.jsonl`); `run.py`
produces the records, `grid_report.py` writes them up.
"""

from __future__ import annotations

import statistics

import numpy as np

from grid_spec import MODELS, PER_VALUE, SEARCHED, SEARCHED_LOW, UNIFORM1, run_key


def search_ratio(rec: dict, full: dict | None) -> float | None:
    """The search's cost against the full model of the same group (same process, same seed).

    HAM, AMTL, PME: the search epoch over the full model's first epoch (both
    include the first trace of the training step); SSEDS, whose scoring batches
    are training batches with a probe attached: the first epoch's time beyond
    the full model's first epoch, over the full model's median epoch.
    """
    if full is None or rec["method"] not in SEARCHED + SEARCHED_LOW + ("drop",):
        return None
    if rec["method"] in ("sseds", "sseds0", "drop"):  # scoring piggybacks on training steps: its cost is the first epoch's extra time
        return max(0.0, rec["epoch_seconds"][0] - full["epoch_seconds"][0]) / statistics.median(full["epoch_seconds"])
    return rec["epoch_seconds"][0] / full["epoch_seconds"][0]


def summarize(records: list[dict]) -> dict:
    """(dataset, model, method, budget) -> aggregated metrics over seeds (latest record per key)."""
    latest, group_full = {}, {}
    for r in records:
        # a run's search cost is against the full model of its own group (the same process), the
        # last full record before it in the cache: a group is appended whole, its full model first;
        # a later group that trains one method again (and the full model with it) leaves the other
        # methods paired with the full model they ran beside
        g = (r["dataset"], r["model"], r["seed"], r["epochs"])
        if r["method"] == "full":
            group_full[g] = r
        r = {**r, "search_ratio": search_ratio(r, group_full.get(g))}
        # a later run of the same key replaces an earlier one; measurements it did not
        # take (the low-budget groups skip serving latency) are kept from the earlier one
        latest[run_key(r)] = {**latest.get(run_key(r), {}), **r}
    groups = {}
    for r in latest.values():
        groups.setdefault((r["dataset"], r["model"], r["method"], r["budget"]), []).append(r)

    def agg(rs, k):
        v = [r[k] for r in rs if r.get(k) is not None]
        return (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0) if v else (None, None)

    out = {}
    for key, rs in groups.items():
        out[key] = {
            "n": len(rs),
            "auc": agg(rs, "auc"),
            "logloss": agg(rs, "logloss"),
            "kept_fraction": agg(rs, "kept_fraction")[0],
            "search_ratio": agg(rs, "search_ratio")[0],
            "bytes_ratio": agg(rs, "bytes_ratio")[0],
            "latency_ratio_1": agg(rs, "latency_ratio_1")[0],
            "latency_ratio_512": agg(rs, "latency_ratio_512")[0],
            "layout": rs[0].get("layout"),
            "dims_per_field": np.mean([r["dims_per_field"] for r in rs], axis=0).tolist(),
        }
    return out


def check_targets(summary: dict) -> list[tuple[str, bool, str]]:
    """The issue's targets as (target, met, measured) rows."""
    rows = []
    by = {}
    for (d, m, meth, b), s in summary.items():
        by.setdefault((d, m), {})[(meth, b)] = s
    for (d, m), runs in sorted(by.items()):
        full = runs.get(("full", 1.0))
        if not full:
            continue
        for b in sorted({b for (meth, b) in runs if meth != "full"}):
            at = {meth: s for (meth, bb), s in runs.items() if bb == b and meth in SEARCHED}
            if not at:
                continue
            best_m, best = max(at.items(), key=lambda kv: kv[1]["auc"][0])
            if b == 0.1:
                gap = best["auc"][0] - full["auc"][0]
                rows.append((f"{d}/{m} at 0.1: best method AUC >= full - 0.001", gap >= -0.001,
                             f"{best_m} {best['auc'][0]:.4f} vs full {full['auc'][0]:.4f} ({gap:+.4f})"))
            uni = runs.get(("uniform", b))
            if uni:
                worse = [f"{meth} {s['auc'][0] - uni['auc'][0]:+.4f}" for meth, s in at.items()
                         if s["auc"][0] < uni["auc"][0]]
                rows.append((f"{d}/{m} at {b}: every method >= uniform", not worse,
                             "all at or above" if not worse else "below uniform: " + ", ".join(worse)))
    for (d, m, meth, b), s in sorted(summary.items()):
        if meth in SEARCHED and s["search_ratio"] is not None:
            limit = 0.05 if meth == "sseds" else 1.3
            what = "scoring / epoch" if meth == "sseds" else "search epoch / plain epoch"
            rows.append((f"{d}/{m} {meth} {b}: {what} <= {limit}", s["search_ratio"] <= limit, f"{s['search_ratio']:.3f}"))
        if meth in SEARCHED + ("mde",) and s["bytes_ratio"] is not None:
            limit = 1.10 if meth in PER_VALUE else 1.02
            rows.append((f"{d}/{m} {meth} {b}: export bytes <= {limit} x kept x 4 B", s["bytes_ratio"] <= limit,
                         f"{s['bytes_ratio']:.3f} ({s['layout']})"))
        if meth in SEARCHED + ("mde",) and s["latency_ratio_512"] is not None:
            limit = 1.5 if meth in PER_VALUE else 1.1
            rows.append((f"{d}/{m} {meth} {b}: serving latency at 512 <= {limit} x full", s["latency_ratio_512"] <= limit,
                         f"{s['latency_ratio_512']:.2f}"))
    return rows


def significance(a: dict, b: dict) -> tuple[float, float, str]:
    """(difference of mean AUC a - b, that difference in standard errors, mark).

    The standard error of the difference of two means over independent seeds,
    `sqrt(s_a^2 / n_a + s_b^2 / n_b)`; the difference is marked real ("better" or
    "worse") only beyond two standard errors, "tie" otherwise."""
    diff = a["auc"][0] - b["auc"][0]
    se = float(np.sqrt(a["auc"][1] ** 2 / a["n"] + b["auc"][1] ** 2 / b["n"]))
    z = diff / se if se > 0 else (np.inf if diff > 0 else -np.inf if diff < 0 else 0.0)
    mark = "better" if z > 2 else "worse" if z < -2 else "tie"
    return diff, z, mark


def _sig_text(a: dict, b: dict | None) -> str:
    if b is None:
        return ""
    diff, z, mark = significance(a, b)
    zt = f"{z:+.1f}" if np.isfinite(z) else ("+inf" if z > 0 else "-inf")
    return f"{diff:+.4f} ({zt} SE, {'**' + mark + '**' if mark != 'tie' else mark})"


def check_low_targets(summary: dict) -> list[tuple[str, bool, str]]:
    """Issue 10: at 3% the best per-value method >= uniform dimension 1 (6.25%), with its mark."""
    rows = []
    for d in ("frappe", "movielens"):
        for m in MODELS:
            uni = summary.get((d, m, "uniform1", UNIFORM1))
            at = {meth: summary[(d, m, meth, 0.03)] for meth in ("amtl0", "pme0") if (d, m, meth, 0.03) in summary}
            if not uni or not at:
                continue
            best_m, best = max(at.items(), key=lambda kv: kv[1]["auc"][0])
            diff, z, mark = significance(best, uni)
            rows.append((f"{d}/{m} at 0.03: best per-value method >= uniform dim 1 (0.0625)", diff >= 0,
                         f"{best_m} {best['auc'][0]:.4f} vs {uni['auc'][0]:.4f}: {_sig_text(best, uni)}, n = {best['n']}/{uni['n']}"))
    return rows


def uniform_gaps(summary: dict) -> np.ndarray:
    """For each searched method below uniform at a budget: its AUC gap in standard errors of the difference."""
    z = []
    for (d, m, meth, b), s in summary.items():
        uni = summary.get((d, m, "uniform", b))
        if meth in SEARCHED and uni and s["auc"][0] < uni["auc"][0]:
            se = np.sqrt(s["auc"][1] ** 2 / s["n"] + uni["auc"][1] ** 2 / uni["n"])
            z.append((uni["auc"][0] - s["auc"][0]) / se if se > 0 else np.inf)
    return np.asarray(z)
