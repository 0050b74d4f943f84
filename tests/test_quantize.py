"""float16 and int8 (per-row scale) exports: the math by hand, exports served in a fresh process."""

import numpy as np
import pytest

import keras_embdim as ked
from keras_embdim.export import compact, layouts
from keras_embdim.export import quantize
from keras_embdim import keras
from keras_embdim.serving import check_in_fresh_process


def test_int8_by_hand():
    rows = np.array([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]], np.float32)
    q, s = quantize.quantize(rows, "int8")
    assert s.dtype == np.float16
    np.testing.assert_array_equal(s, np.array([2 / 127, 1.0], np.float16))  # an all-zero row reads back as zeros
    # 2 / 127 in float16 is 0.015747..., a hair above 2 / 127: 1 / s = 63.50, 2 / s = 127.0
    np.testing.assert_array_equal(q, [[64, -127, 32], [0, 0, 0]])
    back = quantize.dequantize(q, s)
    assert np.all(np.abs(back - rows) <= s.astype(np.float32)[:, None] * 0.5 + 1e-3 * np.abs(rows))
    np.testing.assert_array_equal(back[1], 0)


def test_float16_round_trip_and_bad_dtype():
    x = np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32)
    back = quantize.round_trip(x, "float16")
    assert np.all(np.abs(back - x) <= np.abs(x) * 2**-11 + 1e-7)
    with pytest.raises(ValueError, match="`table_dtype` must be one of"):
        quantize.check_dtype("bfloat16")


def _pme(v, dim, names):
    return ked.PrunableEmbedding(v, dim, field_names=names, name="embedding")


@pytest.fixture(scope="module", params=["field", "value"])
def searched(request, small_data):
    """A per-field (SingleShotPruner) or per-value (PMEPruner) model at budget 0.2."""
    keras.utils.set_random_seed(0)
    d = small_data
    model = ked.models.compile_ctr(ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=8, hidden=(16,)))
    cb = (ked.SingleShotPruner(0.2, warmup_steps=5, scoring_steps=5, verbose=0) if request.param == "field"
          else ked.PMEPruner(0.2, verbose=0))
    x, y = d.train
    model.fit(d.inputs(x), y, batch_size=512, epochs=2, verbose=0, callbacks=[cb])
    return request.param, d, model


@pytest.mark.parametrize("table_dtype", ["float16", "int8"])
def test_quantized_export_serves_the_stored_values_and_reports_their_cost(searched, tmp_path, table_dtype):
    granularity, d, model, = searched
    sample = d.inputs(d.test[0][:500])
    before = model.predict(sample, batch_size=500, verbose=0)
    table = np.asarray(ked.find_searchable_layers(model)[0].embedding_variable).copy()
    full = ked.export_compact(model, str(tmp_path / "f32"), sample_inputs=sample, verbose=0)
    r = ked.export_compact(model, str(tmp_path / table_dtype), sample_inputs=sample, verbose=0, table_dtype=table_dtype)
    # the model is untouched: same table, same predictions
    np.testing.assert_array_equal(np.asarray(ked.find_searchable_layers(model)[0].embedding_variable), table)
    np.testing.assert_array_equal(model.predict(sample, batch_size=500, verbose=0), before)
    assert r.table_dtype == table_dtype and r.max_abs_diff <= 1e-5
    assert 0 < r.precision_max_abs_diff < (1e-2 if table_dtype == "float16" else 5e-2)
    kept = r.kept_params
    if granularity == "field":
        # (padding: zero columns of small fields stored in a wider table, at the stored precision)
        assert r.embedding_padding_bytes == full.embedding_padding_bytes // 4 * (2 if table_dtype == "float16" else 1)
        if table_dtype == "float16":
            assert r.embedding_bytes == 2 * kept + r.embedding_padding_bytes
        else:  # one byte per kept value, a float16 scale per row of every field that keeps a column
            mask = ked.find_searchable_layers(model)[0].dimension_mask()
            rows = sum(n for n, k in zip(mask.vocab_sizes, mask.kept_dims) if k)
            assert r.embedding_bytes == kept + 2 * rows + r.embedding_padding_bytes
    else:  # the stored values shrink; int8 adds a float16 scale per row
        rows = sum(d.vocab_sizes)
        assert r.layouts == full.layouts and r.dense_fields == full.dense_fields
        mask = ked.find_searchable_layers(model)[0].dimension_mask()
        per_field = [np.asarray(s) for s in mask.value_sizes]
        # fields stored whole: every row at its group's width (padding included)
        dense = compact.dense_field_plan(per_field, mask.output_dim)
        vocab, widths = np.asarray(mask.vocab_sizes), np.array([s.max() for s in per_field])
        slots = int(compact.group_widths(widths[dense], vocab[dense]) @ vocab[dense]) if dense.any() else 0
        assert r.dense_fields.get("embedding", []) == [mask.field_names[f] for f in np.flatnonzero(dense)]
        if not dense.all():  # the packed fields: their kept values and the zero slot; the head layout: its
            sizes = np.concatenate([per_field[f] for f in np.flatnonzero(~dense)])  # base, head and zero
            slots += int(sizes.sum()) + 1  # slot, padding zeros and zero row included
            if r.layouts["embedding"].endswith("head"):
                p = layouts.pack_index(sizes, mask.output_dim, layout="head")
                m, H, W = p.base_width, p.head_rows, p.head_width
                tail = sizes[(sizes > m) & (sizes < p.head_from)] - m
                slots += len(sizes) * m + (H + 1) * W + int(tail.sum()) - int(sizes.sum())
        if table_dtype == "float16":
            assert r.embedding_bytes == full.embedding_bytes - 2 * slots
        else:
            assert r.embedding_bytes == full.embedding_bytes - 3 * slots + 2 * rows
    # served in a process without keras_embdim, within the precision's own effect of the float model
    report = check_in_fresh_process(r.path, sample, {"ctr": before}, atol=r.precision_max_abs_diff + 1e-5)
    assert report["tf2_max_abs_diff"] <= r.precision_max_abs_diff + 1e-5
    assert report["tf1_max_abs_diff"] <= r.precision_max_abs_diff + 1e-5


def test_bad_table_dtype_is_refused_before_anything_is_written(searched, tmp_path):
    _, d, model = searched
    with pytest.raises(ValueError, match="`table_dtype` must be one of"):
        ked.export_compact(model, str(tmp_path / "e"), table_dtype="int4")
    with pytest.raises(ValueError, match="`table_dtype` must be one of"):
        ked.DimensionExporter(str(tmp_path / "e"), table_dtype="int4")
    assert not (tmp_path / "e").exists()
