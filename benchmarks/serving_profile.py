"""Where a served call's time goes: op time by op type, ours against `model.export()`.

    python benchmarks/serving_profile.py [--dataset criteo] [--budget 0.1] [--batches 1 512 4096]

`benchmarks/serving.py` times whole calls; this script explains its ratios.
It trains and exports the same models (`serving.export_models`: full dims,
uniform dims of the same parameter count, uniform dims as wide as the
searched MLP input, the folded per-field export, the per-value export), then
loads each SavedModel in a fresh TensorFlow-only process with the TF1 session
loader (as TF Serving does) and runs its `serving_default` signature with
`RunOptions(trace_level=FULL_TRACE)`: the step stats give every executed op's
time. The exports are run round-robin, one traced call each in turn.
Reported: the number of ops a call runs, the sum of their times per call
(median over `--reps` rounds; the call's wall time also holds the session's
fixed cost, the same for every export) and the median time of each op type.
Writes
docs/results/serving_profile.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import _common
from serving import SESSION_LOADER

# op types reported in their own column; the rest is summed in "other"
COLUMNS = ("MatMul", "ResourceGather", "GatherV2", "ResourceGatherNd", "ConcatV2", "Pack")
LABELS = {"full": "full (model.export)", "uniform": "uniform, same parameters (model.export)",
          "uniform_width": "uniform, as wide as searched (model.export)", "sseds": "per field, folded",
          "pme": "per value, folded"}

PROFILER = SESSION_LOADER + r'''
import collections, statistics
trace = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
out = {name: {} for name in sessions}
for batch in spec["batches"]:
    calls = {name: session_call(name, batch) for name in sessions}
    for sess, fetch, feed in calls.values():
        for _ in range(10):
            sess.run(fetch, feed)
    per_call = {name: [] for name in calls}
    for _ in range(spec["reps"]):  # round-robin: every export sees the same machine state
        for name, (sess, fetch, feed) in calls.items():
            meta = tf.compat.v1.RunMetadata()
            sess.run(fetch, feed, options=trace, run_metadata=meta)
            by_type, count = collections.Counter(), 0
            for dev in meta.step_stats.dev_stats:
                for node in dev.node_stats:
                    label = node.timeline_label
                    op = label.split("=", 1)[1].split("(", 1)[0].strip() if "=" in label else "other"
                    by_type[op] += node.op_end_rel_micros - node.op_start_rel_micros
                    count += 1
            per_call[name].append((by_type, count))
    for name, got in per_call.items():
        ops = sorted({op for c, _ in got for op in c})
        out[name][str(batch)] = {"total": statistics.median(sum(c.values()) for c, _ in got),
                                 "ops": statistics.median(n for _, n in got),
                                 "by_type": {op: statistics.median(c.get(op, 0) for c, _ in got) for op in ops}}
print(json.dumps(out))
'''


def category(op: str) -> str:
    """The report column of a TF op type (`_MklNativeFusedMatMul` and friends are `MatMul`)."""
    if "MatMul" in op:
        return "MatMul"
    return op if op in COLUMNS else "other"


def split(by_type: dict) -> dict:
    """Op time summed by report column."""
    out = {c: 0.0 for c in (*COLUMNS, "other")}
    for op, us in by_type.items():
        out[category(op)] += us
    return out


def profile(paths: dict, data, batches, reps: int, seed: int = 0) -> dict:
    """`{export: {batch: {"total": us, "ops": ops run, "by_type": {op type: us}}}}` (medians over `reps`
    calls), from a fresh TensorFlow-only process."""
    import serving

    return serving.run_tf_only(PROFILER, {"paths": paths, "reps": reps}, data, batches, seed, timeout=3600)


def main() -> None:
    import serving

    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="criteo", choices=["criteo", "frappe"])
    p.add_argument("--cap", type=int, default=100_000, help="criteo: largest vocabulary")
    p.add_argument("--budget", type=float, default=0.1)
    p.add_argument("--batches", nargs="+", type=int, default=[1, 512, 4096])
    p.add_argument("--rows", type=int, default=200_000, help="criteo: generated rows")
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(_common.DOCS, "serving_profile.md"))
    a = p.parse_args()
    data = serving.load(a.dataset, a.cap, a.rows, a.seed)
    tmp = tempfile.mkdtemp(prefix="ked-profile-")
    try:
        exports = serving.export_models(data, a.budget, tmp, a.seed)
        names = [k for k in LABELS if k in exports]
        result = profile({k: exports[k]["path"] for k in names}, data, a.batches, a.reps, a.seed)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for batch in a.batches:
        for name in names:
            r = result[name][str(batch)]
            parts = split(r["by_type"])
            rows.append(f"| {batch} | {LABELS[name]} | {r['ops']:.0f} | {r['total']:.0f} | "
                        + " | ".join(f"{parts[c]:.0f}" for c in (*COLUMNS, "other")) + " |")
    big = str(max(a.batches))
    footer = [f"The largest ops in \"other\" at batch {big} (us per call):", ""]
    for name in names:
        rest = {op: us for op, us in result[name][big]["by_type"].items() if category(op) == "other"}
        top = sorted(rest.items(), key=lambda kv: -kv[1])[:6]
        footer.append(f"- {LABELS[name]}: " + ", ".join(f"{op} {us:.0f}" for op, us in top))
    width = exports["uniform_width"]
    where = f"criteo-shaped, vocabularies capped at {a.cap:,}" if a.dataset == "criteo" else a.dataset
    text = _common.write_table(
        a.out,
        "Where a served call's time goes",
        f"Generated by `python benchmarks/serving_profile.py --dataset {a.dataset} --budget {a.budget} --batches "
        f"{' '.join(map(str, a.batches))}` ({where}; the models of `benchmarks/serving.py` at budget {a.budget}: MLP "
        f"128-64 over 16-dim embeddings; the uniform model as wide as the searched one has {width['dims']} dims, the "
        f"search kept {width['searched_width']} columns). Each SavedModel run through the TF1 session loader in a "
        "fresh TensorFlow-only process, the exports round-robin; the ops a call runs (constants and variable "
        "handles included: every op costs the executor a fixed amount, most of the op time at batch 1) and "
        f"microseconds of op time per call (sum over the executed ops, median of {a.reps} rounds; the columns: "
        "median per op type, so they need not add up). MatMul includes oneDNN's fused MatMul + bias + activation; "
        "ResourceGather reads rows straight from a variable, GatherV2 from a tensor: Keras 3's Embedding reads "
        "its table and gathers with GatherV2, our per-field tables use ResourceGather, one per kept width, each "
        "stacking its own fields from the request's per-field inputs (Pack); ResourceGatherNd is the per-value "
        "element read. A "
        "call's wall time adds the session's fixed cost, the same for every export.",
        ["batch", "export", "ops run", "op time (us)", *COLUMNS, "other"],
        rows,
        footer=tuple(footer),
    )
    print(text)


if __name__ == "__main__":
    main()
