"""The scaling benchmark (benchmarks/scaling.py): its data shape, one worker run, ratios and report."""

import os

import numpy as np
import pytest

import scaling  # noqa: E402


def test_vocab_sizes_have_the_largest_tables_at_the_top_size():
    v = scaling.vocab_sizes(1_000_000)
    assert len(v) == 26 and v[:3] == [1_000_000] * 3
    assert min(v) == 10 and max(v[3:]) == 100_000


@pytest.mark.parametrize("config", ["plain", "pme"])
def test_worker_measures_a_tiny_run(tmp_path, monkeypatch, config):
    monkeypatch.setattr(scaling, "DATA_DIR", str(tmp_path))
    path = scaling.make_data(200, 3000)
    assert os.path.exists(path) and scaling.make_data(200, 3000) == path  # generated once
    z = np.load(path)
    assert z["x"].shape == (3000, 26) and z["vocab"].tolist() == scaling.vocab_sizes(200)
    rec = scaling.worker(config, path, str(tmp_path / "out"))
    assert len(rec["epoch_seconds"]) == scaling.EPOCHS and rec["train_peak_rss"] > 100 * 2**20
    assert len(rec["step_median"]) == scaling.EPOCHS and 0 < rec["step_median"][0] < rec["epoch_seconds"][0]
    assert rec["full_table_bytes"] == sum(scaling.vocab_sizes(200)) * 16 * 4
    if config == "pme":
        assert rec["kept_fraction"] <= scaling.BUDGET and rec["bytes_ratio"] <= 1.10
        assert rec["export_max_abs_diff"] <= 1e-5 and rec["export_seconds"] > 0
        assert rec["export_peak_rss"] is None or rec["export_peak_rss"] > 0


def test_ratios_and_report_from_records(tmp_path):
    base = {"rows": 10, "full_table_bytes": 2**20, "auc": 0.7, "commit": "x"}
    recs = [
        {**base, "vocab": 100, "config": "plain", "epoch_seconds": [10.0, 9.0], "step_median": [0.010, 0.009], "train_peak_rss": 1000 * 2**20},
        {**base, "vocab": 100, "config": "sseds", "epoch_seconds": [10.5, 9.0], "step_median": [0.0105, 0.009], "train_peak_rss": 1100 * 2**20,
         "search_seconds": 0.2, "kept_fraction": 0.1, "export_seconds": 2.0, "export_peak_rss": 900 * 2**20,
         "bytes_ratio": 1.0, "layout": "field"},
        {**base, "vocab": 100, "config": "ham", "epoch_seconds": [14.0, 9.0], "step_median": [0.012, 0.009], "train_peak_rss": 1600 * 2**20,
         "search_seconds": None, "kept_fraction": 0.1, "export_seconds": 2.0, "export_peak_rss": 1200 * 2**20,
         "bytes_ratio": 1.0, "layout": "field"},
    ]
    r = scaling.ratios(recs)
    assert r[(100, "sseds")]["search"] == pytest.approx(0.02) and r[(100, "sseds")]["rss"] == pytest.approx(1.1)
    # HAM: judged on the median step (1.2x), the epoch ratio (1.4x) shown beside it
    assert r[(100, "ham")]["search"] == pytest.approx(1.2) and r[(100, "ham")]["epoch_ratio"] == pytest.approx(1.4)
    assert r[(100, "ham")]["rss"] == pytest.approx(1.6)
    cache = tmp_path / "s.jsonl"
    cache.write_text("\n".join(__import__("json").dumps(x) for x in recs) + "\n")
    text = scaling.report(str(cache), str(tmp_path / "scaling.md"))
    assert "| V=100 ham: search step <= 1.3 x plain step | yes | 1.200 |" in text
    assert "| V=100 sseds: scoring <= 0.05 x plain epoch | yes | 0.020 |" in text
    assert "| V=100 ham: export peak RSS <= plain peak + one full table | **no** | 1200 MB vs 1001 MB |" in text
    assert (tmp_path / "scaling_rss.png").exists()
