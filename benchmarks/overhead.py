"""Training-time overhead of keras_embdim's layers and callbacks vs a plain Embedding.

    python benchmarks/overhead.py [--dataset synthetic|frappe] [--rows 600000] [--rounds 15] [--steps 40] [--batch 1024]

Side by side in one process, on the same model (MLP 128-64 over D = 16 field
embeddings) and data:
- plain: keras.layers.Embedding (the reference);
- prunable: PrunableEmbedding, no callback (mask multiply and id checks);
- ham_search: HardMaskEmbedding + HardMaskSearch, searching throughout;
- ham_search+ortho: the same plus OrthogonalRegularizer;
- sseds: PrunableEmbedding + SingleShotPruner(0.1) (scores and prunes in round 1);
- pme_search: PrunableEmbedding + PMEPruner(0.1), accumulating entry importance throughout;
- amtl_search: TwinsMaskLayer(PrunableEmbedding) + TwinsMaskSearch(0.1), searching
  throughout (twins on every looked-up value, size penalty on a vocabulary sample).

This machine is a VM whose speed changes by up to 1.7x for tens of seconds at a
time (seen: a plain epoch of 11.5 s in one fit and 20.6 s in the next), so the
configurations train round-robin, `--steps` steps each per round: the
measurements of one round lie seconds apart. Per step times come from a
callback (the first step of every fit, which traces, is left out). For each
round the ratio is a configuration's median step time over plain's; the table
gives the median and the quartiles of that ratio over rounds. Writes
docs/results/overhead.md.
"""

import argparse
import os
import statistics
import time

import numpy as np

import _common  # noqa: F401  (finds ../shared/data)

import keras_embdim as ked  # noqa: E402
from keras_embdim import keras  # noqa: E402


class StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._t = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._t)


def ham(v, dim, names):
    return ked.HardMaskEmbedding(v, dim, field_names=names, name="embedding")


def twins(v, dim, names):
    return ked.TwinsMaskLayer(ked.PrunableEmbedding(v, dim, field_names=names), name="embedding")


def configs():
    never = 10**6  # search epochs: the search runs throughout the measurement
    return {
        "plain": ("plain", []),
        "prunable": ("prunable", []),
        "ham_search": (ham, [ked.HardMaskSearch(0.1, search_epochs=never, verbose=0)]),
        "ham_search+ortho": (ham, [ked.HardMaskSearch(0.1, search_epochs=never, verbose=0), ked.OrthogonalRegularizer(1e-3)]),
        "sseds": ("prunable", [ked.SingleShotPruner(0.1, warmup_steps=5, scoring_steps=20, verbose=0)]),
        "pme_search": ("prunable", [ked.PMEPruner(0.1, search_epochs=never, verbose=0)]),
        "amtl_search": (twins, [ked.TwinsMaskSearch(0.1, search_epochs=never, verbose=0)]),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--rows", type=int, default=600_000, help="rows of generated data (--dataset synthetic)")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--out", default=os.path.join(_common.DOCS, "overhead.md"))
    a = p.parse_args()
    if a.dataset == "synthetic":  # CTR-sized: 26 fields, vocabularies up to 100k
        data = ked.data.make_synthetic_ctr(num_rows=a.rows, num_fields=26, min_vocab=10, max_vocab=100_000, seed=0,
                                           fractions=(1.0, 0.0, 0.0))
    else:
        data = ked.data.load_dataset(a.dataset, seed=0)
    ds = data.dataset("train", batch_size=a.batch, seed=0).repeat()
    runs = {}
    for name, (emb, cbs) in configs().items():
        keras.utils.set_random_seed(0)
        model = ked.models.compile_ctr(ked.models.build_mlp(data.vocab_sizes, data.field_names, embedding_dim=16, embedding=emb))
        runs[name] = (model, cbs, ds)
    ratios = {k: [] for k in runs}
    step_med = {k: [] for k in runs}
    for r in range(a.rounds):
        meds = {}
        for name, (model, cbs, it) in runs.items():
            timer = StepTimer()
            model.fit(it, epochs=r + 1, initial_epoch=r, steps_per_epoch=a.steps, verbose=0, callbacks=cbs + [timer])
            meds[name] = statistics.median(timer.times[1:])
        for name in runs:
            ratios[name].append(meds[name] / meds["plain"])
            step_med[name].append(meds[name])
        print(f"round {r}: " + ", ".join(f"{k} {1000 * meds[k]:.1f}ms ({meds[k] / meds['plain']:.3f})" for k in runs), flush=True)
    kept = ked.find_searchable_layers(runs["sseds"][0])[0].dimension_mask().kept_params / (sum(data.vocab_sizes) * 16)
    shape = f"{data.num_fields} fields, {sum(data.vocab_sizes):,} embedding rows"
    lines = [
        f"# Training-step overhead vs a plain keras.layers.Embedding ({a.dataset}, batch {a.batch})",
        "",
        f"Generated by `python benchmarks/overhead.py --dataset {a.dataset} --rounds {a.rounds} --steps {a.steps} "
        f"--batch {a.batch}` on this machine (2 cores, CPU; {shape}; MLP 128-64, D = 16, Adam). The "
        "configurations train round-robin, "
        f"{a.steps} steps each per round; ratio = median step time / plain's in the same round, then median and "
        "quartiles over rounds (the first round, which builds and traces, is left out).",
        "",
        "| configuration | median step (ms) | ratio median | ratio [25%, 75%] |",
        "|---|---|---|---|",
    ]
    for name in runs:
        rs = np.array(ratios[name][1:])
        lines.append(
            f"| {name} | {1000 * statistics.median(step_med[name][1:]):.1f} | {np.median(rs):.3f} | "
            f"[{np.percentile(rs, 25):.3f}, {np.percentile(rs, 75):.3f}] |"
        )
    lines += ["", f"After pruning in round 1, sseds trains with {kept:.1%} of the embedding parameters kept "
              "(masked, not yet compacted: the step costs the same as before pruning)."]
    with open(a.out, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
