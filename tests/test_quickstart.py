from keras_embdim import quickstart


def test_quickstart_runs_the_whole_job(tmp_path, capsys):
    out = quickstart.main(["--rows", "30000", "--fields", "8", "--export", str(tmp_path / "qs"), "--epochs", "2"])
    printed = capsys.readouterr().out
    assert "test AUC: full dims" in printed and "served in a fresh process" in printed
    assert str(tmp_path / "qs") in printed
    padding = out["export"].embedding_padding_bytes  # narrow small fields padded into a wider table
    folded = out["export"].embedding_rank_folded_bytes  # fields of fewer ids than kept columns, at their rank
    assert out["export"].embedding_bytes == out["pruner"].params_after * 4 - folded + padding
    assert padding <= 0.01 * out["pruner"].params_after * 4
    # the printed bytes add up: kept params x 4 B, less what rank-folded fields do not store, plus the padding
    line = next(text for text in printed.splitlines() if "embedding tables" in text)
    assert f"{out['export'].embedding_bytes:,} B (= {out['pruner'].params_after:,} params x 4 B" in line
    assert (f" - {folded:,} B that fields of fewer ids" in line) == (folded > 0)
    assert (f" + {padding:,} B of zero padding" in line) == (padding > 0)
    assert out["serve"]["tf1_max_abs_diff"] <= 1e-5 and out["serve"]["serve_max_abs_diff"] <= 1e-5
    assert out["pruner"].kept_fraction <= 0.2
    # the naive alternative beside the result: uniform floor(0.2 x 16) = 3 and ceil = 4 dims
    assert sorted(out["auc_uniform"]) == [3, 4]
    assert all(0.5 < a < 1 for a in out["auc_uniform"].values())
    assert "uniform 3 dims for every field (18.75% of the parameters)" in printed
    assert "against the better uniform model" in printed
