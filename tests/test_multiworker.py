"""MultiWorkerMirroredStrategy with two worker processes on loopback (TF_CONFIG), tf_keras.

Every search runs on both workers; the chief exports after the last step (no
collective: the other worker may be gone), and its export serves in a fresh
TF-only process exactly what the trained model predicts, as does the export of
the same weights loaded outside the strategy.

Keras 3 (3.15) cannot run `fit` under MultiWorkerMirroredStrategy for a model
with dict inputs, ours or not (docs/guides/distribution.md), so the workers
always run under tf_keras; the test runs once, in the Keras 2 pass of CI.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import keras_embdim as ked
from keras_embdim._compat import KERAS_3
from keras_embdim.serving import check_in_fresh_process
from scripts.loopback import free_ports

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "multiworker_search.py")
METHODS = ["sseds", "ham", "pme", "amtl"]

pytestmark = pytest.mark.skipif(
    KERAS_3, reason="the workers run under tf_keras: tested in the Keras 2 pass only")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    out = tmp_path_factory.mktemp("multiworker")
    workers = [f"localhost:{p}" for p in free_ports(2)]
    procs = []
    for i in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_USE_LEGACY_KERAS": "1",
               "TF_CPP_MIN_LOG_LEVEL": "2"}
        procs.append(subprocess.Popen([sys.executable, SCRIPT, str(out), *METHODS], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        logs = [p.communicate(timeout=900) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, logs):
        assert p.returncode == 0, err[-4000:]
    runs = [json.loads((out / f"worker_{i}.json").read_text()) for i in range(2)]
    data = ked.data.make_synthetic_ctr(num_rows=12_000, num_fields=5, max_vocab=300, seed=3)
    return runs, data


def test_two_workers_are_two_replicas(cluster):
    runs, _ = cluster
    assert [r["replicas"] for r in runs] == [2, 2]


@pytest.mark.parametrize("method", METHODS)
def test_workers_agree_on_masks_within_budget(cluster, method):
    runs, _ = cluster
    chief, other = runs[0][method], runs[1][method]
    assert chief["kept_dims"] == other["kept_dims"]
    assert chief["value_sizes"] == other["value_sizes"]
    assert chief["kept_params"] == other["kept_params"] <= 0.25 * chief["full_params"]
    assert chief["kept_params"] < chief["full_params"]
    np.testing.assert_allclose(chief["loss"], other["loss"], rtol=1e-6)  # the all-reduced loss


@pytest.mark.parametrize("method", METHODS)
def test_chief_export_serves_what_was_trained_and_equals_single_process_export(cluster, method):
    runs, data = cluster
    rec = runs[0][method]
    assert rec["export_max_abs_diff"] <= 1e-5
    assert rec["export_bytes"] == rec["single_export_bytes"]
    assert rec["kept_params"] * 4 <= rec["export_bytes"] <= 1.10 * rec["kept_params"] * 4  # per value: + index
    sample = data.inputs(data.test[0][:256])
    expected = {"ctr": np.asarray(rec["pred"], np.float32).reshape(-1, 1)}
    report = check_in_fresh_process(rec["export"], sample, expected, atol=1e-5)  # the chief's, as TF Serving loads it
    assert report["keras_embdim_importable"] is False
    assert report["tf2_max_abs_diff"] <= 1e-5 and report["tf1_max_abs_diff"] <= 1e-5
    # the single-process export of the same search serves the same predictions (loaded here: a single-process
    # export's fresh-process check is every other export test's)
    served = tf.saved_model.load(rec["single_export"]).signatures["serving_default"](
        **{k: tf.constant(v, tf.int64) for k, v in sample.items()})["ctr"].numpy()
    np.testing.assert_allclose(served, expected["ctr"], atol=1e-5)


def test_cluster_example_runs_on_loopback_and_workers_agree(tmp_path):
    example = os.path.join(os.path.dirname(SCRIPT), "..", "..", "examples", "cluster_search.py")
    proc = subprocess.run(
        [sys.executable, example, "--local-workers", "2", "--export-dir", str(tmp_path / "ctr"), "--rows", "12000",
         "--fields", "5", "--max-vocab", "300", "--epochs", "2", "--budget", "0.2"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = sorted((json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"worker"')),
                       key=lambda s: s["worker"])
    assert [s["worker"] for s in summaries] == [0, 1]
    assert summaries[0]["kept_dims"] == summaries[1]["kept_dims"]
    assert summaries[0]["kept_fraction"] <= 0.2
    assert summaries[0]["export"] == str(tmp_path / "ctr" / "1")
    assert os.path.exists(os.path.join(summaries[0]["export"], "saved_model.pb"))


def test_cluster_example_runs_under_parameter_server_strategy_on_loopback(tmp_path):
    # the same example with --strategy ps: a chief (coordinator), 2 workers and 2 parameter servers
    example = os.path.join(os.path.dirname(SCRIPT), "..", "..", "examples", "cluster_search.py")
    proc = subprocess.run(
        [sys.executable, example, "--strategy", "ps", "--local-workers", "2", "--local-ps", "2",
         "--export-dir", str(tmp_path / "ctr"), "--rows", "12000", "--fields", "5", "--max-vocab", "3000",
         "--epochs", "2", "--budget", "0.2"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"worker"')]
    assert len(summary) == 1 and summary[0]["worker"] == "chief"
    assert summary[0]["tables"] == "ShardedVariable"  # the 3000-value field's table is over 64 KiB
    assert 0.19 <= summary[0]["kept_fraction"] <= 0.2
    assert summary[0]["export"] == str(tmp_path / "ctr" / "1")
    assert os.path.exists(os.path.join(summary[0]["export"], "saved_model.pb"))
