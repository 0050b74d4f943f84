"""The first requests after TF Serving loads an export, with and without its warmup requests.

    python benchmarks/warmup.py                  # measure (resumable), then docs/results/warmup.md
    python benchmarks/warmup.py --report-only    # rewrite docs/results/warmup.md from the cache
    python benchmarks/warmup.py --quick          # a small check: Frappe, 2 processes

For each dataset ("criteo": 26 fields with the Criteo Kaggle cardinalities
capped at `--cap`, generated data; "frappe": the real data), an MLP 128-64
over 16-dim embeddings is trained for one epoch with `SingleShotPruner(0.1)`
(per field) and with `PMEPruner(0.1)` (per value); each is exported by
`export_compact` with its defaults (warmup requests of batch 1 and 16 for each
signature) and with `warmup_batch_sizes=()` (no warmup file); the full model by
Keras' own `model.export()`, which writes no warmup file.

Each export is loaded in a fresh TensorFlow-only process the way TF Serving
loads a model: the TF1 session loader (`serve` tag), then every record of
`assets.extra/tf_serving_warmup_requests` parsed with TF Serving's own protos
(the `tensorflow-serving-api` package) and run through the signature it names
(`saved_model_warmup.cc`). Then the requests a client sends first are timed:
batch 1, 512 and 4096, in that order, each the first call of its size; then
the median of 20 more calls of each size (the steady state). `--processes`
processes per export, export after export in turn; medians over processes.

Results: benchmarks/results/warmup.jsonl, docs/results/warmup.md and
docs/results/warmup_first_request.png.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import _common
import serving

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "warmup.jsonl")
BATCHES = (1, 512, 4096)
LABELS = {"full": "full (model.export, no warmup file)",
          "sseds": "per field (default: warmup requests)", "sseds_nowarmup": "per field, warmup_batch_sizes=()",
          "pme": "per value (default: warmup requests)", "pme_nowarmup": "per value, warmup_batch_sizes=()"}
PLOT_LABELS = {"full": "full\n(model.export)", "sseds": "per field", "sseds_nowarmup": "per field,\nno warmup",
               "pme": "per value", "pme_nowarmup": "per value,\nno warmup"}

# A TensorFlow-only process: load one export as TF Serving does, replay its warmup file, time the
# first requests of each batch size, then the steady state.
FIRST_REQUESTS = r'''
import json, os, statistics, sys, time
sys.modules["keras_embdim"] = None  # TensorFlow only, as TF Serving
import numpy as np, tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2
tf.compat.v1.disable_eager_execution()
spec = json.loads(sys.argv[1])
requests = dict(np.load(spec["requests"]))
path = spec["path"]
t = time.perf_counter()
sess = tf.compat.v1.Session(graph=tf.Graph())
with sess.graph.as_default():
    meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
load_s = time.perf_counter() - t
warmup = os.path.join(path, "assets.extra", "tf_serving_warmup_requests")
t = time.perf_counter()
records = 0
if os.path.exists(warmup):  # as TF Serving's warmup: each record through the signature it names
    for raw in tf.compat.v1.io.tf_record_iterator(warmup):
        request = prediction_log_pb2.PredictionLog.FromString(raw).predict_log.request
        sd = meta.signature_def[request.model_spec.signature_name or "serving_default"]
        sess.run([t.name for t in sd.outputs.values()],
                 {sd.inputs[k].name: tf.make_ndarray(v) for k, v in request.inputs.items()})
        records += 1
warmup_s = time.perf_counter() - t
sd = meta.signature_def["serving_default"]
fetch = [t.name for t in sd.outputs.values()]
def feed(batch):
    return {t.name: requests[k][:batch].astype(tf.as_dtype(t.dtype).as_numpy_dtype) for k, t in sd.inputs.items()}
first, steady = {}, {}
for batch in spec["batches"]:
    f = feed(batch)
    t = time.perf_counter(); sess.run(fetch, f); first[batch] = time.perf_counter() - t
for batch in spec["batches"]:
    f = feed(batch)
    times = []
    for _ in range(spec["reps"]):
        t = time.perf_counter(); sess.run(fetch, f); times.append(time.perf_counter() - t)
    steady[batch] = statistics.median(times)
print(json.dumps({"load_s": load_s, "warmup_s": warmup_s, "records": records, "first": first, "steady": steady}))
'''


def export_models(data, out: str, seed: int, budget: float = 0.1) -> dict:
    import keras_embdim as ked
    from keras_embdim import keras

    sample = data.inputs(data.test[0][:500])
    keras.utils.set_random_seed(seed)
    full = ked.models.build_mlp(data.vocab_sizes, data.field_names, embedding_dim=16, embedding="plain")
    exports = {"full": {"path": os.path.join(out, "full"), "warmup_requests": 0, "warmup_bytes": 0}}
    _common.keras_export(full, exports["full"]["path"])
    for method, cb in (("sseds", ked.SingleShotPruner(budget, verbose=0)),
                       ("pme", ked.PMEPruner(budget, rotate=False, verbose=0))):
        keras.utils.set_random_seed(seed)
        model = ked.models.compile_ctr(ked.models.build_mlp(data.vocab_sizes, data.field_names, embedding_dim=16))
        model.fit(data.dataset("train", batch_size=1024, seed=seed), epochs=1, verbose=0, callbacks=[cb])
        for suffix, options in (("", {}), ("_nowarmup", {"warmup_batch_sizes": ()})):
            r = ked.export_compact(model, os.path.join(out, method + suffix), sample_inputs=sample, verbose=0,
                                   **options)
            exports[method + suffix] = {"path": r.path, "warmup_requests": r.warmup_requests,
                                        "warmup_bytes": r.bytes["warmup_requests"], "total_bytes": r.bytes["total"]}
    return exports


def run_one(dataset: str, args) -> dict:
    data = serving.load(dataset, args.cap, args.rows, args.seed)
    out = tempfile.mkdtemp(prefix="ked-warmup-")
    try:
        t = time.time()
        exports = export_models(data, out, args.seed)
        runs = {name: [] for name in exports}
        for _ in range(args.processes):  # export after export, in turn
            for name, e in exports.items():
                spec = {"path": e["path"], "reps": args.reps}
                runs[name].append(serving.run_tf_only(FIRST_REQUESTS, spec, data, BATCHES, args.seed))
        return {"dataset": dataset, "cap": args.cap if dataset == "criteo" else None, "fields": data.num_fields,
                "exports": {k: {kk: vv for kk, vv in v.items() if kk != "path"} for k, v in exports.items()},
                "runs": runs, "processes": args.processes, "reps": args.reps, "commit": _common.git_commit(),
                "wall_seconds": time.time() - t}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def summary(record: dict) -> dict:
    """Per export: the median over processes of load, warmup, and of each batch's first and steady
    call (ms), and of each process' first / steady ratio."""
    out = {}
    for name, runs in record["runs"].items():
        med = lambda xs: statistics.median(xs)  # noqa: E731
        out[name] = {"load_ms": 1000 * med([r["load_s"] for r in runs]),
                     "warmup_ms": 1000 * med([r["warmup_s"] for r in runs]),
                     "records": runs[0]["records"]}
        for b in map(str, BATCHES):
            out[name][f"first_{b}"] = 1000 * med([r["first"][b] for r in runs])
            out[name][f"steady_{b}"] = 1000 * med([r["steady"][b] for r in runs])
            out[name][f"ratio_{b}"] = med([r["first"][b] / r["steady"][b] for r in runs])
    return out


def report(records: list, path: str, plot: str | None) -> str:
    header = ["dataset", "export", "warmup records", "warmup file B", "load ms", "warmup ms",
              *[c for b in BATCHES for c in (f"first {b} ms", f"steady {b} ms", f"first / steady {b}")]]
    rows, notes = [], []
    for r in sorted(records, key=lambda r: r["dataset"]):
        name = r["dataset"] + (f" (cap {r['cap']:.0e})" if r.get("cap") else "")
        s = summary(r)
        for k, label in LABELS.items():
            if k not in s:
                continue
            v, e = s[k], r["exports"][k]
            cells = [f"{v[f'{c}_{b}']:.2f}" for b in BATCHES for c in ("first", "steady", "ratio")]
            rows.append(f"| {name} | {label} | {v['records']} | {e['warmup_bytes']:,} | {v['load_ms']:.0f} | "
                        f"{v['warmup_ms']:.0f} | " + " | ".join(cells) + " |")
        for method in ("sseds", "pme"):
            if method in s and method + "_nowarmup" in s:
                with_, without, e = s[method], s[method + "_nowarmup"], r["exports"][method]
                first = [f"batch {b}: {with_[f'first_{b}']:.2f} ms ({with_[f'ratio_{b}']:.1f}x the steady state) "
                         f"with the warmup requests, {without[f'first_{b}']:.2f} ms ({without[f'ratio_{b}']:.1f}x) "
                         "without" for b in BATCHES]
                notes.append(f"- {name}, {LABELS[method].split(' (')[0]}: the first request of " + "; of ".join(first)
                             + f". The warmup file holds {e['warmup_bytes']:,} B of the export's "
                             f"{e['total_bytes']:,} B; replaying it takes {with_['warmup_ms']:.0f} ms of the load.")
    procs = sorted({r["processes"] for r in records})
    commits = ", ".join(sorted({r["commit"] for r in records}))
    generated = (f"Generated by `python benchmarks/warmup.py` from `benchmarks/results/warmup.jsonl` (measured "
                 f"at commit {commits}), never by hand. Each export loaded in fresh TensorFlow-only processes as TF "
                 f"Serving loads a model (the TF1 session loader, then its warmup records replayed through the "
                 f"signatures they name, parsed with TF Serving's own protos); then the first request of batch 1, "
                 f"512 and 4096 in that order, and the median of {records[0]['reps'] if records else 20} more of "
                 f"each (steady). Medians over {'/'.join(map(str, procs))} processes per export; a ratio is "
                 "taken within each process.")
    text = _common.write_table(path, "The first requests after a model loads: warmup requests",
                               generated, header, rows, ("## Summary", "", *notes))
    if plot and records:
        _plot(records, plot)
    return text


def _plot(records: list, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = sorted(records, key=lambda r: r["dataset"])
    fig, axes = plt.subplots(1, len(recs), figsize=(6 * len(recs), 4), squeeze=False)
    for ax, r in zip(axes[0], recs):
        s = summary(r)
        names = [k for k in LABELS if k in s]
        for i, b in enumerate(BATCHES):
            ax.bar([j + 0.25 * (i - 1) for j in range(len(names))], [s[k][f"first_{b}"] for k in names],
                   width=0.25, label=f"first request, batch {b}")
        ax.set_yscale("log")
        ax.set_xticks(range(len(names)), [PLOT_LABELS[k] for k in names], fontsize=8)
        ax.set_ylabel("ms")
        ax.set_title(r["dataset"])
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["criteo", "frappe"])
    p.add_argument("--cap", type=int, default=100_000, help="criteo: largest vocabulary")
    p.add_argument("--rows", type=int, default=200_000, help="criteo: generated rows")
    p.add_argument("--processes", type=int, default=7)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    _common.add_results_arguments(p, RESULTS, "warmup.md", "warmup_first_request.png")
    p.add_argument("--quick", action="store_true", help="frappe, 2 processes")
    args = p.parse_args(argv)
    if args.quick:
        args.datasets, args.processes = ["frappe"], 2
    records = _common.load_jsonl(args.cache)
    if not args.report_only:
        for dataset in args.datasets:
            if not args.redo and any(r["dataset"] == dataset for r in records):
                continue
            print(f"warmup: {dataset} ...", flush=True)
            rec = run_one(dataset, args)
            records = [r for r in records if r["dataset"] != dataset] + [rec]
            _common.save_jsonl(args.cache, records)
    print(report(records, args.out, args.plot))
    return records


if __name__ == "__main__":
    main()
