"""The benchmark runner: every method, dataset and base model, resumable.

    python benchmarks/run.py                         # the whole grid (hours; resumable, run it in parts)
    python benchmarks/run.py --datasets frappe --models mlp        # one part
    python benchmarks/run.py --quick                 # CI: Frappe, MLP, one seed, budget 0.2 (minutes)
    python benchmarks/run.py --report-only           # rewrite docs/benchmarks.md and the plots from the cache

Grid: datasets {frappe, movielens, criteo, avazu} x base models {mlp, deepfm}
(D = 16) x methods {full, uniform, mde, sseds, ham, amtl, pme} x budgets
{0.1, 0.2, 0.5} x seeds {0, 1, 2}. MovieLens is MovieLens-100K here (the 1M
files are not on this machine; `KERAS_EMBDIM_DATA` pointing at a folder with
`movielens-1m/` runs it instead, the loader reads both layouts).

Unit of work and cache: a *group* is one (dataset, model, seed): the full
model first (the reference for every ratio), then every method and budget, in
one process, so that every ratio is measured side by side. A finished group
appends its records to `benchmarks/results/runs.jsonl` (one JSON object per
run); a group that is already there is skipped, so an interrupted run resumes
at the first unfinished group. The report is written from the cache alone.

Per run: test AUC and log loss; kept embedding parameters; wall time of each
epoch; the search's time over the full model's median epoch (for SSEDS its
scoring time over one epoch); the exported SavedModel's embedding bytes over
kept x 4 B (`export_compact`, verified against the model); the serving latency
of the export at batch 1 and 512 over the full model's export (loaded with
`tf.saved_model.load`, round-robin, median over rounds of per-round medians);
kept dims per field (mean size per field for per-value methods).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (puts the checkout on sys.path, finds ../shared/data)

import tensorflow as tf  # noqa: E402

import keras_embdim as ked  # noqa: E402
from keras_embdim._compat import keras  # noqa: E402
from keras_embdim.budget import frequency_value_dims, mixed_dimension_dims  # noqa: E402
from keras_embdim.metrics import log_loss, roc_auc  # noqa: E402

D = 16
DATASETS = ("frappe", "movielens", "criteo", "avazu")
MODELS = ("mlp", "deepfm")
METHODS = ("full", "uniform", "mde", "sseds", "ham", "amtl", "pme")
# the low-budget regime (issue 10): below 1/D every field at min_dim=1 is already over the
# budget, so the searches run with min_dim=0 (a field or a value may keep nothing)
LOW_METHODS = ("uniform1", "mde0", "freq", "drop", "sseds0", "ham0", "amtl0", "pme0")
ALL_METHODS = METHODS + LOW_METHODS
SEARCHED = ("sseds", "ham", "amtl", "pme")
SEARCHED_LOW = ("sseds0", "ham0", "amtl0", "pme0")
PER_VALUE = ("amtl", "pme", "amtl0", "pme0", "freq")
PER_FIELD_LOW = ("sseds0", "ham0")
BUDGETS = (0.1, 0.2, 0.5)
LOW_BUDGETS = (0.02, 0.03, 0.05)
UNIFORM1 = 1.0 / 16  # the budget uniform dimension 1 costs (recorded as its budget)
CACHE = os.path.join(_common.ROOT, "benchmarks", "results", "runs.jsonl")
# the Kaggle samples hold 7-8k training rows: smaller batches give the searches steps to work with
BATCH = {"criteo": 256, "avazu": 256}


# ------------------------------------------------------------------ one run
class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._t)


class DropFields(ked.SingleShotPruner):
    """Baseline "drop the least important fields": SSEDS' gate scores summed per
    field rank the fields; in that order each field keeps its one best column
    while the budget allows (a field that does not fit is skipped), the others
    are dropped whole."""

    def __init__(self, budget: float, **kwargs):
        super().__init__(budget, min_dim=0, **kwargs)

    def _select_and_apply(self, scores, ranking="score"):
        from keras_embdim.budget import budget_params
        from keras_embdim.mask import total_params

        layer, s = self._layers[0], np.nan_to_num(scores[0])
        kept_before, full = total_params(self._layers)
        vocab = np.asarray(layer.field_vocab_sizes)
        target, spent = budget_params(self.budget, full), 0
        keep = np.zeros(s.shape, bool)
        for f in np.argsort(-s.sum(1), kind="stable"):
            if spent + vocab[f] <= target:
                keep[f, int(np.argmax(s[f]))] = True
                spent += int(vocab[f])
        self._rewind()
        layer.set_dimension_mask(keep, optimizer=getattr(self.model, "optimizer", None))
        self.phase = "done"
        return {"budget": self.budget, "params_before": int(kept_before), "params_full": int(full),
                "params_after": int(spent), "kept_fraction": spent / full, "step": self._step,
                "scores": {layer.name: s}, "masks": {layer.name: keep}}


def _embedding_and_callbacks(method: str, budget: float, data):
    """(embedding argument of `ked.models`, embedding dim, callbacks) of a method."""
    if method == "full":
        return "plain", D, []
    if method == "uniform":  # floor(b * D) dims for every field: never over the budget
        return "plain", max(1, int(budget * D)), []
    if method == "uniform1":  # one dim per field, whatever the budget (it costs 1/D)
        return "plain", 1, []
    if method == "drop":
        return "prunable", D, [DropFields(budget, verbose=0)]
    if method == "freq":  # per-value sizes from training counts, no search (frequency heuristic)
        sizes = frequency_value_dims(np.concatenate(data.value_counts), D, budget, min_dim=0)

        def freq(v, dim, names):
            layer = ked.PrunableEmbedding(v, dim, field_names=names, name="embedding")
            layer.build()
            layer.set_value_sizes(sizes.astype(np.int32))
            return layer

        return freq, D, []
    if method in ("sseds0", "ham0", "amtl0", "pme0"):
        base = method[:-1]
        if base == "sseds":
            return "prunable", D, [ked.SingleShotPruner(budget, min_dim=0, verbose=0)]
        if base == "ham":
            return (lambda v, dim, names: ked.HardMaskEmbedding(v, dim, field_names=names, name="embedding"),
                    D, [ked.HardMaskSearch(budget, min_dim=0, verbose=0)])
        if base == "amtl":
            return (lambda v, dim, names: ked.TwinsMaskLayer(
                ked.PrunableEmbedding(v, dim, field_names=names), min_dim=0, name="embedding"),
                D, [ked.TwinsMaskSearch(budget, verbose=0)])
        return "prunable", D, [ked.PMEPruner(budget, min_dim=0, verbose=0)]
    if method in ("mde", "mde0"):
        dims = mixed_dimension_dims(data.vocab_sizes, D, budget, min_dim=0 if method == "mde0" else 1)

        def mde(v, dim, names):
            layer = ked.PrunableEmbedding(v, dim, field_names=names, name="embedding")
            layer.build()
            layer.set_dimension_mask(np.arange(dim)[None, :] < dims[:, None])
            return layer

        return mde, D, []
    if method == "sseds":
        return "prunable", D, [ked.SingleShotPruner(budget, verbose=0)]
    if method == "ham":
        def ham(v, dim, names):
            return ked.HardMaskEmbedding(v, dim, field_names=names, name="embedding")

        return ham, D, [ked.HardMaskSearch(budget, verbose=0)]
    if method == "amtl":
        def amtl(v, dim, names):
            return ked.TwinsMaskLayer(ked.PrunableEmbedding(v, dim, field_names=names), name="embedding")

        return amtl, D, [ked.TwinsMaskSearch(budget, verbose=0)]
    if method == "pme":
        return "prunable", D, [ked.PMEPruner(budget, verbose=0)]
    raise ValueError(f"method must be one of {ALL_METHODS}; received {method!r}.")


def _dims_per_field(model, data, dim: int) -> list[float]:
    layers = ked.find_searchable_layers(model)
    if not layers:
        return [float(dim)] * data.num_fields
    m = layers[0].dimension_mask()
    if m.granularity == "value":
        return [float(np.mean(s)) if len(s) else 0.0 for s in m.value_sizes]
    return [float(k) for k in m.kept_dims]


def train_one(data, model_kind: str, method: str, budget: float, seed: int, epochs: int, export_dir: str,
              batch: int = 1024) -> dict:
    """Train, evaluate and export one configuration; returns its record (without latency)."""
    keras.utils.set_random_seed(seed)
    emb, dim, callbacks = _embedding_and_callbacks(method, budget, data)
    build = ked.models.build_mlp if model_kind == "mlp" else ked.models.build_deepfm
    model = ked.models.compile_ctr(build(data.vocab_sizes, data.field_names, embedding_dim=dim, embedding=emb))
    timer = EpochTimer()
    t0 = time.perf_counter()
    model.fit(data.dataset("train", batch_size=batch, seed=seed), epochs=epochs, verbose=0, callbacks=callbacks + [timer])
    fit_seconds = time.perf_counter() - t0
    xt, yt = data.test
    p = model.predict(data.inputs(xt), batch_size=8192, verbose=0).reshape(-1)
    full_params = int(sum(data.vocab_sizes)) * D
    layers = ked.find_searchable_layers(model)
    kept = int(layers[0].dimension_mask().kept_params) if layers else int(sum(data.vocab_sizes)) * dim
    search = callbacks[0].result if callbacks else None
    exp = ked.export_compact(model, export_dir, version=None, sample_inputs=data.inputs(xt[:1000]), verbose=0)
    return {
        "auc": roc_auc(yt, p),
        "logloss": log_loss(yt, p),
        "kept_params": kept,
        "full_params": full_params,
        "kept_fraction": kept / full_params,
        "epoch_seconds": timer.seconds,
        "fit_seconds": fit_seconds,
        "search_seconds": float(search["search_seconds"]) if search and "search_seconds" in search else None,
        "embedding_bytes": exp.embedding_bytes,
        "bytes_ratio": exp.embedding_overhead,
        "layout": next(iter(exp.layouts.values()), "none"),
        "max_abs_diff": exp.max_abs_diff,
        "dims_per_field": _dims_per_field(model, data, dim),
        "batch_size": batch,
    }


# ------------------------------------------------------------------ latency
def latency_ratios(full_dir: str, export_dir: str, data, rounds: int = 5, reps: int = 20, seed: int = 0) -> dict:
    """Serving latency of an export over the full model's, at batch 1 and 512 (round-robin, in
    this process; `benchmarks/serving.py` is the serving benchmark proper: fresh process, baselines)."""
    full = tf.saved_model.load(full_dir).signatures["serving_default"]
    mine = tf.saved_model.load(export_dir).signatures["serving_default"]
    rng = np.random.default_rng(seed)

    def request(fn, inputs):  # each signature takes its own id dtype (ours: int64)
        specs = fn.structured_input_signature[1]
        return {k: tf.constant(v.astype(specs[k].dtype.as_numpy_dtype)) for k, v in inputs.items()}

    out = {}
    for batch in (1, 512):
        rows = data.test[0][rng.integers(0, len(data.test[0]), batch)]
        inputs = data.inputs(rows)
        req_full, req_mine = request(full, inputs), request(mine, inputs)
        full(**req_full), mine(**req_mine)  # warm up
        ratios = []
        for _ in range(rounds):
            a = _common.timed(lambda: full(**req_full), reps)
            b = _common.timed(lambda: mine(**req_mine), reps)
            ratios.append(b / a)
        out[f"latency_ratio_{batch}"] = statistics.median(ratios)
    return out


# ------------------------------------------------------------------ groups and cache
def run_key(r: dict) -> tuple:
    return (r["dataset"], r["model"], r["method"], r["budget"], r["seed"], r["epochs"])


def load_cache(path: str) -> list[dict]:
    return _common.load_jsonl(path)


def group_runs(methods, budgets) -> list[tuple[str, float]]:
    """(method, budget) pairs of one group, the full model first; uniform dimension 1
    does not depend on the budget and runs once (recorded at the budget it costs)."""
    pairs = [("full", 1.0)] if "full" in methods else []
    pairs += [("uniform1", UNIFORM1)] if "uniform1" in methods else []
    return pairs + [(m, b) for m in methods if m not in ("full", "uniform1") for b in budgets]


def run_group(data, dataset: str, model_kind: str, seed: int, methods, budgets, epochs: int,
              progress=None, serving: bool = True) -> list[dict]:
    """Every run of one (dataset, model, seed), side by side in this process."""
    tmp = tempfile.mkdtemp(prefix="ked-bench-")
    records = []
    try:
        full_dir = None
        for method, budget in group_runs(["full", *methods], budgets):
            if progress:
                progress(f"{dataset} {model_kind} seed {seed}: {method} {budget}")
            path = os.path.join(tmp, f"{method}-{budget}")
            rec = {"dataset": dataset, "model": model_kind, "method": method, "budget": budget,
                   "seed": seed, "epochs": epochs}
            rec.update(train_one(data, model_kind, method, budget, seed, epochs, path, BATCH.get(dataset, 1024)))
            if method == "full":
                full_dir = path
            if serving:
                rec.update(latency_ratios(full_dir, path, data, seed=seed))
            records.append(rec)
            if progress:
                progress(None)
        commit = _commit()
        for rec in records:
            rec["search_ratio"] = search_ratio(rec, records[0])
            rec["commit"] = commit
        return records
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class Progress:
    """A one-line text progress bar with an ETA on stderr."""

    def __init__(self, total: int):
        self.total, self.done, self.t0 = total, 0, time.perf_counter()

    def __call__(self, label):
        if label is None:
            self.done += 1
            return
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        eta = ""
        if self.done:
            left = (time.perf_counter() - self.t0) / self.done * (self.total - self.done)
            eta = f" eta {left / 60:.0f} min"
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}{eta} {label:<48}")
        sys.stderr.flush()


def run(datasets, models, methods, budgets, seeds, epochs, cache: str, serving: bool = True, data_path=None) -> list[dict]:
    """Run every group not yet in `cache`; returns all cached records."""
    records = load_cache(cache)
    done = {(r["dataset"], r["model"], r["seed"], r["method"], r["budget"], r["epochs"]) for r in records}
    pairs = group_runs(["full", *methods], budgets)
    todo = [
        (d, m, s) for d in datasets for m in models for s in range(seeds)
        if not all((d, m, s, meth, b, epochs) in done for meth, b in pairs)
    ]
    bar = Progress(len(todo) * len(pairs))
    os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
    loaded = {}
    for d, m, s in todo:
        if d not in loaded:
            loaded[d] = ked.data.load_dataset(d, data_path, **({"seed": 0} if d in ("frappe", "movielens") else {}))
        group = run_group(loaded[d], d, m, s, [x for x in methods if x != "full"], budgets, epochs,
                          progress=bar, serving=serving)
        keep = {run_key(r) for r in group}
        records = [r for r in records if run_key(r) not in keep] + group
        with open(cache, "a") as fh:  # a finished group: append all its runs at once
            for r in group:
                fh.write(json.dumps(r) + "\n")
    if todo:
        sys.stderr.write("\n")
    return records


# ------------------------------------------------------------------ report
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
    latest = {}
    for r in records:
        # a later run of the same key replaces an earlier one; measurements it did not
        # take (the low-budget groups skip serving latency) are kept from the earlier one
        latest[run_key(r)] = {**latest.get(run_key(r), {}), **r}
    fulls = {(r["dataset"], r["model"], r["seed"], r["epochs"]): r for r in latest.values() if r["method"] == "full"}
    for r in latest.values():
        r["search_ratio"] = search_ratio(r, fulls.get((r["dataset"], r["model"], r["seed"], r["epochs"])))
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


def write_low_section(summary: dict, folder: str) -> list[str]:
    """Low budgets (issue 10): every method against uniform dimension 1, with significance marks."""
    by = {}
    for (d, m, meth, b), s in summary.items():
        if meth in LOW_METHODS:
            by.setdefault((d, m), []).append((meth, b, s))
    if not by:
        return []
    lines = [
        "## Low budgets: 2-5 % of the parameters (issue 10)", "",
        "Below 1/D = 6.25 % uniform dimensions cannot follow the budget: `uniform1` (one dim for every field) "
        "is the reference at its own cost, 0.0625. The searches run with `min_dim=0` (a field, or for the "
        "per-value methods a value, may keep nothing): `sseds0`, `ham0` per field, `amtl0`, `pme0` per value; "
        "`mde0` = the MDE popularity rule with 0-dim fields allowed; `freq` = the frequency heuristic per value "
        "(`keras_embdim.budget.frequency_value_dims`: the MDE rule applied to each value's training count, "
        "rare values get 0 dims; no search); `drop` = drop the least important fields "
        "(SSEDS' scores summed per field rank them; in that order each keeps its best single column while "
        "the budget allows). Columns: mean ± std over seeds (n); **vs uniform1**: the AUC difference, the "
        "difference in standard errors `sqrt(s1^2/n1 + s2^2/n2)` and the mark: better / worse only beyond "
        "two standard errors, tie otherwise.", "",
    ]
    order = {k: i for i, k in enumerate(LOW_METHODS)}
    for (d, m) in sorted(by):
        uni = summary.get((d, m, "uniform1", UNIFORM1))
        full = summary.get((d, m, "full", 1.0))
        lines += [f"### {d} / {m}", "", "| method | budget | n | AUC | vs uniform1 | vs full | kept | search | bytes |",
                  "|---|---|---|---|---|---|---|---|---|"]
        if full:
            lines.append(f"| full | - | {full['n']} | {full['auc'][0]:.4f} ± {full['auc'][1]:.4f} | "
                         f"{_sig_text(full, uni)} |  | 1.000 |  | 1.000 |")
        for meth, b, s in sorted(by[(d, m)], key=lambda t: (t[1], order[t[0]])):
            vs_full = f"{s['auc'][0] - full['auc'][0]:+.4f}" if full else ""
            sr = "" if s["search_ratio"] is None else f"{s['search_ratio']:.2f}"
            br = "" if s["bytes_ratio"] is None else f"{s['bytes_ratio']:.3f}"
            lines.append(f"| {meth} | {b:g} | {s['n']} | {s['auc'][0]:.4f} ± {s['auc'][1]:.4f} | "
                         f"{'' if meth == 'uniform1' else _sig_text(s, uni)} | {vs_full} | {s['kept_fraction']:.4f} | {sr} | {br} |")
        png = plot_low(summary, d, m, folder)
        lines += ["", f"![AUC at low budgets]({os.path.basename(png)})", ""]
    targets = check_low_targets(summary)
    lines += ["### Target (issue 10)", "", f"{sum(ok for _, ok, _ in targets)} of {len(targets)} met.", "",
              "| target | met | measured |", "|---|---|---|"]
    lines += [f"| {t} | {'yes' if ok else '**no**'} | {v} |" for t, ok, v in targets]
    if targets and not all(ok for _, ok, _ in targets):
        lines += [
            "",
            f"Why it is missed: at a budget b, at most {D} x b of the values can keep even one dim "
            f"({int(D * 3)} % at 3 %), while `uniform1` gives every value one. On Frappe and MovieLens the label "
            "depends on which user and which item a row holds; a value left with no dim is indistinguishable from "
            "every other such value, and half the ids is too many to lose. The searches pick the values to keep "
            "by importance, which grows with frequency and concentrates the budget on frequent ids; the "
            "frequency heuristic (`freq`, sizes growing as count^0.3, trained at those sizes from the start) "
            "comes closest. What meets a 3 % *memory* budget at uniform1's AUC is one dim per value in float16 "
            "(`docs/low_budget_bytes.md`).",
        ]
    lines.append("")
    return lines


def recommendation(summary: dict) -> list[str]:
    """Which method for which budget and data, in plain words, with the numbers it rests on."""
    def auc(d, m, meth, b):
        s = summary.get((d, m, meth, b))
        return None if s is None else s["auc"][0]

    lines = ["## Which method to pick", ""]
    # 1. the usual budgets
    pairs = sorted({(d, m) for (d, m, meth, b) in summary if meth == "full"})
    best_at, wins = {}, {}
    lines.append(
        "- **In general.** At the usual budgets the searches differ more in cost than in AUC: take "
        "`SingleShotPruner` (one scoring pass, per-field export, no serving cost) first; take `PMEPruner` for "
        "long-tailed id fields, where it was most often the best at 10 %; take HAM when the mask should be "
        "learnt jointly with the weights; AMTL to shrink an already trained model (warm start)."
    )
    for b in BUDGETS:
        gaps, ties, total = [], 0, 0
        for d, m in pairs:
            at = {meth: summary[(d, m, meth, b)] for meth in SEARCHED if (d, m, meth, b) in summary}
            full = summary.get((d, m, "full", 1.0))
            if not at or not full:
                continue
            bm, bs = max(at.items(), key=lambda kv: kv[1]["auc"][0])
            best_at.setdefault(b, []).append(f"{d}/{m}: {bm}")
            wins.setdefault(b, {}).setdefault(bm, 0)
            wins[b][bm] += 1
            gaps.append(bs["auc"][0] - full["auc"][0])
            for meth, s in at.items():
                if meth != bm:
                    total += 1
                    ties += significance(s, bs)[2] == "tie"
        if gaps:
            most = ", ".join(f"{k} {v}" for k, v in sorted(wins[b].items(), key=lambda kv: -kv[1]))
            lines.append(
                f"- **{int(100 * b)} % of the parameters.** The best search is {min(gaps):+.4f} to {max(gaps):+.4f} "
                f"AUC from the full model over {len(gaps)} dataset/model pairs; {ties} of the {total} other "
                f"searches are within two standard errors of the best one. Best per pair ({most} of "
                f"{len(gaps)}): {'; '.join(best_at[b])}."
            )
    # 2. just above and below 1/D
    low_pairs = sorted({(d, m) for (d, m, meth, b) in summary if meth == "uniform1"})
    for d, m in low_pairs:
        uni, full = auc(d, m, "uniform1", UNIFORM1), auc(d, m, "full", 1.0)
        if uni is None or full is None:
            continue
        parts = []
        for b in LOW_BUDGETS:
            at = {meth: auc(d, m, meth, b) for meth in LOW_METHODS if meth != "uniform1" and auc(d, m, meth, b) is not None}
            if at:
                bm = max(at, key=at.get)
                per_field = [at[x] for x in ("sseds0", "ham0", "drop", "mde0") if x in at]
                parts.append(f"at {b:g}: best `{bm}` {at[bm] - uni:+.4f}, per-field methods as low as "
                             f"{min(per_field):.3f} AUC" if per_field else f"at {b:g}: best `{bm}` {at[bm] - uni:+.4f}")
        lines.append(
            f"- **Below 1/D = 6.25 % ({d}/{m}).** One dim for every value (`uniform1`, 6.25 %) is {uni - full:+.4f} "
            f"from full dims. Under it some values must keep no dim at all, and that costs more than narrowing all "
            f"of them: vs uniform1 {'; '.join(parts)}."
        )
    lines += [
        "- **Below 1/D, in plain words.** If the limit is memory rather than a parameter count, do not drop "
        "values: keep one dim per value and export it in float16 (`table_dtype=\"float16\"`, 2 B per value = "
        "3.1 % of the float32 full table; `docs/low_budget_bytes.md` measures the served AUC). If parameters "
        "really must go below 1/D, size values by frequency (`keras_embdim.budget.frequency_value_dims`, the "
        "`freq` rows: no search, sizes growing as count^0.3, so that many rare values keep one dim) and train "
        "at those sizes from the start, rather than by a search: PME's importance grows linearly with frequency "
        "and spends the budget on frequent ids, leaving more of the tail with nothing. Never use a per-field "
        "search there: it can only drop whole fields, and when the "
        "key id field (Frappe's items) no longer fits the model is left at chance (AUC 0.49).",
        "- **Data shape.** When the label depends on which user and which item (Frappe, MovieLens), the id fields "
        "need at least one dim per value; per-value methods (PME, AMTL) then spend the rest on frequent ids. "
        "When many fields carry no signal (generated data, Criteo's noisy columns), per-field searches drop them "
        "at no cost and serve fastest.",
        "",
    ]
    return lines


def plot_low(summary: dict, dataset: str, model: str, folder: str) -> str:
    from keras_embdim.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for meth in LOW_METHODS:
        pts = sorted((s["kept_fraction"], s["auc"][0], s["auc"][1]) for (d, m, mm, b), s in summary.items()
                     if (d, m, mm) == (dataset, model, meth))
        if pts:
            x, y, e = zip(*pts)
            ax.errorbar(x, y, yerr=e, marker="s" if meth == "uniform1" else "o", capsize=2, label=meth)
    full = summary.get((dataset, model, "full", 1.0))
    if full:
        ax.axhline(full["auc"][0], color="k", linestyle="--", label="full")
    ax.set_xlabel("kept fraction of embedding parameters")
    ax.set_ylabel("test AUC")
    ax.set_title(f"{dataset} / {model}: low budgets")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(folder, f"benchmarks_low_{dataset}_{model}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def uniform_gaps(summary: dict) -> np.ndarray:
    """For each searched method below uniform at a budget: its AUC gap in standard errors of the difference."""
    z = []
    for (d, m, meth, b), s in summary.items():
        uni = summary.get((d, m, "uniform", b))
        if meth in SEARCHED and uni and s["auc"][0] < uni["auc"][0]:
            se = np.sqrt(s["auc"][1] ** 2 / s["n"] + uni["auc"][1] ** 2 / uni["n"])
            z.append((uni["auc"][0] - s["auc"][0]) / se if se > 0 else np.inf)
    return np.asarray(z)


def _commit() -> str:
    return _common.git_commit()


def _machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        cpu = f"{names[0]} x {len(names)}" if names else cpu
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = float("nan")
    commit = _commit()
    return (f"{cpu}, {mem:.0f} GiB; Python {platform.python_version()}, TensorFlow {tf.__version__}, "
            f"Keras {keras.__version__}; report written at commit {commit or '?'}")


MISSES = [
    ("best method AUC", "At 10% of the parameters, best method within 0.001 of full",
     "Frappe needs few dimensions and every method is close to full; MovieLens' signal is in two large id "
     "fields (users, items) that keep one or two dimensions at 10%. The 7-8k-row Criteo and Avazu samples "
     "(about 400 test rows) swing both ways: a full table can overfit 7k rows (the searched ones then win) "
     "or not (the full model then leads); three seeds on 400 rows do not rank such differences. The "
     "low-budget and significance runs of issue 10 are the test that separates methods."),
    ("every method >= uniform", "Every method at or above uniform dims",
     "Uniform dims are a strong baseline at these budgets on these data (issue 10's measurements said so: one "
     "dimension per field loses 0.001-0.003 AUC); issue 10 adds 5 seeds and marks only differences beyond two "
     "standard errors."),
    ("search epoch", "Search epoch within 1.3x of a plain epoch",
     "The searched epoch pays fixed costs a plain epoch does not: the search graph's own trace, the final "
     "ranking and landing, the retrace on the searched masks, and AMTL's twins per step. On the Criteo and "
     "Avazu samples an epoch is about 30 steps, so those fixed costs dominate; the per-step overhead itself "
     "is 1.00-1.03x (docs/overhead.md). Fix: report per-step times as overhead.py does, and amortise the "
     "fixed costs over real epoch lengths."),
    ("scoring / epoch", "SSEDS scoring within 5% of an epoch",
     "Scoring runs on 20 training batches with a gate probe attached, so its cost is two retraces (probe on, "
     "probe off) and the probe's gradient outputs: a fixed cost of a few tenths of a second, a larger share of "
     "a short epoch (about 1 s on Frappe, 0.3 s on the samples) than of a long one."),
    ("export bytes", "Export bytes (1.02x per field, 1.10x per value)",
     "Per field the export holds exactly the kept values; per value the layout's index stays within 10% "
     "(docs/methods.md)."),
    ("serving latency", "Serving latency (1.1x per field, 1.5x per value at batch 512)",
     "The grid's latency columns come from an in-process check of exports made at the commit of each run; "
     "the per-field rows predate the current lookups (one row gather per kept width, Dense layers folded "
     "onto the kept values) and the ragged-range per-value reads. docs/serving.md (benchmarks/serving.py) "
     "measures the current exports in a fresh TensorFlow-only process against model.export() of the full "
     "and of the uniform-dims model, and says which targets hold."),
]


PUBLISHED = [
    ("SSEDS (SIGIR 2022)", "Criteo, Avazu",
     "'strong accuracy even if it has reduced 90% parameters' (embedding parameters pruned to 10%)"),
    ("AMTL (CIKM 2021)", "its production and public data", "60% memory saved without loss on any metric (budget 0.4)"),
    ("HAM (DL4SR 2022)", "Criteo, Avazu", "field-wise dims found by hard masks match or beat the full model"),
    ("PME (Frontiers in Big Data 2023)", "public CTR data", "strong AUC with far fewer embedding parameters, much cheaper search"),
]


def write_report(records: list[dict], out: str, command: str) -> str:
    summary = summarize(records)
    lines = [
        "# Benchmarks: every method against full and uniform dimensions",
        "",
        "Generated by `benchmarks/run.py` from its cache (`benchmarks/results/runs.jsonl`), never by hand. "
        f"Last command: `{command}`.",
        "",
        f"Machine: {_machine()}. Runs measured at commit(s) "
        f"{', '.join(sorted({r.get('commit', 'before 542006d (not recorded)') for r in records}))}. Base dim D = {D}, Adam 1e-3, test split of each dataset; uniform = "
        "floor(budget x 16) dims for every field; mde = Mixed Dimension Embeddings' popularity rule "
        "(`keras_embdim.budget.mixed_dimension_dims`, alpha 0.3); sseds = `SingleShotPruner`; ham = "
        "`HardMaskEmbedding` + `HardMaskSearch`; amtl = `TwinsMaskLayer` + `TwinsMaskSearch`; pme = "
        "`PMEPruner`. Searches take the first epoch, the other epochs fine-tune. AUC and log loss: mean ± std "
        "over seeds (n). Search: the search epoch's wall time over the full model's first epoch in the same "
        "process (both include the first trace of the training step; SSEDS, whose scoring batches are training "
        "batches with a probe: its first epoch's time beyond the full model's first epoch, over the full model's "
        "median epoch). Bytes: the export's embedding bytes over kept x 4 B. Latency: the "
        "export's `serving_default` over the full model's export, batch 1 and 512.",
        "",
    ]
    by = {}
    for (d, m, meth, b), s in summary.items():
        if meth in METHODS:
            by.setdefault((d, m), []).append((meth, b, s))
    order = {k: i for i, k in enumerate(METHODS)}
    for (d, m) in sorted(by):
        rows = sorted(by[(d, m)], key=lambda t: (t[1] if t[0] != "full" else -1, order.get(t[0], 99)))
        full = next((s for meth, b, s in rows if meth == "full"), None)
        lines += [f"## {d} / {m}", "",
                  "| method | budget | n | AUC | vs full | vs uniform (2 SE) | log loss | kept | search | bytes | latency 1 | latency 512 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for meth, b, s in rows:
            auc, ll = s["auc"], s["logloss"]
            vs = f"{auc[0] - full['auc'][0]:+.4f}" if full and meth != "full" else ""

            def f(x, p=2):
                return "" if x is None else f"{x:.{p}f}"

            uni = summary.get((d, m, "uniform", b)) if meth not in ("full", "uniform") else None
            lines.append(
                f"| {meth} | {'-' if meth == 'full' else b} | {s['n']} | {auc[0]:.4f} ± {auc[1]:.4f} | {vs} | "
                f"{_sig_text(s, uni)} | {ll[0]:.4f} ± {ll[1]:.4f} | {s['kept_fraction']:.3f} | {f(s['search_ratio'])} | "
                f"{f(s['bytes_ratio'], 3)} | {f(s['latency_ratio_1'])} | {f(s['latency_ratio_512'])} |"
            )
        png = plot_auc(summary, d, m, os.path.dirname(out))
        lines += ["", f"![AUC vs parameter fraction]({os.path.basename(png)})", ""]
        dims_png = plot_dims(summary, d, m, os.path.dirname(out))
        if dims_png:
            lines += [f"![dims per field]({os.path.basename(dims_png)})", ""]
    lines += write_low_section(summary, os.path.dirname(out))
    lines += recommendation(summary)
    targets = check_targets(summary)
    met = sum(ok for _, ok, _ in targets)
    lines += ["## Targets (issue 6)", "", f"{met} of {len(targets)} met.", "",
              "| target | met | measured |", "|---|---|---|"]
    lines += [f"| {t} | {'yes' if ok else '**no**'} | {v} |" for t, ok, v in targets]
    lines += ["", "### Where targets are missed, and why", ""]
    for key, label, why in MISSES:
        rows_k = [(t, ok, v) for t, ok, v in targets if key in t]
        if rows_k:
            extra = ""
            if key == "every method >= uniform":
                z = uniform_gaps(summary)
                extra = (f" Measured: {len(z)} method/budget pairs below uniform, {int((z <= 1).sum())} of them within "
                         f"one standard error of the difference and {int((z <= 2).sum())} within two.")
            lines.append(f"- **{label}**: {sum(ok for _, ok, _ in rows_k)} of {len(rows_k)} met. {why}{extra}")
    lines += ["", "## Against the published numbers", "",
              "The papers report on their own data and models; what transfers is the relative claim, the AUC "
              "change against the method's own full model at a parameter fraction. Ours, from the tables above:", "",
              "| method | paper's data | paper's claim | ours (AUC vs own full model, mean over datasets and base models) |",
              "|---|---|---|---|"]
    for (name, data_, claim), meth, b in zip(PUBLISHED, ("sseds", "amtl", "ham", "pme"), (0.1, 0.5, 0.2, 0.1)):
        gaps = [s["auc"][0] - summary[(d, m, "full", 1.0)]["auc"][0]
                for (d, m, mm, bb), s in summary.items() if mm == meth and bb == b and (d, m, "full", 1.0) in summary]
        ours = f"{np.mean(gaps):+.4f} at budget {b} ({len(gaps)} dataset/model pairs)" if gaps else "not run yet"
        lines.append(f"| {name} | {data_} | {claim} | {ours} |")
    text = "\n".join(lines) + "\n"
    with open(out, "w") as fh:
        fh.write(text)
    return text


def plot_auc(summary: dict, dataset: str, model: str, folder: str) -> str:
    from keras_embdim.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    full = summary.get((dataset, model, "full", 1.0))
    for meth in METHODS[1:]:
        pts = sorted((s["kept_fraction"], s["auc"][0], s["auc"][1]) for (d, m, mm, b), s in summary.items()
                     if (d, m, mm) == (dataset, model, meth))
        if pts:
            x, y, e = zip(*pts)
            ax.errorbar(x, y, yerr=e, marker="o", capsize=2, label=meth)
    if full:
        ax.axhline(full["auc"][0], color="k", linestyle="--", label="full")
    ax.set_xscale("log")
    ax.set_xlabel("kept fraction of embedding parameters")
    ax.set_ylabel("test AUC")
    ax.set_title(f"{dataset} / {model}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(folder, f"benchmarks_auc_{dataset}_{model}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_dims(summary: dict, dataset: str, model: str, folder: str, budget: float = 0.2) -> str | None:
    from keras_embdim.plots import _pyplot

    rows = [(meth, summary[(dataset, model, meth, budget)]["dims_per_field"]) for meth in METHODS
            if (dataset, model, meth, budget) in summary]
    if not rows:
        return None
    plt = _pyplot()
    F = len(rows[0][1])
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * F + 2), 4))
    width = 0.8 / len(rows)
    for i, (meth, dims) in enumerate(rows):
        ax.bar(np.arange(F) + i * width, dims, width, label=meth)
    ax.set_xlabel("field")
    ax.set_ylabel(f"dims kept at budget {budget} (per value: mean)")
    ax.set_title(f"{dataset} / {model}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(folder, f"benchmarks_dims_{dataset}_{model}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def quick(cache: str, out: str, epochs: int = 3) -> tuple[list[dict], dict]:
    """The CI check: Frappe, MLP, one seed, budget 0.2, every method."""
    records = run(["frappe"], ["mlp"], METHODS, [0.2], 1, epochs, cache, serving=True)
    write_report(records, out, "python benchmarks/run.py --quick")
    return records, summarize(records)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--methods", nargs="+", default=None, choices=ALL_METHODS)
    p.add_argument("--budgets", nargs="+", type=float, default=None)
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--low", action="store_true",
                   help="the low-budget grid: methods %s, budgets %s, 5 seeds, MLP, no latency" % (
                       " ".join(LOW_METHODS), " ".join(map(str, LOW_BUDGETS))))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--cache", default=CACHE)
    p.add_argument("--out", default=os.path.join(_common.DOCS, "benchmarks.md"))
    p.add_argument("--no-serving", action="store_true", help="skip the latency measurements")
    p.add_argument("--quick", action="store_true", help="Frappe, MLP, one seed, budget 0.2 (CI)")
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args(argv)
    command = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if a.quick:  # a scratch cache and report unless given: the quick numbers never replace the full ones
        tmp = tempfile.mkdtemp()
        cache = a.cache if a.cache != CACHE else os.path.join(tmp, "quick.jsonl")
        out = a.out if a.out != os.path.join(_common.DOCS, "benchmarks.md") else os.path.join(tmp, "quick.md")
        _, summary = quick(cache, out)
        print(f"quick report: {out}")
        full = summary[("frappe", "mlp", "full", 1.0)]["auc"][0]
        best = max(s["auc"][0] for (d, m, meth, b), s in summary.items() if b == 0.2 and meth in SEARCHED)
        print(f"quick: full {full:.4f}, best method at 0.2 {best:.4f} ({best - full:+.4f})")
        return 0 if best >= full - 0.01 else 1
    if a.low:
        a.methods = a.methods or list(LOW_METHODS)
        a.budgets = a.budgets or list(LOW_BUDGETS)
        a.seeds = a.seeds or 5
        if a.models == list(MODELS):
            a.models = ["mlp"]
        if a.datasets == list(DATASETS):
            a.datasets = ["frappe", "movielens"]
        a.no_serving = True
    a.methods = a.methods or list(METHODS)
    a.budgets = a.budgets or list(BUDGETS)
    a.seeds = a.seeds or 3
    if not a.report_only:
        run(a.datasets, a.models, a.methods, a.budgets, a.seeds, a.epochs, a.cache, serving=not a.no_serving)
    print(write_report(load_cache(a.cache), a.out, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
