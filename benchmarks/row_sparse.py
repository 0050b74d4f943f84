"""Row-sparse (lazy) optimizers against Keras' dense ones: step time vs vocabulary, and AUC.

    python benchmarks/scaling.py --part steps     # step time, V = 1e4 ... 1e7 (resumable)
    python benchmarks/scaling.py --part auc       # AUC, Adam vs LazyAdam, 3 seeds, Frappe + generated
    python benchmarks/scaling.py --part steps --report-only

Steps: 26 fields, the largest table of V rows and 25 fields of 10 ... 10,000 rows
(the same at every V, so that only the large table changes), ids drawn from a
Zipf law (s = 1.1), batch 1024, MLP 128-64 over 16-dim embeddings. Each
(configuration, V, optimizer) runs in its own fresh process: `fit` with the
configuration's callback on `--steps` steps, the first 10 (tracing, warm-up)
dropped, and the median of the others' wall times. Configurations as in
`scaling.py` (plain Embedding, SSEDS, HAM, AMTL, PME, the orthogonal
regularizer); optimizers `dense` (keras.optimizers.Adam) and `lazy`
(`ked.LazyAdam`, the same hyper-parameters).

AUC: the plain MLP and SSEDS at budget 0.2, with Adam and with LazyAdam, the same
epochs, seeds 0, 1, 2; Frappe (the shared sample) and generated data (1M rows,
a 1e6-row field). Test AUC mean +- std; the difference in units of its
standard error.

Results: benchmarks/results/row_sparse_steps.jsonl, row_sparse_auc.jsonl;
docs/results/row_sparse.md and docs/results/row_sparse_step_time.png.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

import _common

SIZES = (10_000, 100_000, 1_000_000, 10_000_000)
CONFIGS = ("plain", "sseds", "ham", "amtl", "pme", "ortho")
OPTIMIZERS = ("dense", "lazy", "catchup")
OPTIMIZER_NAMES = {"dense": "Adam", "lazy": "LazyAdam", "catchup": "LazyAdam(catch_up=True)"}
BATCH = 1024
D = 16
STEPS_CACHE = os.path.join(_common.ROOT, "benchmarks", "results", "row_sparse_steps.jsonl")
AUC_CACHE = os.path.join(_common.ROOT, "benchmarks", "results", "row_sparse_auc.jsonl")
OUT = os.path.join(_common.DOCS, "row_sparse.md")
JIT = os.environ.get("ROW_SPARSE_JIT", "auto")
SMALL = np.round(np.geomspace(10, 10_000, 25)).astype(int).tolist()


def vocab_sizes(top: int) -> list[int]:
    return [top] + SMALL


def zipf_ids(rng, vocab: int, n: int) -> np.ndarray:
    # rank r has weight r^-1.1; a random permutation of the ids maps ranks to values
    ranks = rng.zipf(1.1, size=n)
    ranks = ranks[ranks <= vocab]
    while ranks.size < n:
        more = rng.zipf(1.1, size=n)
        ranks = np.concatenate([ranks, more[more <= vocab]])
    return ((ranks[:n] - 1) * 2654435761 % vocab).astype(np.int64)  # a fixed scramble of the ranks


def optimizer(kind: str, lr: float = 1e-3):
    import keras_embdim as ked

    if kind == "dense":
        return ked.keras.optimizers.Adam(lr)
    return ked.LazyAdam(lr, catch_up=kind == "catchup")


def search_setup(config: str, budget: float, counts=None):
    """(embedding factory for build_mlp, callbacks) of a configuration."""
    import keras_embdim as ked

    if config == "plain":
        return "plain", []
    if config == "sseds":
        return "prunable", [ked.SingleShotPruner(budget, warmup_steps=5, scoring_steps=1_000_000, verbose=0)]
    if config == "ham":
        return (lambda v, dim, n: ked.HardMaskEmbedding(v, dim, field_names=n, name="embedding"),
                [ked.HardMaskSearch(budget, verbose=0)])
    if config == "amtl":
        return (lambda v, dim, n: ked.TwinsMaskLayer(ked.PrunableEmbedding(v, dim, field_names=n),
                                                     frequencies=counts, name="embedding"),
                [ked.TwinsMaskSearch(budget, verbose=0)])
    if config == "pme":
        return "prunable", [ked.PMEPruner(budget, rotate=False, verbose=0)]
    if config == "ortho":
        return "prunable", [ked.OrthogonalRegularizer(1e-3)]
    raise ValueError(config)


def step_worker(config: str, top: int, opt: str, steps: int) -> dict:
    import tensorflow as tf

    import keras_embdim as ked
    from factories import StepTimer
    from keras_embdim import keras

    rng = np.random.default_rng(0)
    vocab = vocab_sizes(top)
    rows = BATCH * 32
    x = np.stack([zipf_ids(rng, v, rows) for v in vocab], axis=1)
    y = (rng.random(rows) < 0.25).astype(np.float32)
    names = [f"f{i:02d}" for i in range(len(vocab))]
    counts = [np.bincount(x[:, i], minlength=v) for i, v in enumerate(vocab)]
    keras.utils.set_random_seed(0)
    emb, callbacks = search_setup(config, 0.1, counts)
    model = ked.models.build_mlp(vocab, names, embedding_dim=D, embedding=emb)
    model.compile(optimizer=optimizer(opt), loss="binary_crossentropy", jit_compile=JIT)
    ds = tf.data.Dataset.from_tensor_slices(({n: x[:, i] for i, n in enumerate(names)}, y)).batch(BATCH).repeat()
    timer = StepTimer()
    rss0 = _common.rss_bytes()
    model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=callbacks + [timer])
    times = np.asarray(timer.times[10:])
    return {"step_median": float(np.median(times)), "step_p90": float(np.percentile(times, 90)),
            "steps_timed": int(times.size), "peak_rss": _common.peak_rss_bytes(), "rss_start": rss0,
            "table_bytes": int(sum(vocab)) * D * 4}


def run_steps(sizes, configs, optimizers, steps: int, cache: str = STEPS_CACHE, redo: bool = False) -> None:
    done = set() if redo else {(r["vocab"], r["config"], r["optimizer"]) for r in _common.load_jsonl(cache)}
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    for top in sizes:
        for config in configs:
            for opt in optimizers:
                if (top, config, opt) in done:
                    continue
                t0 = time.perf_counter()
                proc = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "--worker", config, str(top), opt, str(steps)],
                    capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
                lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
                if proc.returncode != 0 or not lines:
                    raise RuntimeError(f"V={top} {config} {opt} failed:\n{proc.stderr[-3000:]}")
                rec = {"vocab": top, "config": config, "optimizer": opt, **json.loads(lines[-1]),
                       "wall_seconds": time.perf_counter() - t0, "commit": _common.git_commit()}
                with open(cache, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                print(f"V={top:,} {config} {opt}: step {rec['step_median'] * 1e3:.1f} ms "
                      f"(peak RSS {rec['peak_rss'] / 2**20:.0f} MB)", flush=True)


# ------------------------------------------------------------------- AUC part
def auc_worker(dataset: str, config: str, opt: str, seed: int) -> dict:
    import keras_embdim as ked
    from keras_embdim import keras
    from keras_embdim.metrics import roc_auc

    if dataset == "frappe":
        d = ked.data.load_frappe(seed=0)  # from KERAS_EMBDIM_DATA (_common points it at ../shared/data)
        epochs, batch = 3, 512
    else:
        d = ked.data.make_synthetic_ctr(num_rows=1_000_000, vocab_sizes=[1_000_000] + SMALL[:9], seed=0)
        epochs, batch = 1, 1024
    keras.utils.set_random_seed(seed)
    emb, callbacks = search_setup(config, 0.2)
    if config == "sseds":
        callbacks = [ked.SingleShotPruner(0.2, verbose=0)]
    model = ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=D, embedding=emb)
    model.compile(optimizer=optimizer(opt), loss="binary_crossentropy")
    x, y = d.train
    t0 = time.perf_counter()
    model.fit(d.inputs(x), y, batch_size=batch, epochs=epochs, verbose=0, callbacks=callbacks)
    seconds = time.perf_counter() - t0
    xt, yt = d.test
    auc = roc_auc(yt, model.predict(d.inputs(xt), batch_size=8192, verbose=0).reshape(-1))
    return {"auc": float(auc), "train_seconds": seconds, "rows": int(len(y))}


def run_auc(datasets, configs, seeds, optimizers=OPTIMIZERS, cache: str = AUC_CACHE, redo: bool = False) -> None:
    """Train each (dataset, configuration, seed, optimizer) not in `cache` (all of them with `redo`;
    the report takes the latest record of each)."""
    done = set() if redo else {(r["dataset"], r["config"], r["optimizer"], r["seed"])
                               for r in _common.load_jsonl(cache)}
    for dataset in datasets:
        for config in configs:
            for seed in seeds:
                for opt in optimizers:
                    if (dataset, config, opt, seed) in done:
                        continue
                    proc = subprocess.run(
                        [sys.executable, os.path.abspath(__file__), "--auc-worker", dataset, config, opt, str(seed)],
                        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
                    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
                    if proc.returncode != 0 or not lines:
                        raise RuntimeError(f"{dataset} {config} {opt} {seed} failed:\n{proc.stderr[-3000:]}")
                    rec = {"dataset": dataset, "config": config, "optimizer": opt, "seed": seed,
                           **json.loads(lines[-1]), "commit": _common.git_commit()}
                    with open(cache, "a") as fh:
                        fh.write(json.dumps(rec) + "\n")
                    print(f"{dataset} {config} {opt} seed {seed}: AUC {rec['auc']:.4f} "
                          f"({rec['train_seconds']:.0f} s)", flush=True)


# --------------------------------------------------------------------- report
def report(out: str = OUT) -> str:
    steps = {}
    for r in _common.load_jsonl(STEPS_CACHE):
        steps[(r["vocab"], r["config"], r["optimizer"])] = r
    aucs: dict = {}
    for r in _common.load_jsonl(AUC_CACHE):
        aucs.setdefault((r["dataset"], r["config"], r["optimizer"]), {})[r["seed"]] = r["auc"]
    sizes = sorted({k[0] for k in steps})
    lines = ["# Row-sparse (lazy) optimizers: step time against the vocabulary, and AUC", "",
             "Generated by `python benchmarks/scaling.py --part steps` / `--part auc` "
             "(`benchmarks/row_sparse.py`) from `benchmarks/results/row_sparse_*.jsonl`, never by hand. "
             "26 fields: one table of V rows and 25 of 10 ... 10,000 rows (the same at every V), Zipf ids, "
             "batch 1024, MLP 128-64 over 16-dim embeddings; each (configuration, V, optimizer) in a fresh "
             "process, the median wall time of its steps after the first 10. `dense`: keras.optimizers.Adam; "
             "`lazy`: ked.LazyAdam (the rows of the batch only).", "",
             "## Step time (ms, median)", "",
             "| configuration | optimizer | " + " | ".join(f"V={v:,}" for v in sizes) + " | V max / V min |",
             "|---|---|" + "---|" * (len(sizes) + 1)]
    targets = []
    for config in CONFIGS:
        for opt in OPTIMIZERS:
            row = [steps.get((v, config, opt)) for v in sizes]
            if not any(row):
                continue
            cells = [f"{r['step_median'] * 1e3:.1f}" if r else "" for r in row]
            ratio = (row[-1]["step_median"] / row[0]["step_median"]) if row[0] and row[-1] else None
            lines.append(f"| {config} | {opt} | " + " | ".join(cells) + f" | {ratio:.2f} |" if ratio else
                         f"| {config} | {opt} | " + " | ".join(cells) + " | |")
            if opt != "dense" and ratio is not None:
                targets.append((f"{config}: {opt} step at V={sizes[-1]:,} <= 1.5 x at V={sizes[0]:,}", ratio <= 1.5,
                                f"{ratio:.2f}"))
    lines += ["", "Peak RSS at the largest V (MB): " + ", ".join(
        f"{c}/{o} {steps[(sizes[-1], c, o)]['peak_rss'] / 2**20:.0f}" for c in CONFIGS for o in OPTIMIZERS
        if (sizes[-1], c, o) in steps) + "." if sizes else ""]
    if aucs:
        lines += ["", "## AUC: Adam vs the row-sparse optimizers (same epochs, same seeds)", "",
                  "| dataset | configuration | Adam | row-sparse optimizer | its AUC | difference | "
                  "/ its standard error |",
                  "|---|---|---|---|---|---|---|"]
        for (dataset, config) in sorted({(k[0], k[1]) for k in aucs}):
            for opt in OPTIMIZERS[1:]:
                dense = aucs.get((dataset, config, "dense"), {})
                sparse = aucs.get((dataset, config, opt), {})
                seeds = sorted(set(dense) & set(sparse))  # paired by seed: the same seeds on both sides
                a = np.array([dense[k] for k in seeds])
                b = np.array([sparse[k] for k in seeds])
                if a.size < 2:
                    continue
                diff = b.mean() - a.mean()
                se = float(np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size))
                z = diff / se if se > 0 else float("inf")
                lines.append(f"| {dataset} | {config} | {a.mean():.4f} +- {a.std(ddof=1):.4f} | "
                             f"{OPTIMIZER_NAMES[opt]} | {b.mean():.4f} +- {b.std(ddof=1):.4f} | {diff:+.4f} | "
                             f"{z:+.2f} ({len(seeds)} seeds) |")
                targets.append((f"{dataset} {config}: |AUC {OPTIMIZER_NAMES[opt]} - Adam| within 2 standard errors",
                                 abs(z) <= 2, f"{diff:+.4f} ({z:+.2f} SE)"))
    lines += ["", "## Targets (issue 17)", "", f"{sum(ok for _, ok, _ in targets)} of {len(targets)} met.", ""]
    lines += _common.targets_table(targets)
    png = plot(steps, os.path.dirname(out))
    if png:
        lines += ["", f"![step time vs V]({os.path.basename(png)})"]
    text = "\n".join(lines) + "\n"
    with open(out, "w") as fh:
        fh.write(text)
    return text


def plot(steps: dict, folder: str) -> str | None:
    if not steps:
        return None
    from keras_embdim.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for config in CONFIGS:
        for opt, style in (("dense", "--"), ("lazy", "-"), ("catchup", ":")):
            pts = sorted((v, r["step_median"] * 1e3) for (v, c, o), r in steps.items() if c == config and o == opt)
            if pts:
                ax.plot(*zip(*pts), style, marker="o", label=f"{config} {opt}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rows of the largest table (V)")
    ax.set_ylabel("median step (ms), batch 1024")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path = os.path.join(folder, "row_sparse_step_time.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    if sys.argv[1] == "--worker":
        print(json.dumps(step_worker(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))))
    elif sys.argv[1] == "--auc-worker":
        print(json.dumps(auc_worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))))
