"""Serving latency and bytes of DCN, DeepFM, history, mean and projected exports (beyond benchmarks/serving.py's MLP).

    python benchmarks/serving_models.py                 # the five models at budgets 0.05, 0.1, 0.2 (resumable)
    python benchmarks/serving_models.py --report-only   # rewrite docs/results/serving_models.md from the cache

Five models over 16-dim embeddings of 26 Criteo-shaped
fields (generated data, the vocabularies capped at `--cap`): DCN-v2
(`build_dcn`: two full-rank cross layers over the 416 concatenated columns,
then the MLP 128-64, stacked), DeepFM (`build_deepfm`: first-order weights,
the FM term and the MLP 128-64 over the same embeddings) and "history"
(`build_mlp(sequences=...)`: the MLP 128-64 over the fields and a bag of up
to 50 ids from a vocabulary of `--cap`, 0-padded, embedded with
`mask_zero=True` and averaged by `GlobalAveragePooling1D`; generated so that
the label depends on it, `HistoryData`), "mean" (`build_mlp(average_fields=True)`:
the MLP 128-64 over the fields' embeddings averaged over the fields, a bag of
features) and "projected" (`projected`: each field's embedding projected to 16
columns by one `Dense(16, relu)` applied to every field, as AutoInt projects
its fields, then the MLP 128-64). Each is trained for one epoch with
`SingleShotPruner(budget)` and exported with `export_compact`: by default
(DCN: the cross stack runs on the kept columns, each cross kernel stored as its
`[k, k]` block; DeepFM: the MLP is folded onto the kept values and the FM term
computed from them, `keras_embdim.export.fm`; history: the average is taken
on the history's kept columns and the MLP folded onto them; mean: the average
over fields is a linear map of the kept values, folded into the MLP's first
kernel, `fold._affine_fold`; projected: the per-field Dense computed from each
field's kept values, `fold.SlotDenseFold`), and with
`fold=False`, the padded output into the whole model (what every export of
these models served before); and trained with `SingleShotPruner(budget,
width_budget=u / 16)`, keeping at most the columns of the uniform model below
(a cross layer costs the square of its columns). The baselines are the same
model with plain `keras.layers.Embedding`s exported by Keras' `model.export()`:
full dims, and uniform dims `round(budget x 16)` for every field (about the
same embedding parameters; its cross layers and MLP take 26 x u columns, 27 x u
with the history, u for mean). Timed as
`benchmarks/serving.py` times (`serving.time_exports`: fresh TensorFlow-only
processes, round-robin, the median of per-round ratios; the TF2 loader and the
TF1 session loader, as TF Serving runs a model). Results:
benchmarks/results/serving_models.jsonl and docs/results/serving_models.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import tempfile
import time

import _common
import numpy as np
import serving

from keras_embdim.data import CTRData

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "serving_models.jsonl")
MODELS = ("dcn", "deepfm", "history", "mean", "projected")
HISTORY = 50  # ids per history (the longest; 0 pads)
LABELS = {"full": "full (model.export)", "uniform": "uniform dims (model.export)",
          "ours": "searched, folded", "ours_padded": "searched, padded (fold=False)",
          "ours_width": "searched with width_budget (as wide as uniform), folded"}
OURS = ("ours", "ours_padded", "ours_width")


def variables_on_disk(path: str) -> int:
    """Bytes of a SavedModel's variables/ folder (Keras 3's `model.export()` stores every variable twice)."""
    folder = os.path.join(path, "variables")
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))


@dataclasses.dataclass
class HistoryData(CTRData):
    """A `CTRData` with a bag of ids per row (`"history"`, `[N, length]`, 0 pads) after its
    fields' ids: `x` is `[N, F + length]`, `inputs(x)` the fields' inputs and the history
    (`dataset` is `CTRData`'s, reading them through `inputs`).

    Each row holds 1 to `length` ids drawn by popularity (Zipf); in a positive row 40 % of
    them are drawn from the ids `1 mod 10`, in a negative one from the ids `5 mod 10`, so
    the label depends on the history's average.
    """

    vocab: int = 0  # rows of the history's table (id 0 pads)
    length: int = HISTORY

    @classmethod
    def of(cls, data: CTRData, vocab: int, length: int = HISTORY, seed: int = 0) -> "HistoryData":
        rng = np.random.default_rng(seed)
        splits = {}
        for split in ("train", "valid", "test"):
            x, y = data.split(split)
            n = len(y)
            ids = (rng.zipf(1.3, (n, length)) - 1) % (vocab - 1) + 1
            swap = rng.random((n, length)) < 0.4
            pool = np.where(y[:, None] > 0.5, 1, 5) + 10 * rng.integers(0, (vocab - 6) // 10, (n, length))
            ids = np.where(swap, pool, ids)
            ids[np.arange(length)[None, :] >= rng.integers(1, length + 1, n)[:, None]] = 0
            splits[split] = (np.concatenate([x, ids.astype(np.int32)], axis=1), y)
        base = {f.name: getattr(data, f.name) for f in dataclasses.fields(CTRData)}
        return cls(**{**base, **splits}, vocab=int(vocab), length=int(length))

    def inputs(self, x: np.ndarray) -> dict:
        return {**super().inputs(x[:, :self.num_fields]), "history": x[:, self.num_fields:]}


def with_history(model: str, data, cap: int, seed: int):
    """`data` as `model` takes it: with a history (`HistoryData`) for "history"."""
    return HistoryData.of(data, cap, HISTORY, seed) if model == "history" else data


def columns(model: str, data, dim: int) -> int:
    """Embedding columns the first layer after the embeddings takes, every field (and the history) at `dim`:
    `dim` for "mean" (the fields averaged)."""
    return dim if model == "mean" else (len(data.vocab_sizes) + isinstance(data, HistoryData)) * dim


def build(model: str, data, dim: int, embedding: str = "prunable"):
    """The benchmark's `model` ("dcn", "deepfm", "history", "mean" or "projected") over `data`'s fields."""
    import keras_embdim as ked

    if model not in MODELS:
        raise ValueError(f"`model` must be one of {MODELS}; received model={model!r}.")
    if model == "projected":
        return projected(data, dim, embedding)
    if model == "history":
        return ked.models.build_mlp(data.vocab_sizes, data.field_names, embedding_dim=dim, embedding=embedding,
                                    sequences={"history": (data.vocab, data.length)})
    if model == "mean":
        return ked.models.build_mlp(data.vocab_sizes, data.field_names, embedding_dim=dim, embedding=embedding,
                                    average_fields=True)
    builder = ked.models.build_dcn if model == "dcn" else ked.models.build_deepfm
    return builder(data.vocab_sizes, data.field_names, embedding_dim=dim, embedding=embedding)


def projected(data, dim: int, embedding: str = "prunable"):
    """The MLP 128-64 over every field's embedding projected by one `Dense(16, relu)` applied to
    each field (as AutoInt projects its fields): `[batch, F, dim] -> [batch, F, 16]`, flattened.
    `embedding`: "prunable" (searched) or "plain" (`keras.layers.Embedding` over offset ids)."""
    import keras_embdim as ked
    from keras_embdim import keras

    inputs = {n: keras.Input(shape=(), dtype="int32", name=n) for n in data.field_names}
    ids = ked.layers.StackFields(name="stack_fields")([inputs[n] for n in data.field_names])
    if embedding == "plain":
        offsets = ked.layers.FieldOffsets(list(data.vocab_sizes), name="embedding_offsets")(ids)
        e = keras.layers.Embedding(int(sum(data.vocab_sizes)), dim, name="embedding")(offsets)
    else:
        e = ked.PrunableEmbedding(list(data.vocab_sizes), dim, field_names=list(data.field_names),
                                  name="embedding")(ids)
    x = keras.layers.Flatten()(keras.layers.Dense(16, activation="relu", name="projection")(e))
    for i, units in enumerate((128, 64)):
        x = keras.layers.Dense(units, activation="relu", name=f"mlp_{i}")(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="ctr")(x))


def export_models(model_name: str, data, budget: float, out: str, seed: int, batch: int = 1024) -> dict:
    """Train the searched model, export it (folded, padded; and searched with width_budget,
    folded) and the two baselines; their paths and facts. `columns`: the embedding columns the
    cross layers / MLP take."""
    import keras_embdim as ked
    from keras_embdim import keras
    from keras_embdim.metrics import roc_auc

    D = serving.D
    exports = {}

    def plain(dim, name):
        keras.utils.set_random_seed(seed)
        model = build(model_name, data, dim, "plain")
        path = os.path.join(out, name)
        _common.keras_export(model, path)
        rows = sum(data.vocab_sizes) + (data.vocab if isinstance(data, HistoryData) else 0)
        return {"path": path, "embedding_params": rows * dim, "kind": "baseline", "dims": dim,
                "columns": columns(model_name, data, dim), "variables_on_disk": variables_on_disk(path)}

    du = serving.uniform_dims(budget)
    exports["full"] = plain(D, "full")
    exports["uniform"] = plain(du, "uniform")
    searches = (({}, (("ours", {}), ("ours_padded", {"fold": False}))),
                ({"width_budget": du / D}, (("ours_width", {}),)))
    sample = data.inputs(data.test[0][:500])
    xt, yt = data.test
    for search_options, variants in searches:
        keras.utils.set_random_seed(seed)
        model = ked.models.compile_ctr(build(model_name, data, D))
        t = time.time()
        pruner = ked.SingleShotPruner(budget, min_dim=1 if budget >= 1 / D else 0, verbose=0, **search_options)
        model.fit(data.dataset("train", batch_size=batch, seed=seed), epochs=1, verbose=0, callbacks=[pruner])
        train_s = time.time() - t
        kept = sum(int(layer.dimension_mask().kept_dims.sum()) for layer in ked.find_searchable_layers(model))
        auc = float(roc_auc(yt, model.predict(data.inputs(xt), batch_size=8192, verbose=0)))
        for name, options in variants:
            r = ked.export_compact(model, os.path.join(out, name), sample_inputs=sample, verbose=0, **options)
            exports[name] = {"path": r.path, "embedding_params": r.kept_params, "kind": "ours",
                             "folded_into": r.folds["embedding"]["folded_into"], "bytes": r.bytes,
                             "folds": {k: v["folded_into"] for k, v in r.folds.items()},
                             "variables_on_disk": variables_on_disk(r.path),
                             "max_abs_diff": r.max_abs_diff, "train_seconds": train_s, "test_auc": auc,
                             "columns": kept if any(f["folded_into"] for f in r.folds.values())
                             else columns(model_name, data, D)}
    return exports


def run_one(model_name: str, budget: float, args) -> dict:
    data = with_history(model_name, serving.load("criteo", args.cap, args.rows, args.seed), args.cap, args.seed)
    out = tempfile.mkdtemp(prefix="ked-serving-models-")
    try:
        t = time.time()
        exports = export_models(model_name, data, budget, out, args.seed)
        paths = {k: v["path"] for k, v in exports.items()}
        rec = {"model": model_name, "budget": budget, "cap": args.cap, "fields": data.num_fields,
               "commit": _common.git_commit(), "rounds": args.rounds, "reps": args.reps, "processes": args.processes,
               "exports": {k: {kk: vv for kk, vv in v.items() if kk != "path"} for k, v in exports.items()}}
        for loader in ("tf2", "session"):
            timing = serving.time_exports(paths, data, args.batches, args.rounds, args.reps,
                                          processes=args.processes, loader=loader)
            timing.pop("ops", None)
            rec[loader] = {batch: {"ms": {k: 1e3 * statistics.median(v) for k, v in per_round.items()},
                                   "ratios": {f"{k}/{base}": serving.ratios(per_round, k, base)
                                              for k in OURS if k in per_round for base in ("full", "uniform")}}
                           for batch, per_round in timing.items()}
        rec["wall_seconds"] = time.time() - t
        return rec
    finally:
        shutil.rmtree(out, ignore_errors=True)


def report(records: list, path: str) -> str:
    """The page: one row per (model, budget, export, batch) with both loaders' times and ratios."""
    header = ["model", "budget", "export", "embedding columns served", "variables/ on disk (B)", "batch", "ms",
              "/ full", "/ uniform", "session: ms", "/ full", "/ uniform"]
    rows = []
    for r in sorted(records, key=lambda r: (r["model"], r["budget"])):
        for name in ("full", "uniform", *OURS):
            if name not in r["exports"]:
                continue
            e = r["exports"][name]
            label = LABELS[name] + (f" ({e['dims']} dims)" if "dims" in e else "")
            columns = e["columns"]
            if name in OURS and not any(e.get("folds", {"embedding": e["folded_into"]}).values()):
                columns = r["exports"]["ours_padded"]["columns"]  # folded into nothing: it serves the padded output
            stored = f"{e['variables_on_disk']:,}"
            for batch in sorted(r["tf2"], key=int):
                cells = []
                for loader in ("tf2", "session"):
                    b = r[loader][batch]
                    cells.append(f"{b['ms'][name]:.2f}")
                    cells += [f"{b['ratios'][f'{name}/{base}']:.2f}" if f"{name}/{base}" in b["ratios"] else ""
                              for base in ("full", "uniform")]
                rows.append(f"| {r['model']} | {r['budget']} | {label} | {columns} | {stored} | {batch} | "
                            + " | ".join(cells) + " |")
    notes = []
    for r in sorted(records, key=lambda r: (r["model"], r["budget"])):
        for name in ("ours", "ours_width"):
            e = r["exports"].get(name)
            if e is None:
                continue
            folds = e.get("folds", {"embedding": e["folded_into"]})
            into = "; ".join(f"{layer} folded into {', '.join(f) or 'nothing'}" for layer, f in folds.items())
            notes.append(f"- {r['model']} b={r['budget']}, {LABELS[name]}: {into}; max |served - trained| "
                         f"{e['max_abs_diff']:.1e}; "
                         f"test AUC after one epoch {e['test_auc']:.4f} (a latency model, not an accuracy "
                         f"benchmark); training {e['train_seconds']:.0f} s")
    commits = sorted({r["commit"] for r in records})
    caps = ", ".join(f"{c:.0e}" for c in sorted({r["cap"] for r in records}))
    how = (f"Generated by `python benchmarks/serving_models.py` from `benchmarks/results/serving_models.jsonl` "
           f"(measured at commit {', '.join(commits)}), never by hand. Criteo-shaped (26 fields, vocabularies capped "
           f"at {caps}, 16-dim embeddings): DCN-v2 (two full-rank cross layers, then the MLP 128-64), DeepFM "
           "(first-order weights, FM term, MLP 128-64), history (the MLP 128-64 over the fields and a bag of up "
           f"to {HISTORY} ids from a vocabulary of the cap, averaged with its padding masked), mean (the MLP 128-64 "
           "over the fields' embeddings averaged over the fields) and projected (each field's embedding projected "
           "to 16 columns by one Dense with ReLU applied to every field, then the MLP 128-64); each (model, "
           f"budget) timed as benchmarks/serving.py times: {serving.timing_note(records)}; a ratio is taken within "
           "each round and the median over rounds is shown (ms: median call time); `session:` columns through the "
           "TF1 session loader, as TF Serving runs a SavedModel. Embedding columns served: the columns the cross "
           "layers (DCN) or the MLP's first layer (DeepFM; history: the history's average counts once; mean: the "
           "average's D, or folded, the kept columns it averages; projected: the per-field Dense) take "
           "(searched and folded: the kept columns; padded: all of them).")
    return _common.write_table(path, "Serving latency of DCN, DeepFM, history, mean and projected exports", how,
                               header, rows,
                               ["Exports:", "", *notes])


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", nargs="+", type=float, default=[0.05, 0.1, 0.2])
    p.add_argument("--cap", type=int, default=100_000, help="largest vocabulary")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 512, 4096])
    p.add_argument("--rows", type=int, default=200_000, help="generated rows")
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--processes", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    _common.add_results_arguments(p, RESULTS, "serving_models.md")
    args = p.parse_args(argv)
    records = _common.load_jsonl(args.cache)
    if not args.report_only:
        for model_name in args.models:
            for budget in args.budgets:
                key = (model_name, budget, args.cap)
                if not args.redo and any((r["model"], r["budget"], r["cap"]) == key for r in records):
                    continue
                print(f"serving_models: {model_name} budget={budget} ...", flush=True)
                rec = run_one(model_name, budget, args)
                records = [r for r in records if (r["model"], r["budget"], r["cap"]) != key] + [rec]
                _common.save_jsonl(args.cache, records)
    print(report(records, args.out))
    return records


if __name__ == "__main__":
    main()
