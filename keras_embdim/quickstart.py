"""The whole job on generated data: train, search, export, verify.

    python -m keras_embdim.quickstart [--budget 0.2] [--export export/quickstart] [--rows 200000]
        [--version auto|N [--overwrite]]

1. Generates a CTR dataset with planted informative and noise fields.
2. Trains a full-dimension MLP (the reference) and the same model with
   `SingleShotPruner(budget)` and `DimensionExporter` for the same epochs.
3. Trains the naive alternative at the same budget: the same MLP with uniform
   dims for every field, floor(budget x 16) and ceil(budget x 16).
4. Prints the dimensions found per field, parameters, and the test AUC of the
   full, uniform and searched models side by side.
5. Serves the export in a fresh process that cannot import keras_embdim (TF2 and
   TF1 loaders) and checks it predicts what the trained model predicts.
"""

from __future__ import annotations

import argparse
import math
import time


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=0.2)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--fields", type=int, default=12)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--export", default="export/quickstart",
                   help="TF Serving model base path: each run writes the next version below it")
    p.add_argument("--version", default="auto", help="'auto' (the next free number) or a version number")
    p.add_argument("--overwrite", action="store_true", help="replace --version N if it exists")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    version = "auto" if args.version == "auto" else int(args.version)

    t0 = time.time()

    import keras_embdim as ked
    from keras_embdim import keras
    from keras_embdim.metrics import roc_auc
    from keras_embdim.serving import check_in_fresh_process

    keras.utils.set_random_seed(args.seed)
    data = ked.data.make_synthetic_ctr(num_rows=args.rows, num_fields=args.fields, max_vocab=20_000, seed=args.seed)
    print(data.describe())
    print("informative fields:", [data.field_names[f] for f in data.informative_fields])
    train = data.dataset("train", batch_size=1024, seed=args.seed)
    xt, yt = data.test

    def fit(callbacks, dim=16):
        keras.utils.set_random_seed(args.seed)
        model = ked.models.compile_ctr(ked.models.build_mlp(data.vocab_sizes, data.field_names, embedding_dim=dim))
        model.fit(train, epochs=args.epochs, verbose=0, callbacks=callbacks)
        return model, roc_auc(yt, model.predict(data.inputs(xt), batch_size=4096, verbose=0))

    full_model, auc_full = fit([])
    print(f"full model: test AUC {auc_full:.4f}")
    # the naive alternative: narrow every field alike, just below and just above the budget
    uniform = {}
    for dim in sorted({max(1, math.floor(args.budget * 16)), max(1, math.ceil(args.budget * 16))}):
        uniform[dim] = fit([], dim)[1]
        print(f"uniform {dim} dims for every field ({100 * dim / 16:.2f}% of the parameters): test AUC "
              f"{uniform[dim]:.4f}")
    pruner = ked.SingleShotPruner(budget=args.budget, verbose=0)
    exporter = ked.DimensionExporter(args.export, version=version, overwrite=args.overwrite, verbose=0,
                                     sample_inputs=data.inputs(xt[:1000]))
    model, auc_pruned = fit([pruner, exporter])
    print(ked.format_report(model))
    r = pruner.result
    print(f"budget {100 * args.budget:.0f}%: kept {100 * r.kept_fraction:.2f}% of embedding parameters")
    print(f"test AUC: full dims {auc_full:.4f} -> searched dims {auc_pruned:.4f} ({auc_pruned - auc_full:+.4f})")
    best = max(uniform, key=uniform.get)
    print(f"test AUC at about the same budget: searched {auc_pruned:.4f} ({100 * r.kept_fraction:.2f}% params) vs "
          + ", ".join(f"uniform {d} dims {a:.4f} ({100 * d / 16:.2f}%)" for d, a in uniform.items())
          + f": {auc_pruned - uniform[best]:+.4f} against the better uniform model")
    e = exporter.result
    b = e.bytes
    print(
        f"export: {e.path}" + (f" (version {e.version}; TF Serving: --model_base_path={e.base_path})" if e.version else "")
        + f"\n  embedding tables {b['embedding_tables']:,} B (= {e.kept_params:,} params x 4 B"
        + (f" - {e.embedding_rank_folded_bytes:,} B that fields of fewer ids than kept columns, served at their "
           "rank, do not store" if e.embedding_rank_folded_bytes else "")
        + (f" + {e.embedding_padding_bytes:,} B of zero padding that lets small fields share a wider table"
           if e.embedding_padding_bytes else "")
        + f"), other variables "
        f"{b['other_variables']:,} B, graph {b['graph']:,} B, TF Serving warmup requests {b['warmup_requests']:,} B, "
        f"on disk {b['total']:,} B in all"
    )
    for layer, fold in e.folds.items():
        where = f"folded into Dense {fold['folded_into']}" if fold["folded_into"] else f"padded: {fold['padded']}"
        print(f"  layer {layer}: {where}")
    sample = data.inputs(xt[:1000])
    expected = {"ctr": model.predict(sample, batch_size=1000, verbose=0)}
    report = check_in_fresh_process(e.path, sample, expected)
    print(
        "served in a fresh process without keras_embdim: max |served - trained| "
        f"TF2 loader {report['tf2_max_abs_diff']:.2e}, TF1 session loader {report['tf1_max_abs_diff']:.2e}, "
        f"Keras' `serve` endpoint {report['serve_max_abs_diff']:.2e}; "
        + (f"its {report['warmup_records']} warmup requests replayed as TF Serving does when it loads it"
           if report["warmup_records"] is not None else
           "its warmup requests not replayed (that needs TF Serving's protos: pip install --no-deps "
           "tensorflow-serving-api)")
    )
    print(f"done in {time.time() - t0:.0f} s")
    return {"auc_full": auc_full, "auc_pruned": auc_pruned, "auc_uniform": uniform, "pruner": r, "export": e,
            "serve": report}


if __name__ == "__main__":
    main()
