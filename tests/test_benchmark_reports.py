"""benchmarks/planted.py, benchmarks/serving.py, benchmarks/serving_models.py and benchmarks/warmup.py: the
statistics their pages quote, the variants' callbacks, and the serving timer's rounds."""

import collections
import math

import numpy as np
import pytest
import tensorflow as tf

import _common
import planted  # benchmarks/ is on pytest's pythonpath (pyproject.toml)
import serving
import serving_models
import warmup as warmup_bench
import keras_embdim as ked
from keras_embdim import keras


def _record(method, seed, auc, setting="s", budget_name="oracle"):
    return {"setting": setting, "rows": 100, "budget_name": budget_name, "method": method, "seed": seed, "auc": auc}


def test_paired_difference_matches_a_hand_computation():
    records = [_record("a", s, v) for s, v in enumerate([0.80, 0.82, 0.81])]
    records += [_record("b", s, v) for s, v in enumerate([0.79, 0.80, 0.80, 0.70])]  # seed 3: no pair, left out
    mean, margin, low, high, n = planted.paired(planted._aucs(records), ("s", 100, "oracle"), "a", "b")
    # differences 0.01, 0.02, 0.01: mean 0.04 / 3, sample std sqrt(1 / 3) / 100, standard error that / sqrt(3)
    assert n == 3 and mean == pytest.approx(0.04 / 3)
    assert margin == pytest.approx((0.04 / 3) / (math.sqrt(1 / 3) / 100 / math.sqrt(3)))  # 4.0
    assert (low, high) == (pytest.approx(0.01), pytest.approx(0.02))
    assert planted.paired(planted._aucs(records), ("s", 100, "2x oracle"), "a", "b") is None


def _orthos_of(planted_module, method: str, data) -> list:
    """Strengths of the OrthogonalRegularizers a planted method trains with."""
    return [cb.strength for cb in planted_module.method_setup(method, 0.2, data)[2]
            if isinstance(cb, ked.OrthogonalRegularizer)]


def test_variants_train_with_the_callbacks_they_name():
    data = ked.data.make_planted_ctr(30_000, [4, 4, 1, 0], vocab_sizes=[50, 50, 50, 100], seed=0)
    steps = math.ceil(len(data.train[1]) / planted.BATCH)  # 24 000 rows: 24 steps of 1024
    _, _, (pruner,) = planted.method_setup("sseds_warm2", 0.2, data)
    assert isinstance(pruner, ked.SingleShotPruner) and pruner.warmup_steps == 2 * steps - 20
    _, _, (retrain,) = planted.method_setup("sseds_retrain", 0.2, data)
    assert retrain.after == "retrain" and retrain.warmup_steps is None
    _, _, (search,) = planted.method_setup("ham_search2", 0.2, data)
    assert isinstance(search, ked.HardMaskSearch) and search.search_epochs == 2
    _, _, (ham_retrain,) = planted.method_setup("ham_retrain", 0.2, data)
    assert ham_retrain.after == "retrain" and ham_retrain.search_epochs == 1
    _, _, (pme_retrain,) = planted.method_setup("pme_retrain", 0.2, data)
    assert isinstance(pme_retrain, ked.PMEPruner) and pme_retrain.after == "retrain"
    _, _, (default,) = planted.method_setup("ham", 0.2, data)
    assert default.search_epochs == 1 and default.warmup_epochs == 0
    _, _, (warm,) = planted.method_setup("ham_warmup", 0.2, data)
    assert isinstance(warm, ked.HardMaskSearch) and (warm.warmup_epochs, warm.search_epochs) == (1, 1)
    # the default score is the joint one; the abs_mean rows keep the score they were measured with
    scores = {m: planted.method_setup(m, 0.2, data)[2][0] for m in
              ("sseds", "sseds_rotate", "sseds_abs_mean", "sseds_abs_mean_rotate", "sseds_steps100", "sseds_warm2",
               "sseds_retrain")}
    assert {m: (cb.score, cb.rotate) for m, cb in scores.items()} == {
        "sseds": ("fisher_joint", False), "sseds_rotate": ("fisher_joint", True),
        "sseds_abs_mean": ("abs_mean", False), "sseds_abs_mean_rotate": ("abs_mean", True),
        "sseds_steps100": ("abs_mean", False), "sseds_warm2": ("abs_mean", False), "sseds_retrain": ("abs_mean", False)}
    assert scores["sseds_steps100"].scoring_steps == 100
    # HAM's default paces its scores; ham_fixed and the variants measured at the fixed pace keep it
    paces = {m: next(cb for cb in planted.method_setup(m, 0.2, data)[2] if isinstance(cb, ked.HardMaskSearch))
             for m in ("ham", "ham_fixed", "ham_warmup", "ham_search2", "ham_retrain", "ham_ortho", "ham_ortho_search",
                       "ham_ortho_weak", "ham_ortho_1e5", "ham_ortho_paced", "ham_ortho_paced_1e5")}
    paced = ("ham", "ham_ortho_paced", "ham_ortho_paced_1e5")
    assert {m: cb.score_pace for m, cb in paces.items()} == {**{m: None for m in paces if m not in paced},
                                                             **{m: 0.25 for m in paced}}
    orthos = {m: [cb for cb in planted.method_setup(m, 0.2, data)[2] if isinstance(cb, ked.OrthogonalRegularizer)]
              for m in ("ham", "ham_fixed", "ham_ortho", "ham_ortho_search", "ham_ortho_weak", "ham_ortho_1e5",
                        "ham_ortho_paced", "ham_ortho_paced_1e5")}
    assert {m: [cb.strength for cb in cbs] for m, cbs in orthos.items()} == {
        "ham": [], "ham_fixed": [], "ham_ortho": [1e-3], "ham_ortho_search": [1e-3], "ham_ortho_weak": [1e-4],
        "ham_ortho_1e5": [1e-5], "ham_ortho_paced": [1e-3], "ham_ortho_paced_1e5": [1e-5]}
    assert set(planted.SHIPPED) <= set(planted.SEARCHES)
    # the shipped HAM + orthogonality is the callback at its default strength
    shipped_ortho = [m for m in planted.SHIPPED if m.startswith("ham_ortho")]
    assert shipped_ortho == ["ham_ortho_paced_1e5"]
    assert _orthos_of(planted, shipped_ortho[0], data) == [ked.OrthogonalRegularizer().strength] == [1e-5]
    assert orthos["ham_ortho_search"][0].schedule(1) == 0.0 and orthos["ham_ortho"][0].schedule is None
    variants = {"sseds_warm2", "sseds_retrain", "ham_warmup", "ham_search2", "ham_retrain", "sseds_abs_mean",
                "sseds_rotate", "ham_fixed"}
    assert variants <= set(planted.PER_FIELD) <= set(planted.SEARCHES)


def test_issue_targets_of_the_shipped_methods_by_hand():
    """Issue 19's checks at the oracle's budget, from records whose margins are known: on unequal ranks a
    per-field search against the better uniform model (+2 SE of the paired differences) and full dims;
    on equal ranks every search, a per-value one included, within 2 SE of uniform; the noise fields at
    min_dim. A per-value search gets no unequal-ranks target; the 2x budget gets none."""
    def rec(setting, method, seed, auc, kept=(4.0, 1.0), budget_name="oracle"):
        return {"setting": setting, "rows": 1000, "budget_name": budget_name, "method": method, "seed": seed,
                "auc": auc, "kept_dims": list(kept), "params_fraction": 0.2, "epoch": 2, "test_aucs": [auc] * 3,
                "ranks": [4, 0]}
    records = []
    for seed, noise in enumerate((0.001, -0.001, 0.002, -0.002, 0.0)):  # paired differences: mean 0, sd 0.0016
        records += [rec("unequal", "uniform_floor", seed, 0.80), rec("unequal", "uniform_ceil", seed, 0.79),
                    rec("unequal", "full", seed, 0.81),
                    rec("unequal", "sseds", seed, 0.81 + noise),  # +0.01 over uniform_floor: far above 2 SE
                    rec("unequal", "ham", seed, 0.80 + noise, kept=(4.0, 2.0)),  # +0.0000: missed; noise kept
                    rec("unequal", "pme", seed, 0.81 + noise),
                    rec("unequal", "sseds", seed, 0.70, budget_name="2x oracle"),
                    rec("equal", "uniform_floor", seed, 0.80), rec("equal", "uniform_ceil", seed, 0.80),
                    rec("equal", "pme", seed, 0.799),  # -0.001 on every seed: outside 2 SE
                    rec("equal", "sseds", seed, 0.80 + noise)]  # within
    s = planted.summarize(records)
    got = {t: (m, ok) for m, t, ok, _ in planted.issue_targets(s, records)}
    assert got["unequal 1,000 rows, sseds: >= better uniform + 2 SE"] == ("sseds", True)
    assert got["unequal 1,000 rows, sseds: >= full dims - 0.005"] == ("sseds", True)
    assert got["unequal 1,000 rows, ham: >= better uniform + 2 SE"] == ("ham", False)
    assert got["equal ranks 1,000 rows, pme: within 2 SE of uniform"] == ("pme", False)
    assert got["equal ranks 1,000 rows, sseds: within 2 SE of uniform"] == ("sseds", True)
    assert got["unequal 1,000 rows, sseds: noise fields at min_dim in >= 4 of 5 seeds (scaled: >= 80 % of seeds)"] \
        == ("sseds", True)
    assert got["unequal 1,000 rows, ham: noise fields at min_dim in >= 4 of 5 seeds (scaled: >= 80 % of seeds)"] \
        == ("ham", False)
    assert not [t for t in got if "pme: >=" in t or "2x" in t]


def test_serving_timer_runs_every_export_every_round(small_data, tmp_path):
    d = small_data
    paths = {}
    for name, dim in (("narrow", 2), ("wide", 8)):
        keras.utils.set_random_seed(0)
        model = ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=dim, embedding="plain", hidden=(8,))
        paths[name] = str(tmp_path / name)
        _common.keras_export(model, paths[name])
    timing = serving.time_exports(paths, d, [1, 4], rounds=5, reps=2, processes=2)  # 3 rounds, then 2
    ops = timing.pop("ops")
    # the same Keras graph at two widths: the same ops, one of them the table's gather
    assert ops["narrow"] == ops["wide"] and ops["wide"]["gathers"] == 1 and ops["wide"]["ops"] > 10
    assert sorted(timing) == ["1", "4"]
    for per_round in timing.values():
        assert sorted(per_round) == ["narrow", "wide"]
        assert all(len(v) == 5 and min(v) > 0 for v in per_round.values())
    ratio = serving.ratios(timing["4"], "wide", "narrow")
    assert ratio == pytest.approx(float(np.median(np.array(timing["4"]["wide"]) / np.array(timing["4"]["narrow"]))))
    # the same round-robin through the TF1 session loader (as TF Serving runs a SavedModel): no op count
    session = serving.time_exports(paths, d, [1, 4], rounds=3, reps=2, loader="session")
    assert "ops" not in session and sorted(session) == ["1", "4"]
    for per_round in session.values():
        assert sorted(per_round) == ["narrow", "wide"]
        assert all(len(v) == 3 and min(v) > 0 for v in per_round.values())
    with pytest.raises(RuntimeError, match="TensorFlow-only process failed"):  # an export it cannot load
        serving.time_exports({"missing": str(tmp_path / "missing")}, d, [1], rounds=1, reps=1, loader="session")
    with pytest.raises(ValueError, match="`loader` must be one of"):
        serving.time_exports(paths, d, [1], rounds=1, reps=1, loader="serving")
    note = serving.timing_note([{"rounds": 41, "reps": 20}, {}, {"rounds": 42, "reps": 20, "processes": 3}])
    assert "41 rounds in a random order, in one process, each the median of 20 calls" in note
    assert "42 rounds in a random order, split over 3 fresh processes" in note and "7 rounds in a fixed order" in note


def test_serving_op_count_leaves_out_the_failing_branch_of_the_id_check(small_data, tmp_path):
    """Ours checks ids with a `tf.cond` whose failing branch builds the message: the timer counts
    the cond (it runs every call) but not that branch (it runs only for a bad request)."""
    d = small_data
    keras.utils.set_random_seed(0)
    model = ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=4, hidden=(8,))
    keep = np.zeros((d.num_fields, 4), bool)
    keep[:, :2] = True
    keep[0, 2] = True  # two width groups: 3 columns for field 0, 2 for the others
    ked.find_searchable_layers(model)[0].set_dimension_mask(keep)
    path = ked.export_compact(model, str(tmp_path / "ours"), sample_inputs=d.inputs(d.test[0][:50]), verbose=0).path
    fn = tf.saved_model.load(path).signatures["serving_default"]
    ops = serving.count_ops(fn)
    assert ops["gathers"] == 2  # one row gather per width table
    lib = fn.graph.as_graph_def().library.function
    every = collections.Counter(n.op for f in lib for n in f.node_def)
    assert every["If"] == 1 and every["Assert"] == 1 and every["StringJoin"] == 1
    # the failing branch is one call of a function of its own (not inlined), where the message lives
    branch = [f for f in lib if "cond_false" in f.signature.name]
    assert len(branch) == 1
    calls = [n for n in branch[0].node_def if n.op in ("StatefulPartitionedCall", "PartitionedCall")]
    assert len(calls) == 1
    message = [f for f in lib if f.signature.name == calls[0].attr["f"].func.name]
    assert len(message) == 1 and message[0].attr["_noinline"].b
    assert any(n.op == "Assert" for n in message[0].node_def)
    skip = {"Const", "Placeholder", "NoOp", "Identity", "_Arg", "_Retval", "StatefulPartitionedCall",
            "PartitionedCall"}
    in_branch = sum(n.op not in skip for f in (branch[0], message[0]) for n in f.node_def)
    top = sum(n.op not in skip for n in fn.graph.as_graph_def().node)
    assert ops["ops"] == sum(v for k, v in every.items() if k not in skip) + top - in_branch
    assert serving.time_exports({"ours": path}, d, [1], rounds=1, reps=1)["ops"]["ours"] == ops  # the timer's


def test_stale_step_section_pairs_old_records_with_todays():
    # the retrain runs scored with abs_mean: their base is sseds_abs_mean
    today = [_record("sseds_abs_mean", s, 0.80) for s in range(3)] + [_record("sseds_retrain", s, 0.81)
                                                                       for s in range(3)]
    stale = [_record("sseds_retrain", s, v) for s, v in enumerate([0.82, 0.83, 0.82])]
    lines = planted.stale_step_section(today, stale)
    rows = {line.split(" | ")[2]: line for line in lines if line.startswith("| s |")}
    # stale minus today's retrain: 0.01, 0.02, 0.01 (the hand computation of the paired test); minus sseds: +0.01 more
    assert "| +0.0133 | +4.0 SE | +0.0100 to +0.0200 (n=3) |" in rows["sseds_retrain (stale step) - sseds_retrain"]
    assert "| +0.0233 |" in rows["sseds_retrain (stale step) - sseds_abs_mean"]
    assert planted.stale_step_section(today, []) == []


def test_rotated_moments_section_pairs_the_experiment_with_todays_records():
    def rec(m, s, v):
        return {**_record(m, s, v), "kept_dims": [1], "params_fraction": 0.1, "epoch": 2, "test_aucs": [], "ranks": [1]}

    today = [rec("sseds_rotate", s, v) for s, v in enumerate([0.79, 0.80, 0.80])]
    today += [rec("uniform_floor", s, 0.78) for s in range(3)] + [rec("uniform_ceil", s, 0.77) for s in range(3)]
    rotated = [rec("sseds_rotate", s, v) for s, v in enumerate([0.80, 0.82, 0.81])]
    lines = planted.rotated_moments_section(today, rotated)
    row = [line for line in lines if line.startswith("| s | oracle | sseds_rotate |")]
    # rotated minus zeroed: 0.01, 0.02, 0.01 (the paired test's hand computation); against the better
    # uniform model (floor, 0.78): 0.02, 0.04, 0.03 -> +0.03 / (0.01 / sqrt(3)) = +5.2 SE; zeroed: 0.01, 0.02,
    # 0.02 -> (0.05 / 3) / (sqrt(1 / 3) / 100 / sqrt(3)) = +5.0 SE
    assert len(row) == 1 and "| +0.0133 | +4.0 SE | +0.0100 to +0.0200 (n=3) | +5.2 SE | +5.0 SE |" in row[0]
    pooled = [line for line in lines if line.startswith("| all | both | sseds_rotate |")]
    assert len(pooled) == 1 and "| +0.0133 | +4.0 SE | 3 of 3 seeds above |" in pooled[0]
    assert planted.rotated_moments_section(today, []) == []


def test_serving_report_states_each_record_once_with_its_batch_512_ratios(tmp_path):
    """The report of the committed serving records: two loaders' targets per batch, but the per-value
    options once per record, with the batch-512 ratios they name (not those of batch 1 or 4096)."""
    records = _common.load_jsonl(serving.RESULTS)
    with_session = [r for r in records if "session" in r]
    if not with_session:
        pytest.skip("no serving record timed with both loaders")
    text = serving.report(with_session, str(tmp_path / "serving.md"), None)
    for r in with_session:
        name = f"{serving._label(r)} b={r['budget']}"
        lines = [line for line in text.splitlines() if line.startswith(f"- {name} batch 512: per value with")]
        assert len(lines) == 1
        rat, sess = r["ratios"]["512"], r["session"]["ratios"]["512"]
        assert f"jit_compile=True: {rat['pme_xla/full']:.2f}x full;" in lines[0]
        assert f"(session loader: jit_compile=True {sess['pme_xla/full']:.2f}x full)" in lines[0]
        for batch in r["ratios"]:
            for where, ratios in (("", r["ratios"][batch]), (" (session)", r["session"]["ratios"][batch])):
                target = f"| {name} batch {batch}: per field <= 1.0x full{where} |"
                assert sum(line.startswith(target) for line in text.splitlines()) == 1
                assert f"{target} {'yes' if ratios['sseds/full'] <= 1.0 else '**no**'} | {ratios['sseds/full']:.3f} |" \
                    in text


def test_warmup_report_quotes_medians_over_processes_and_per_process_ratios(tmp_path):
    """First / steady is the median of each process' own ratio, not the ratio of the medians."""
    def run(first, steady, load=0.05, warm=0.1):
        return {"load_s": load, "warmup_s": warm, "records": 4, "first": {str(b): first for b in warmup_bench.BATCHES},
                "steady": {str(b): steady for b in warmup_bench.BATCHES}}

    runs = {"sseds": [run(0.002, 0.001), run(0.004, 0.001), run(0.003, 0.002)],  # ratios 2, 4, 1.5
            "sseds_nowarmup": [run(0.060, 0.001, warm=0.0), run(0.050, 0.002, warm=0.0), run(0.090, 0.001, warm=0.0)]}
    exports = {"sseds": {"warmup_requests": 4, "warmup_bytes": 3000, "total_bytes": 170000},
               "sseds_nowarmup": {"warmup_requests": 0, "warmup_bytes": 0, "total_bytes": 167000}}
    record = {"dataset": "frappe", "cap": None, "fields": 10, "exports": exports, "runs": runs, "processes": 3,
              "reps": 20, "commit": "abc1234"}
    s = warmup_bench.summary(record)
    assert s["sseds"]["first_1"] == pytest.approx(3.0) and s["sseds"]["steady_1"] == pytest.approx(1.0)
    assert s["sseds"]["ratio_1"] == pytest.approx(2.0)  # median of 2, 4, 1.5 (the medians' ratio is 3)
    assert s["sseds_nowarmup"]["ratio_512"] == pytest.approx(60.0)  # median of 60, 25, 90
    assert s["sseds"]["warmup_ms"] == pytest.approx(100.0) and s["sseds"]["load_ms"] == pytest.approx(50.0)
    text = warmup_bench.report([record], str(tmp_path / "warmup.md"), None)
    assert "the first request of batch 1: 3.00 ms (2.0x the steady state) with the warmup requests, 60.00 ms " \
           "(60.0x) without" in text
    assert "| frappe | per field (default: warmup requests) | 4 | 3,000 | 50 | 100 | 3.00 | 1.00 | 2.00 |" in text


@pytest.mark.parametrize("model", serving_models.MODELS)
def test_serving_models_exports_and_page(tmp_path, model):
    """benchmarks/serving_models.py's models: the searched export folds what it should (DCN: both
    cross layers and the MLP; DeepFM: the MLP and the FM term; history: the average of the bag
    and the MLP; mean: the MLP, the average over fields taken in; projected: the Dense applied to
    every field, from each field's kept columns, with width_budget) on fewer columns than the
    padded export's 26 x 16 (with width_budget at most the uniform model's), the baselines take
    F x dims (mean: dims); the page states every export at every batch with this (hand-made)
    timing's ratios."""
    if model == "dcn":
        pytest.importorskip("keras_rs" if ked.KERAS_3 else "tensorflow_recommenders")
    data = serving_models.with_history(model, serving.load("criteo", 40, 3000, 0), 40, 0)
    exports = serving_models.export_models(model, data, 0.1, str(tmp_path), seed=0, batch=512)
    folded = {"dcn": ["cross_1", "cross_2", "deep_0"], "deepfm": ["deep_0", "fm"], "history": ["mlp_0"],
              "mean": ["mlp_0"], "projected": ["projection"]}[model]
    F = 27 if model == "history" else 26
    if model == "projected":  # folded where no field keeps more than D / 2 columns (tests/test_fold.py), else padded
        for name in ("ours", "ours_width"):
            e = exports[name]
            assert e["folded_into"] in ([], folded) and (e["columns"] == F * 16) == (not e["folded_into"]), e
    else:
        assert exports["ours"]["folded_into"] == folded == exports["ours_width"]["folded_into"]
        assert 0 < exports["ours"]["columns"] < F * 16
    if model == "history":  # the bag of ids is averaged on its kept columns
        assert exports["ours"]["folds"]["history_embedding"] == ["history_pool", "mlp_0"]
        assert exports["ours_padded"]["folds"]["history_embedding"] == []
    per_dim = 1 if model == "mean" else F  # the MLP's columns per embedding dimension
    assert exports["ours_padded"]["folded_into"] == [] and exports["ours_padded"]["columns"] == per_dim * 16
    if exports["ours_width"]["folded_into"]:
        assert 0 < exports["ours_width"]["columns"] <= F * 2  # width_budget: at most the uniform model's columns
    assert (exports["full"]["columns"], exports["uniform"]["columns"]) == (per_dim * 16, per_dim * 2)
    # mean: the folded kernel has a row per kept value (here more than the D = 16 averaged); projected: a block of
    # kernel rows per field (26 x 16 x 16 here, against tables of 40 rows)
    if model not in ("mean", "projected"):
        assert exports["ours"]["variables_on_disk"] < exports["ours_padded"]["variables_on_disk"]
    ms = {"full": 2.0, "uniform": 1.0, "ours": 1.0, "ours_padded": 3.0, "ours_width": 1.0}
    timing = {"1": {"ms": ms, "ratios": {"ours/full": 0.5, "ours/uniform": 1.0, "ours_padded/full": 1.5,
                                          "ours_padded/uniform": 3.0}}}
    record = {"model": model, "budget": 0.1, "cap": 40, "fields": 26, "commit": "abc1234", "rounds": 3, "reps": 2,
              "processes": 1, "tf2": timing, "session": timing,
              "exports": {k: {kk: vv for kk, vv in v.items() if kk != "path"} for k, v in exports.items()}}
    text = serving_models.report([record], str(tmp_path / "models.md"))
    row = [line for line in text.splitlines() if "| searched, folded |" in line]
    assert row == [f"| {model} | 0.1 | searched, folded | {exports['ours']['columns']} | "
                   f"{exports['ours']['variables_on_disk']:,} | 1 | 1.00 | 0.50 | 1.00 | 1.00 | 0.50 | 1.00 |"]
    assert f"| {model} | 0.1 | full (model.export) (16 dims) | {per_dim * 16} |" in text and "commit abc1234" in text
