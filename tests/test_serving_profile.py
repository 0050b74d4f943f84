"""benchmarks/serving_profile.py: op time by type, read from the step stats of SavedModels run in a fresh process."""

import numpy as np

import _common
import serving_profile  # benchmarks/ is on pytest's pythonpath (pyproject.toml)
import keras_embdim as ked
from keras_embdim import keras


def test_categories():
    assert serving_profile.category("_MklNativeFusedMatMul") == "MatMul"
    assert serving_profile.category("ResourceGather") == "ResourceGather"
    assert serving_profile.category("BitwiseAnd") == "other"
    parts = serving_profile.split({"MatMul": 5.0, "_MklNativeFusedMatMul": 2.0, "Less": 1.0, "Sub": 0.5})
    assert parts["MatMul"] == 7.0 and parts["other"] == 1.5 and parts["ConcatV2"] == 0.0


def test_profile_reads_the_ops_each_export_runs(small_data, tmp_path):
    d = small_data
    keras.utils.set_random_seed(0)
    plain = ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=4, embedding="plain", hidden=(8,))
    base = str(tmp_path / "plain")
    _common.keras_export(plain, base)
    model = ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=4, hidden=(8,))
    widths = np.array([1, 2, 2, 3, 4, 4])[: d.num_fields]
    ked.find_searchable_layers(model)[0].set_dimension_mask(np.arange(4)[None, :] < widths[:, None])
    ours = ked.export_compact(model, str(tmp_path / "ours"), sample_inputs=d.inputs(d.test[0][:50]), verbose=0).path
    result = serving_profile.profile({"plain": base, "ours": ours}, d, [1, 64], reps=3)
    for name in ("plain", "ours"):
        for batch in ("1", "64"):
            r = result[name][batch]
            parts = serving_profile.split(r["by_type"])  # medians per op type over the rounds
            assert r["total"] > 0 and all(v >= 0 for v in parts.values()) and parts["MatMul"] > 0
    # Keras 3's Embedding reads its table and gathers with GatherV2 (tf_keras' gathers from the variable); our
    # per-field tables are gathered from the variables, one ResourceGather per kept width (1, 2, 3 and 4 here)
    plain_ops = result["plain"]["64"]["by_type"]
    if ked.KERAS_3:
        assert plain_ops.get("ResourceGather", 0) == 0 and plain_ops["GatherV2"] > 0
    else:
        assert plain_ops["ResourceGather"] > 0
    assert result["ours"]["64"]["by_type"]["ResourceGather"] > 0
    # each width table stacks its own fields from the per-field inputs: no GatherV2 selects them from a
    # stack of all fields, no transpose, and no clip to int32 (Minimum/Maximum) of the int64 request
    assert not {"GatherV2", "Transpose", "Minimum", "Maximum"} & set(result["ours"]["64"]["by_type"])
    assert all(result[n][b]["ops"] > 0 for n in ("plain", "ours") for b in ("1", "64"))
