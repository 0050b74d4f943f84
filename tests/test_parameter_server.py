"""ParameterServerStrategy on loopback (tf_keras): coordinator, 2 workers, 2 parameter servers.

Our layers train with tables sharded over both servers (a `variable_partitioner`),
a model searched elsewhere trains and exports from sharded tables, every search
runs there at epoch boundaries and exports, and the options that need
batch-level callbacks refuse the strategy naming the option (docs/guides/distribution.md).
Keras 3 has no ParameterServerStrategy support in `fit`: the cluster runs under tf_keras, in the Keras 2 pass of CI.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import keras_embdim as ked
from keras_embdim._compat import KERAS_3
from keras_embdim.serving import check_in_fresh_process

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "ps_cluster.py")

pytestmark = pytest.mark.skipif(KERAS_3, reason="the cluster runs under tf_keras: tested in the Keras 2 pass only")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    out = tmp_path_factory.mktemp("ps")
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, SCRIPT, str(out)], capture_output=True, text=True, timeout=900, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1])


def test_cluster_has_two_workers(cluster):
    assert cluster["workers"] == 2


@pytest.mark.parametrize("model", ["plain", "prunable", "ham"])
def test_layers_train_with_tables_sharded_over_both_servers(cluster, model):
    run = cluster[model]
    assert run["sharded"] == ["ShardedVariable"]
    assert len(run["shards"][0]) == 2 and sum(s[0] for s in run["shards"][0]) > 0
    assert len(run["devices"]) == 2 and all("/job:ps/" in dev for dev in run["devices"])
    assert run["loss"][1] < run["loss"][0] and run["pred_finite"] and run["pred_std"] > 0


def test_layers_learn_like_the_plain_model(cluster):
    # same data, seed and steps: a PrunableEmbedding at full dims is an Embedding
    assert abs(cluster["prunable"]["loss"][-1] - cluster["plain"]["loss"][-1]) < 0.03


def test_searched_model_trains_and_exports_from_sharded_tables(cluster):
    run = cluster["searched"]
    assert run["table"] == "ShardedVariable" and run["shards"] == 2
    assert run["kept_dims"] == run["searched_kept_dims"]
    assert run["export_max_abs_diff"] <= 1e-5
    assert run["export_bytes"] == run["kept_params"] * 4 <= 0.25 * run["full_params"] * 4
    d = ked.data.make_synthetic_ctr(num_rows=8_000, num_fields=4, max_vocab=2_000, seed=1)
    sample = d.inputs(d.test[0][:200])
    expected = {"ctr": np.asarray(run["pred"], np.float32).reshape(-1, 1)}
    report = check_in_fresh_process(run["export"], sample, expected, atol=1e-5)
    assert report["keras_embdim_importable"] is False
    assert report["tf2_max_abs_diff"] <= 1e-5 and report["tf1_max_abs_diff"] <= 1e-5


SEARCHES = ["sseds", "pme", "ham_ortho", "amtl", "ham_warmup"]


@pytest.mark.parametrize("name", SEARCHES)
def test_every_search_runs_at_epoch_boundaries_and_lands_on_the_budget(cluster, name):
    run = cluster["search"][name]
    assert run["phase"] == "done"
    # one copy of the masks, on the parameter servers: what the callback decided is what the layer holds
    assert run["result_kept"] == run["kept_params"] <= 0.25 * run["full_params"]
    assert run["kept_params"] >= 0.25 * run["full_params"] - 2_000  # short by less than the dearest column
    assert all(np.isfinite(run["loss"]))


def test_pme_default_searches_without_the_rotation_and_says_why(cluster):
    rotation, why = cluster["search"]["pme"]["rotation"]
    assert rotation is None and why.startswith("ParameterServerStrategy")


def test_ham_warmup_pauses_the_search_for_its_epoch_then_searches(cluster):
    run = cluster["search"]["ham_warmup"]
    assert run["warmup_left_scores"]  # the workers' steps of the warm-up epoch did not move HAM's scores
    assert run["searched_steps"] == 3 * 20  # it ended at the end of epoch 3 (1 warm-up + 2 search epochs)


@pytest.mark.parametrize("name", SEARCHES)
def test_workers_steps_keep_the_removed_entries_zero_in_the_sharded_table(cluster, name):
    run = cluster["search"][name]
    # two epochs of fine-tuning on the workers after the search: nothing moved a removed entry
    assert run["removed_entries"] == run["full_params"] - run["kept_params"] > 0
    assert run["removed_nonzero"] == 0


@pytest.mark.parametrize("name", SEARCHES)
def test_search_export_serves_what_the_model_predicts_in_a_fresh_process(cluster, name):
    run = cluster["search"][name]
    assert run["export_max_abs_diff"] <= 1e-5
    d = ked.data.make_synthetic_ctr(num_rows=8_000, num_fields=4, max_vocab=2_000, seed=1)
    sample = d.inputs(d.test[0][:200])
    expected = {"ctr": np.asarray(run["pred"], np.float32).reshape(-1, 1)}
    report = check_in_fresh_process(run["export"], sample, expected, atol=1e-5)
    assert report["tf2_max_abs_diff"] <= 1e-5 and report["tf1_max_abs_diff"] <= 1e-5


def test_a_nan_loss_stops_the_search_at_the_epoch_boundary(cluster):
    run = cluster["nan"]
    assert run["phase"] == "failed"
    assert "the training loss became nan at search step 20" in run["error"]
    assert run["kept_params"] == run["full_params"]  # the last good masks: the full ones


@pytest.mark.parametrize("name,head,option", [
    ("sseds_without_scoring_data", "SingleShotPruner (SSEDS)", "scoring_data="),
    ("sseds_warmup_steps", "SingleShotPruner (SSEDS)", "warmup_steps"),
    ("ham_one_epoch", "HardMaskSearch (HAM)", "search_epochs >= 2"),
    ("pme_rotate", "PMEPruner (PME)", "rotate=True"),
    ("pme_mid_epoch", "PMEPruner (PME)", "rotate='mid_epoch'"),
])
def test_options_that_need_batch_callbacks_refuse_naming_the_option(cluster, name, head, option):
    msg = cluster["errors"][name]
    assert msg is not None
    assert msg.startswith(f"{head} does not run under ParameterServerStrategy")
    assert option in msg and "MultiWorkerMirroredStrategy" in msg
