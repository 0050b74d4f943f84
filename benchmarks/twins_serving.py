"""AMTL (TwinsMaskLayer) exports: ragged serving latency and bytes vs the full table.

    python benchmarks/twins_serving.py [--dataset synthetic|frappe|movielens] [--budgets 0.2 0.4] [--rounds 7] [--reps 50]

For each budget: train the MLP (D = 16) with a TwinsMaskLayer behind a
PrunableEmbedding and TwinsMaskSearch(budget) (one search epoch, one
fine-tune epoch), export it with `export_compact` (verified), and export the
same architecture with a plain Embedding (full tables) as the reference.
Both SavedModels are loaded in this process with `tf.saved_model.load` and
their `serving_default` signatures timed at batch 1 and 512, round-robin
(`--rounds` rounds of `--reps` calls per configuration, each round's median
per call; the ratio is taken per round, then its median over rounds), and so
is the embedding lookup alone: `keras_embdim.ragged.ragged_lookup` over the
packed fields against `tf.gather` over the full tables (batch 512, all fields).
Writes docs/twins_serving.md.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402,F401  (puts the checkout on sys.path, finds ../shared/data)

import keras_embdim as ked  # noqa: E402
from keras_embdim import compaction, ragged  # noqa: E402
from keras_embdim._compat import keras  # noqa: E402

D = 16


def twins_embedding(v, dim, names):
    return ked.TwinsMaskLayer(ked.PrunableEmbedding(v, dim, field_names=names), name="embedding")


def timed(fn, reps):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def lookup_functions(layer, data, batch, rng):
    """(ragged lookup, full gather) over every field for one batch of real ids."""
    m = layer.dimension_mask()
    table = np.asarray(layer.embedding_variable)
    offsets = compaction.field_offsets(m.vocab_sizes)
    fields = [ragged.pack_field(table[o : o + n], s) for o, n, s in zip(offsets, m.vocab_sizes, m.value_sizes)]
    packed = [tuple(tf.constant(a) for a in f.arrays) for f in fields]
    full = [tf.constant(table[o : o + n]) for o, n in zip(offsets, m.vocab_sizes)]
    x = data.train[0]
    ids = tf.constant(x[rng.integers(0, len(x), batch)].astype(np.int32))

    @tf.function
    def ragged_fn(ids):
        return [
            ragged.ragged_lookup(*packed[f], ids[:, f], num_rows=fields[f].num_rows, output_dim=D, bits=fields[f].bits)
            for f in range(len(fields))
        ]

    @tf.function
    def gather_fn(ids):
        return [tf.gather(full[f], ids[:, f]) for f in range(len(full))]

    for f, (a, b) in enumerate(zip(ragged_fn(ids), gather_fn(ids))):  # the ragged lookup is the masked lookup
        sizes = m.value_sizes[f][ids[:, f].numpy()]
        np.testing.assert_array_equal(a.numpy(), b.numpy() * (np.arange(D)[None, :] < sizes[:, None]))
    return (lambda: ragged_fn(ids)), (lambda: gather_fn(ids)), sum(f.nbytes for f in fields)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--rows", type=int, default=300_000)
    p.add_argument("--budgets", type=float, nargs="+", default=[0.2, 0.4])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--out", default=os.path.join(_common.DOCS, "twins_serving.md"))
    a = p.parse_args()
    if a.dataset == "synthetic":  # CTR-shaped: 26 fields, vocabularies up to 100k, power-law counts
        data = ked.data.make_synthetic_ctr(num_rows=a.rows, num_fields=26, min_vocab=10, max_vocab=100_000, seed=0)
    else:
        data = ked.data.load_dataset(a.dataset, seed=0)
    train = data.dataset("train", batch_size=1024, seed=0)
    sample = data.inputs(data.test[0][:1000])
    tmp = tempfile.mkdtemp()
    rng = np.random.default_rng(0)

    keras.utils.set_random_seed(0)
    plain = ked.models.compile_ctr(ked.models.build_mlp(data.vocab_sizes, data.field_names, embedding_dim=D, embedding="plain"))
    plain.fit(train, epochs=1, verbose=0)
    ked.export_compact(plain, os.path.join(tmp, "full"), sample_inputs=sample, verbose=0)
    served = {"full": tf.saved_model.load(os.path.join(tmp, "full")).signatures["serving_default"]}
    exports, lookups = {}, {}
    for b in a.budgets:
        keras.utils.set_random_seed(0)
        model = ked.models.compile_ctr(
            ked.models.build_mlp(data.vocab_sizes, data.field_names, embedding_dim=D, embedding=twins_embedding)
        )
        search = ked.TwinsMaskSearch(b, verbose=0)
        t = time.perf_counter()
        model.fit(train, epochs=2, verbose=0, callbacks=[search])
        fit_s = time.perf_counter() - t
        path = os.path.join(tmp, f"b{b}")
        r = ked.export_compact(model, path, sample_inputs=sample, verbose=0)
        served[f"amtl {b}"] = tf.saved_model.load(path).signatures["serving_default"]
        exports[b] = (r, search.result, fit_s)
        layer = ked.find_searchable_layers(model)[0]
        lookups[b] = lookup_functions(layer, data, 512, rng)
        print(f"budget {b}: kept {search.result['kept_fraction']:.4f}, bytes {r.embedding_overhead:.3f} x kept*4, "
              f"max|diff| {r.max_abs_diff:.2e}", flush=True)

    requests = {}
    for batch in (1, 512):
        idx = rng.integers(0, len(data.test[0]), batch)
        requests[batch] = {k: tf.constant(v) for k, v in data.inputs(data.test[0][idx]).items()}
    ratios = {}
    for r in range(a.rounds):
        meds = {}
        for batch, req in requests.items():
            for name, fn in served.items():
                meds[(name, batch)] = timed(lambda: fn(**req), a.reps)
        for b, (rag, gat, _) in lookups.items():
            meds[(f"lookup amtl {b}", 512)] = timed(rag, a.reps)
            meds[(f"lookup full {b}", 512)] = timed(gat, a.reps)
        for (name, batch), t in meds.items():
            if name.startswith("amtl"):
                ratios.setdefault((name, batch), []).append(t / meds[("full", batch)])
            elif name.startswith("lookup amtl"):
                ref = meds[(name.replace("amtl", "full"), batch)]
                ratios.setdefault((name, batch), []).append(t / ref)
        print(f"round {r}: " + ", ".join(f"{n}@{bt} {1e3 * t:.2f}ms" for (n, bt), t in meds.items()), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)

    rows = []
    for b, (r, res, fit_s) in exports.items():
        rows.append(
            f"| {b} | {res['kept_fraction']:.4f} | {r.embedding_bytes:,} | {r.embedding_overhead:.3f} | "
            f"{r.max_abs_diff:.1e} | {statistics.median(ratios[(f'amtl {b}', 1)]):.3f} | "
            f"{statistics.median(ratios[(f'amtl {b}', 512)]):.3f} | "
            f"{statistics.median(ratios[(f'lookup amtl {b}', 512)]):.3f} |"
        )
    shape = f"{data.num_fields} fields, {sum(data.vocab_sizes):,} embedding rows"
    _common.write_table(
        a.out,
        f"AMTL exports on {a.dataset}: bytes and serving latency vs the full table",
        f"Generated by `python benchmarks/twins_serving.py --dataset {a.dataset} --budgets "
        f"{' '.join(map(str, a.budgets))} --rounds {a.rounds} --reps {a.reps}` ({shape}; MLP 128-64, D = {D}; "
        "TwinsMaskLayer behind a PrunableEmbedding, TwinsMaskSearch(budget): one search epoch, one fine-tune epoch). "
        "Latency ratios: the export's `serving_default` over the full-table export's, loaded with "
        "`tf.saved_model.load`, round-robin, median of per-round medians; 'lookup' times the embedding lookup "
        "alone (ragged layout vs `tf.gather` on the full tables, all fields, batch 512).",
        ["budget", "kept fraction", "embedding bytes", "bytes / (kept x 4 B)", "max abs diff",
         "latency ratio batch 1", "latency ratio batch 512", "lookup ratio batch 512"],
        rows,
        ("Targets (issue 4 and 6): bytes <= 1.10 x kept x 4 B; serving latency of the per-value export <= 1.5 x "
         "the full model's at batch 512.",),
    )
    print(open(a.out).read())


if __name__ == "__main__":
    main()
