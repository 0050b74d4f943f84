"""The benchmark runner: every method, dataset and base model, resumable.

    python benchmarks/run.py                         # the whole grid (hours; resumable, run it in parts)
    python benchmarks/run.py --datasets frappe --models mlp        # one part
    python benchmarks/run.py --quick                 # CI: Frappe, MLP, one seed, budget 0.2 (minutes)
    python benchmarks/run.py --report-only           # rewrite docs/results/benchmarks.md and the plots from the cache

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
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

import _common
import keras_embdim as ked
from factories import EpochTimer, embedding_and_callbacks
from grid_report import write_report
from grid_spec import (ALL_METHODS, BATCH, BUDGETS, D, DATASETS, LOW_BUDGETS, LOW_METHODS, METHODS, MODELS,
                       SEARCHED, UNIFORM1, run_key)
from grid_stats import search_ratio, summarize
from keras_embdim import keras
from keras_embdim.metrics import log_loss, roc_auc

CACHE = os.path.join(_common.ROOT, "benchmarks", "results", "runs.jsonl")


# ------------------------------------------------------------------ one run
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
    emb, dim, callbacks = embedding_and_callbacks(method, budget, data)
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
        "search_seconds": float(search.seconds) if search is not None else None,
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
        commit = _common.git_commit()
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
