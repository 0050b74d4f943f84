"""Soak: memory over repeated export/load cycles and a long search; concurrent predictions.

    python benchmarks/soak.py [--cycles 60] [--search-steps 3000] [--threads 8] [--calls 200]

1. Export/load cycles: one searched model (synthetic CTR data, 26 fields,
   PrunableEmbedding + PMEPruner(0.2), per-value layout) is exported
   `--cycles` times with `export_compact(overwrite=True)` (verified each time),
   loaded with `tf.saved_model.load` and asked for a prediction; the process's
   resident memory (VmRSS, after `gc.collect()`) is read after every cycle.
2. A long search: HardMaskSearch searching for `--search-steps` steps
   (`search_epochs` large), RSS read every 100 steps, and plain training of
   the same model with a plain Embedding for as many steps, each in a fresh
   process, side by side.
3. Concurrent predictions: one loaded export, `--threads` threads each making
   `--calls` calls of random batches; every answer is compared with the same
   request answered on one thread.

Memory growth is the slope of a least-squares line over the second half of
each series (the first half includes warm-up: tracing caches, allocator
pools). Writes docs/results/soak.md and docs/results/soak_rss.png.
"""

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import tensorflow as tf

import _common  # noqa: F401  (finds ../shared/data)

import keras_embdim as ked  # noqa: E402
from keras_embdim import keras  # noqa: E402


def rss_mb() -> float:
    """Resident memory after a full garbage collection (without it the cycles' Python garbage,
    freed in batches, draws a saw-tooth that hides or fakes a trend)."""
    gc.collect()
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def slope(ys) -> float:
    ys = np.asarray(ys[len(ys) // 2 :], np.float64)
    if len(ys) < 2:
        return 0.0
    return float(np.polyfit(np.arange(len(ys)), ys, 1)[0])


class RssEvery(keras.callbacks.Callback):
    def __init__(self, every):
        super().__init__()
        self.every, self.step, self.rss = every, 0, []

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every == 0:
            self.rss.append(rss_mb())


def long_run(kind: str, steps: int) -> list[float]:
    """RSS every 100 steps of `steps` training steps in a child process: "plain" (a plain
    Embedding model) or "ham" (HardMaskEmbedding + HardMaskSearch searching throughout)."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", kind, "--search-steps", str(steps)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def child(kind: str, steps: int) -> None:
    data = ked.data.make_synthetic_ctr(num_rows=200_000, num_fields=26, min_vocab=10, max_vocab=50_000, seed=0)
    keras.utils.set_random_seed(0)
    emb = "plain" if kind == "plain" else (
        lambda v, d, n: ked.HardMaskEmbedding(v, d, field_names=n, name="embedding"))
    model = ked.models.compile_ctr(ked.models.build_mlp(data.vocab_sizes, data.field_names, embedding_dim=16,
                                                        embedding=emb))
    probe = RssEvery(100)
    per_epoch = len(data.train[1]) // 1024
    cbs = [ked.HardMaskSearch(0.2, search_epochs=10**6, verbose=0)] if kind == "ham" else []
    model.fit(data.dataset("train", batch_size=1024).repeat(), epochs=max(1, steps // per_epoch),
              steps_per_epoch=per_epoch, verbose=0, callbacks=cbs + [probe])
    print(json.dumps(probe.rss))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--child", choices=["plain", "ham"], help=argparse.SUPPRESS)
    p.add_argument("--cycles", type=int, default=60)
    p.add_argument("--search-steps", type=int, default=3000)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--calls", type=int, default=200)
    a = p.parse_args()
    if a.child:
        return child(a.child, a.search_steps)
    data = ked.data.make_synthetic_ctr(num_rows=200_000, num_fields=26, min_vocab=10, max_vocab=50_000, seed=0)
    tmp = tempfile.mkdtemp()
    try:
        # 1. export/load cycles
        keras.utils.set_random_seed(0)
        model = ked.models.compile_ctr(ked.models.build_mlp(data.vocab_sizes, data.field_names, embedding_dim=16))
        pme = ked.PMEPruner(0.2, rotate=False, verbose=0)  # as the page was measured (before rotate="auto")
        model.fit(data.dataset("train", batch_size=1024), epochs=2, verbose=0, callbacks=[pme])
        sample = data.inputs(data.test[0][:512])
        req = {k: tf.constant(v) for k, v in sample.items()}
        path = os.path.join(tmp, "export")
        cycle_rss, cycle_s = [], []
        for i in range(a.cycles):
            t = time.perf_counter()
            ked.export_compact(model, path, version=None, overwrite=True, sample_inputs=sample, verbose=0)
            fn = tf.saved_model.load(path).signatures["serving_default"]
            fn(**req)
            del fn
            cycle_s.append(time.perf_counter() - t)
            cycle_rss.append(rss_mb())
            print(f"cycle {i}: {cycle_rss[-1]:.0f} MB, {cycle_s[-1]:.2f} s", flush=True)

        # 2. a long search, and plain training of the same length, each in a fresh process
        series = {kind: long_run(kind, a.search_steps) for kind in ("plain", "ham")}

        # 3. concurrent predictions on one loaded export
        fn = tf.saved_model.load(path).signatures["serving_default"]
        rng = np.random.default_rng(0)
        batches = [data.inputs(data.test[0][rng.integers(0, len(data.test[0]), int(b))])
                   for b in rng.integers(1, 512, 32)]
        reference = [fn(**{k: tf.constant(v) for k, v in b.items()})["ctr"].numpy() for b in batches]
        errors, mismatches, done = [], [0], [0]
        lock = threading.Lock()

        def worker(seed):
            r = np.random.default_rng(seed)
            try:
                for _ in range(a.calls):
                    i = int(r.integers(0, len(batches)))
                    out = fn(**{k: tf.constant(v) for k, v in batches[i].items()})["ctr"].numpy()
                    with lock:
                        done[0] += 1
                        if not np.array_equal(out, reference[i]):
                            mismatches[0] += 1
            except Exception as e:  # noqa: BLE001 - reported in the table
                errors.append(repr(e))

        t = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(s,)) for s in range(a.threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    from keras_embdim.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].plot(np.arange(1, len(cycle_rss) + 1), cycle_rss, marker=".")
    axes[0].set_xlabel("export/load cycle")
    axes[0].set_ylabel("RSS (MB)")
    for kind, rss in series.items():
        axes[1].plot(np.arange(1, len(rss) + 1) * 100, rss, marker=".", label=kind)
    axes[1].legend()
    axes[1].set_xlabel("training step")
    axes[1].set_ylabel("RSS (MB)")
    fig.tight_layout()
    fig.savefig(os.path.join(_common.DOCS, "soak_rss.png"), dpi=100)
    plt.close(fig)

    rows = [
        f"| export/load cycles | {len(cycle_rss)} | {cycle_rss[0]:.0f} | {cycle_rss[len(cycle_rss) // 2]:.0f} | "
        f"{cycle_rss[-1]:.0f} | {slope(cycle_rss):+.2f} MB per cycle |",
        *[
            f"| {'long search (HAM)' if kind == 'ham' else 'plain training, same steps'} | {len(rss) * 100} steps | "
            f"{rss[0]:.0f} | {rss[len(rss) // 2]:.0f} | {rss[-1]:.0f} | {slope(rss) * 10:+.2f} MB per 1,000 steps |"
            for kind, rss in series.items()
        ],
    ]
    _common.write_table(
        os.path.join(_common.DOCS, "soak.md"),
        "Soak: memory over export/load cycles and a long search; concurrent predictions",
        f"Generated by `python benchmarks/soak.py --cycles {a.cycles} --search-steps {a.search_steps} --threads "
        f"{a.threads} --calls {a.calls}` (synthetic CTR data: 26 fields, {sum(data.vocab_sizes):,} embedding rows, "
        "D = 16). RSS = the process's VmRSS after `gc.collect()`. Growth = slope of a least-squares line over the second half of the "
        "series (the first half includes warm-up).",
        ["run", "length", "RSS first (MB)", "RSS middle (MB)", "RSS last (MB)", "growth"],
        rows,
        (
            f"Peak RSS of the long search / peak RSS of plain training: {max(series['ham']) / max(series['plain']):.3f} "
            "(each in a fresh process; the plain Embedding model trains the same steps on the same data).",
            "",
            f"Export/load cycle: median {np.median(cycle_s):.2f} s (export, verification, load, one prediction).",
            "",
            f"Concurrent predictions: {a.threads} threads x {a.calls} calls on one loaded export, {done[0]} calls in "
            f"{wall:.1f} s, {mismatches[0]} answers different from the single-thread answer, "
            f"{len(errors)} errors{': ' + errors[0] if errors else ''}.",
            "",
            "![RSS](soak_rss.png)",
        ),
    )
    print(open(os.path.join(_common.DOCS, "soak.md")).read())


if __name__ == "__main__":
    main()
