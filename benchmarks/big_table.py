"""Every search over one 1e7-row table on this machine: completes, peak RSS, export memory.

    python benchmarks/scaling.py --part big                 # plain + the four searches (resumable)
    python benchmarks/scaling.py --part big --report-only   # rewrite docs/results/big_table.md

Data (generated once into a temp folder, never into the project): 26 fields,
one of `--top` rows (default 1e7) and the 25 small fields of
`row_sparse.SMALL` (10 ... 10,000 rows), ids drawn from a Zipf law (s = 1.1),
2M training rows and 200k test rows; labels from a planted logistic model
(a weight per value of every field, `N(0, 0.5)` for the large field and
`N(0, 0.3)` for the others, bias -1.1).

Each configuration runs in its own fresh process, one after the other: the MLP
(128-64 over 16-dim embeddings) with `ked.LazyAdam(1e-3)`, batch 1024, one
epoch with the search's callback at its defaults and budget 0.1 (every search
ends within the epoch; `plain`: a full-size `PrunableEmbedding` and no
search, chosen when Keras 3's own Embedding still copied its whole table every
LazyAdam step, before the optimizers' copy-on-read change), then the test AUC and `export_compact` with its
defaults. Measured: the epoch's wall time, training peak RSS (the process'
high-water mark) against plain training's, and the export's own added peak
RSS (high-water mark reset right before it, minus the RSS before it) against
one full table's bytes (1e7 x 16 x 4 B = 640 MB).

Results: benchmarks/results/big_table.jsonl, docs/results/big_table.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import _common
import row_sparse

CONFIGS = ("plain", "sseds", "ham", "amtl", "pme")
TOP = 10_000_000
ROWS, TEST_ROWS = 2_000_000, 200_000
BUDGET = 0.1
D = 16
CACHE = os.path.join(_common.ROOT, "benchmarks", "results", "big_table.jsonl")
OUT = os.path.join(_common.DOCS, "big_table.md")
DATA_DIR = os.path.join(tempfile.gettempdir(), "keras_embdim_big_table")


def make_data(top: int, rows: int = ROWS, test_rows: int = TEST_ROWS, seed: int = 0) -> str:
    """The data set, written once to a temp folder; returns its path."""
    path = os.path.join(DATA_DIR, f"v{top}_r{rows}_s{seed}.npz")
    if os.path.exists(path):
        return path
    rng = np.random.default_rng(seed)
    vocab = row_sparse.vocab_sizes(top)
    n = rows + test_rows
    x = np.stack([row_sparse.zipf_ids(rng, v, n).astype(np.int32) for v in vocab], axis=1)
    logit = np.full(n, -1.1, np.float32)
    for f, v in enumerate(vocab):
        weights = rng.normal(0.0, 0.5 if f == 0 else 0.3, v).astype(np.float32)
        logit += weights[x[:, f]]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    os.makedirs(DATA_DIR, exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, x=x[:rows], y=y[:rows], xt=x[rows:], yt=y[rows:], vocab=np.asarray(vocab))
    os.replace(tmp, path)
    return path


def setup(config: str, counts):
    """(embedding factory for build_mlp, callbacks): each search at its defaults; `plain` is a
    `PrunableEmbedding` without a search (a full-size Embedding that gathers from its variable;
    chosen when Keras 3's own Embedding copied its whole table on every LazyAdam step, 646 ms
    per step at 1e7 rows, which the optimizers' copy-on-read change removed: docs/guides/scaling.md)."""
    import keras_embdim as ked

    if config == "plain":
        return "prunable", []
    if config == "sseds":
        return "prunable", [ked.SingleShotPruner(BUDGET, verbose=0)]
    return row_sparse.search_setup(config, BUDGET, counts)


def worker(config: str, path: str) -> dict:
    import tensorflow as tf

    import keras_embdim as ked
    from keras_embdim import keras
    from keras_embdim.metrics import roc_auc

    z = np.load(path)
    x, y, xt, yt, vocab = z["x"], z["y"], z["xt"], z["yt"], z["vocab"].tolist()
    names = [f"f{i:02d}" for i in range(len(vocab))]
    counts = [np.bincount(x[:, i], minlength=v) for i, v in enumerate(vocab)] if config == "amtl" else None
    keras.utils.set_random_seed(0)
    emb, callbacks = setup(config, counts)
    del counts
    model = ked.models.build_mlp(vocab, names, embedding_dim=D, embedding=emb)
    model.compile(optimizer=ked.LazyAdam(1e-3), loss="binary_crossentropy")
    ds = tf.data.Dataset.from_tensor_slices(({n: x[:, i] for i, n in enumerate(names)}, y)).batch(1024)
    t0 = time.perf_counter()
    model.fit(ds, epochs=1, verbose=0, callbacks=callbacks)
    rec = {"epoch_seconds": time.perf_counter() - t0, "train_peak_rss": _common.peak_rss_bytes(),
           "table_bytes": int(max(vocab)) * D * 4, "all_tables_bytes": int(sum(vocab)) * D * 4}
    rec["auc"] = float(roc_auc(yt, model.predict({n: xt[:, i] for i, n in enumerate(names)}, batch_size=8192,
                                                 verbose=0).reshape(-1)))
    if callbacks:
        import gc

        gc.collect()
        r = callbacks[0].result
        rec["kept_fraction"] = r.kept_fraction
        before = _common.rss_bytes()
        reset = _common.reset_peak_rss()
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            e = ked.export_compact(model, os.path.join(out, config), sample_inputs={n: xt[:1000, i] for i, n in
                                                                                      enumerate(names)}, verbose=0)
            rec["export_seconds"] = time.perf_counter() - t0
        rec["export_added_rss"] = max(0, _common.peak_rss_bytes() - before) if reset else None
        rec["export_max_abs_diff"] = e.max_abs_diff
        rec["bytes_ratio"] = e.embedding_overhead
        rec["layout"] = next(iter(e.layouts.values()))
    return rec


def run(configs, top: int = TOP, cache: str = CACHE, redo: bool = False) -> None:
    """Run each configuration not in `cache` (all of them with `redo`; the report takes the latest record)."""
    done = set() if redo else {(r["top"], r["config"]) for r in _common.load_jsonl(cache)}
    todo = [c for c in configs if (top, c) not in done]
    if not todo:
        return
    t0 = time.perf_counter()
    path = make_data(top)
    print(f"big table V={top:,}: data ready in {time.perf_counter() - t0:.0f} s", flush=True)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    for config in todo:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", config, path],
                              capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"big table {config} failed:\n{proc.stderr[-3000:]}")
        rec = {"top": top, "config": config, **json.loads(lines[-1]), "wall_seconds": time.perf_counter() - t0,
               "commit": _common.git_commit()}
        with open(cache, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        print(f"big table {config}: epoch {rec['epoch_seconds']:.0f} s, peak RSS "
              f"{rec['train_peak_rss'] / 2**20:.0f} MB, AUC {rec['auc']:.4f}", flush=True)


def _fmt(value, spec: str) -> str:
    return "" if value is None else spec.format(value)


def report(cache: str = CACHE, out: str = OUT) -> str:
    latest = {}
    for r in _common.load_jsonl(cache):
        latest[(r["top"], r["config"])] = r
    lines = ["# One 1e7-row table: every search completes on one 2-core machine", "",
             "Generated by `python benchmarks/scaling.py --part big` (`benchmarks/big_table.py`) from "
             "`benchmarks/results/big_table.jsonl`, never by hand. 26 fields (one of V rows, 25 of 10 ... 10,000 "
             "rows), 2M training rows, Zipf ids, planted logistic labels; MLP 128-64 over 16-dim embeddings, "
             "ked.LazyAdam, batch 1024, one epoch, budget 0.1, each configuration in a fresh process; `plain`: "
             "a PrunableEmbedding without a search (a full-size table that gathers its rows). "
             "Export added: the export's peak RSS over the RSS right before it.", "",
             "| V | configuration | epoch s | training peak RSS MB | / plain | test AUC | export s | "
             "export added MB | / one table | kept | bytes / kept x 4 B |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    targets = []
    for top in sorted({k[0] for k in latest}):
        plain = latest.get((top, "plain"))
        for config in CONFIGS:
            r = latest.get((top, config))
            if r is None:
                continue
            rss = r["train_peak_rss"] / plain["train_peak_rss"] if plain else None
            added = r.get("export_added_rss")
            per_table = added / r["table_bytes"] if added is not None else None
            lines.append(" | ".join([
                f"| {top:,}", config, f"{r['epoch_seconds']:.0f}", f"{r['train_peak_rss'] / 2**20:.0f}",
                _fmt(rss, "{:.2f}"), f"{r['auc']:.4f}", _fmt(r.get("export_seconds"), "{:.0f}"),
                _fmt(None if added is None else added / 2**20, "{:.0f}"), _fmt(per_table, "{:.2f}"),
                _fmt(r.get("kept_fraction"), "{:.3f}"),
                _fmt(r.get("bytes_ratio"), "{:.3f}") + (f" ({r['layout']})" if "layout" in r else ""),
            ]) + " |")
            if config == "plain":
                continue
            if rss is not None:
                targets.append((f"V={top:,} {config}: training peak RSS <= 1.5 x plain", rss <= 1.5, f"{rss:.2f}"))
            if per_table is not None:
                targets.append((f"V={top:,} {config}: export added peak RSS <= one table", per_table <= 1.0,
                                f"{per_table:.2f}"))
    lines += ["", "## Targets (issue 17)", "", f"{sum(ok for _, ok, _ in targets)} of {len(targets)} met.", "",
              *_common.targets_table(targets)]
    text = "\n".join(lines) + "\n"
    with open(out, "w") as fh:
        fh.write(text)
    return text


if __name__ == "__main__":
    if sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], sys.argv[3])))
