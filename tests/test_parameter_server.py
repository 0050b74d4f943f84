"""ParameterServerStrategy on loopback (tf_keras): coordinator, 2 workers, 2 parameter servers.

Our layers train with tables sharded over both servers (a `variable_partitioner`),
a model searched elsewhere trains and exports from sharded tables, and every
search callback refuses the strategy with an error naming the method and the
alternative (docs/guides/distribution.md). Keras 3 has no ParameterServerStrategy
support in `fit`: the cluster runs under tf_keras, in the Keras 2 pass of CI.
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


@pytest.mark.parametrize("callback,method", [("SingleShotPruner", "SSEDS"), ("HardMaskSearch", "HAM"),
                                             ("PMEPruner", "PME"), ("TwinsMaskSearch", "AMTL"),
                                             ("OrthogonalRegularizer", None)])
def test_callbacks_refuse_the_strategy_naming_method_and_alternative(cluster, callback, method):
    msg = cluster["errors"][callback]
    assert msg is not None
    head = f"{callback} ({method})" if method else callback
    assert msg.startswith(f"{head} does not run under ParameterServerStrategy")
    assert "MultiWorkerMirroredStrategy" in msg and "rebuild_mixed" in msg
