import math
import os

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

import keras_embdim as ked
from keras_embdim.export import layouts as ragged

import reference
from keras_embdim import keras
from keras_embdim._compat import tf_variable
from keras_embdim.callbacks.pme_pruner import select_entries
from keras_embdim.export import TABLES_ATTRIBUTE, saved_variable_bytes
from keras_embdim.serving import check_in_fresh_process


def test_select_entries_hand_example():
    imp = [np.array([[5.0, 1.0, 0.0], [4.0, 3.0, 2.0]]), np.array([[0.5, 6.0, 0.1]])]
    # floor: each row's best entry (5, 4, 6); 2 more: 3 and 2 (row 1), not 1.0
    counts = select_entries(imp, 5, min_size=1)
    assert [c.tolist() for c in counts] == [[1, 3], [1]]
    assert [c.tolist() for c in select_entries(imp, 3, min_size=0)] == [[1, 1], [1]]
    with pytest.raises(ValueError, match="min_dim"):
        select_entries(imp, 2, min_size=1)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 50), st.integers(1, 8), st.integers(0, 2), st.floats(0.05, 1.0), st.integers(0, 1000))
def test_select_entries_keeps_exactly_the_target(rows, D, min_size, frac, seed):
    rng = np.random.default_rng(seed)
    imp = [rng.random((rows, D)), rng.random((rows + 3, D))]
    total = sum(i.size for i in imp)
    target = int(frac * total)
    floor = sum(i.shape[0] * min(min_size, D) for i in imp)
    if floor > target:
        with pytest.raises(ValueError):
            select_entries(imp, target, min_size)
        return
    counts = select_entries(imp, target, min_size)
    assert sum(int(c.sum()) for c in counts) == target
    assert all((c >= min(min_size, D)).all() and (c <= D).all() for c in counts)


def test_entry_probe_equals_hand_computation():
    rng = np.random.default_rng(0)
    layer = ked.PrunableEmbedding([5, 4], 3)
    ids = np.array([[1, 0], [1, 3], [4, 3]])
    layer(ids)
    w = rng.normal(size=(2, 3)).astype(np.float32)
    probe = layer.attach_entry_probe()
    with tf.GradientTape() as tape:
        out = layer(ids)
        loss = tf.reduce_sum(out * w) ** 2 / 2
    tape.gradient(loss, tf_variable(layer.embedding_variable))
    layer.detach_probe()
    table = np.asarray(layer.embedding_variable, np.float64)
    rows = np.stack([ids[:, 0], ids[:, 1] + 5], 1)
    e = table[rows]
    up = np.sum(e * w) * np.broadcast_to(w, e.shape)
    want = np.zeros_like(table)
    np.add.at(want, rows.reshape(-1), np.abs(e * up).reshape(-1, 3))  # per occurrence
    np.testing.assert_allclose(probe.importance.numpy(), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dim, dtype", [(5, np.int8), (200, np.int16)])
def test_value_sizes_are_read_in_the_narrowest_signed_integers(dim, dtype):
    """A per-value mask holds its sizes in 1 B per row up to D = 127 (2 B above), value for value
    as set, and its counts are those of the sizes (an export reads every row's size: 1e6-row
    fields)."""
    layer = ked.PrunableEmbedding([6, 4], dim)
    layer(np.array([[1, 2]]))
    sizes = np.array([0, 2, dim, 1, 3, 4, dim, 0, 2, dim - 1])
    layer.set_value_sizes(sizes)
    mask = layer.dimension_mask()
    assert [s.dtype for s in mask.value_sizes] == [np.dtype(dtype)] * 2
    np.testing.assert_array_equal(np.concatenate(mask.value_sizes), sizes)
    assert mask.kept_params == int(sizes.sum())
    assert mask.to_records()[0]["size_histogram"] == np.bincount(sizes[:6], minlength=dim + 1).tolist()


def test_per_value_forward_gradient_and_errors():
    layer = ked.PrunableEmbedding([6, 4], 5)
    ids = np.array([[1, 2], [5, 3], [1, 0]])
    layer(ids)
    sizes = np.array([0, 2, 5, 1, 3, 4, 5, 0, 2, 1])
    layer.set_value_sizes(sizes)
    assert layer.per_value
    table = np.asarray(layer.embedding_variable)
    rows = np.stack([ids[:, 0], ids[:, 1] + 6], 1)
    want = reference.prefix_lookup(table, sizes, rows)
    np.testing.assert_array_equal(np.asarray(layer(ids)), want)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(ids) ** 2 + layer(ids))
    g = tf.convert_to_tensor(tape.gradient(loss, tf_variable(layer.embedding_variable))).numpy()
    beyond = np.arange(5)[None, :] >= sizes[:, None]
    assert np.all(g[beyond] == 0)
    assert np.all(table[beyond] == 0)  # removed entries were zeroed
    m = layer.dimension_mask()
    assert m.granularity == "value" and m.kept_params == sizes.sum()
    assert [s.tolist() for s in m.value_sizes] == [sizes[:6].tolist(), sizes[6:].tolist()]
    with pytest.raises(ValueError, match="10 integers"):
        layer.set_value_sizes(np.ones(9, int))
    with pytest.raises(ValueError, match=r"\[0, 5\]"):
        layer.set_value_sizes(np.full(10, 6))
    with pytest.raises(ValueError, match="per-value sizes"):
        layer.set_dimension_mask(np.ones((2, 5)))
    other = ked.PrunableEmbedding([6, 4], 5)
    other(ids)
    other.set_dimension_mask(np.tril(np.ones((2, 5)))[:, ::-1] > 0)
    with pytest.raises(ValueError, match="per-field mask"):
        other.set_value_sizes(sizes)


@pytest.fixture(scope="module")
def pme_trained(tmp_path_factory):
    keras.utils.set_random_seed(0)
    d = ked.data.make_synthetic_ctr(num_rows=30_000, num_fields=6, max_vocab=2000, seed=4)
    model = ked.models.compile_ctr(ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=8, hidden=(32,)))
    path = str(tmp_path_factory.mktemp("pme") / "export")
    pruner = ked.PMEPruner(0.2, verbose=0)
    sample = d.inputs(d.test[0][:1000])
    x, y = d.train
    exporter = ked.DimensionExporter(path, sample_inputs=sample, verbose=0)
    model.fit(d.inputs(x), y, batch_size=512, epochs=2, verbose=0, callbacks=[pruner, exporter])
    return d, model, pruner, exporter.result.path, sample


def test_capacity_transfer_keeps_the_parameter_count(pme_trained):
    d, model, pruner, _, _ = pme_trained
    r = pruner.result
    layer = ked.find_searchable_layers(model)[0]
    sizes = np.concatenate(layer.dimension_mask().value_sizes)
    assert int(sizes.sum()) == r.params_after == r.params_after == math.floor(0.2 * r.params_full)
    assert sizes.min() >= 1  # min_dim=1
    assert r.batches > 0


def test_frequent_values_get_more_dims(pme_trained):
    d, model, _, _, _ = pme_trained
    layer = ked.find_searchable_layers(model)[0]
    m = layer.dimension_mask()
    f = int(np.argmax(d.vocab_sizes))
    counts, sizes = d.value_counts[f], m.value_sizes[f]
    frequent = counts >= np.percentile(counts, 90)
    rare = counts <= np.percentile(counts, 50)
    assert sizes[frequent].mean() > sizes[rare].mean() + 1


def test_export_equal_and_bytes_within_ten_percent(pme_trained):
    d, model, pruner, path, sample = pme_trained
    report = check_in_fresh_process(path, sample, {"ctr": model.predict(sample, batch_size=1000, verbose=0)})
    assert report["tf2_max_abs_diff"] <= 1e-5 and report["tf1_max_abs_diff"] <= 1e-5
    emb = sum(b for k, b in saved_variable_bytes(path).items() if k.startswith(TABLES_ATTRIBUTE + "/"))
    kept = pruner.result.params_after
    assert emb <= 1.10 * kept * 4
    layer = ked.find_searchable_layers(model)[0]
    mask = layer.dimension_mask()
    assert emb == reference.split_export_bytes(np.asarray(layer.embedding_variable), list(mask.value_sizes),
                                              mask.output_dim)[0]


def test_low_budget_export_marks_the_empty_rows_and_stays_within_ten_percent(tmp_path):
    """At budget 0.05 with min_dim=0 most values keep nothing: 5-bit planes would be about 1.2x the
    kept bytes; the sparse layout (rows of size 0 only marked) stays within 1.10x, and so does the
    head layout built on it (the widest rows whole, their keys as uint16 steps, the others in a sparse
    tail with the empty rows only marked): the export takes the head one and serves the same; an
    XLA-compiled export takes the sparse one."""
    keras.utils.set_random_seed(0)
    d = ked.data.make_synthetic_ctr(num_rows=20_000, num_fields=5, max_vocab=2000, seed=5)
    model = ked.models.compile_ctr(ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=16, hidden=(16,)))
    # on the table's own axes: the size histogram this test's layout checks were built on
    pruner = ked.PMEPruner(0.05, min_dim=0, rotate=False, verbose=0)
    sample = d.inputs(d.test[0][:500])
    # every field packed (no field stored whole): the packed layouts' bytes are what this test checks
    exporter = ked.DimensionExporter(str(tmp_path / "export"), sample_inputs=sample, verbose=0,
                                     value_dense_fields=False)
    x, y = d.train
    model.fit(d.inputs(x), y, batch_size=512, epochs=2, verbose=0, callbacks=[pruner, exporter])
    sizes = np.concatenate(ked.find_searchable_layers(model)[0].dimension_mask().value_sizes)
    assert (sizes == 0).mean() > 0.5 and len(np.unique(sizes)) > 8  # many empty rows, the others spread
    kept = int(sizes.sum())
    nbytes = ragged.layout_bytes(sizes, 16)
    assert nbytes["planes"] > 1.10 * 4 * kept  # what marking the empty rows saves
    assert nbytes["sparse"] <= 1.10 * 4 * kept
    assert exporter.result.layouts["embedding"] == "head"
    packed = ragged.pack_index(sizes, 16, layout="head")
    assert packed.base_width == 0  # the empty rows are not keyed: neither stored nor indexed
    np.testing.assert_array_equal(ragged.keyed_rows(packed)[0], np.flatnonzero(sizes))
    assert ragged.choose_layout(sizes, 16, static=True) == "sparse"
    emb = sum(b for k, b in saved_variable_bytes(exporter.result.path).items() if k.startswith(TABLES_ATTRIBUTE + "/"))
    assert emb == nbytes["head"] <= 1.10 * 4 * kept
    want = {"ctr": model.predict(sample, batch_size=500, verbose=0)}
    report = check_in_fresh_process(exporter.result.path, sample, want)
    assert report["tf2_max_abs_diff"] <= 1e-5 and report["tf1_max_abs_diff"] <= 1e-5


def test_keras_round_trip_keeps_per_value_sizes(pme_trained, tmp_path):
    d, model, _, _, sample = pme_trained
    path = str(tmp_path / "pme.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    a, b = (ked.find_searchable_layers(m)[0].dimension_mask() for m in (model, loaded))
    assert b.granularity == "value"
    for s1, s2 in zip(a.value_sizes, b.value_sizes):
        np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(model.predict(sample, verbose=0), loaded.predict(sample, verbose=0))
    assert os.path.exists(path)


def test_bad_pme_arguments(small_data):
    with pytest.raises(ValueError, match="budget"):
        ked.PMEPruner(0)
    with pytest.raises(ValueError, match="search_epochs"):
        ked.PMEPruner(0.2, search_epochs=0)
    d = small_data
    model = ked.models.compile_ctr(ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=4, hidden=(4,)))
    ked.find_searchable_layers(model)[0].set_dimension_mask(np.tril(np.ones((d.num_fields, 4))) > 0)
    with pytest.raises(ValueError, match="searched already"):
        model.fit(d.inputs(d.train[0][:256]), d.train[1][:256], verbose=0, callbacks=[ked.PMEPruner(0.5)])


def test_size_vs_frequency_plot_and_tensorboard(pme_trained, tmp_path):
    d, model, _, _, _ = pme_trained
    png = ked.plots.plot_size_vs_frequency(model, d.value_counts, tmp_path / "sizes.png")
    with open(png, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    bars = ked.plots.plot_dims_per_field(model, tmp_path / "dims.png")
    assert os.path.getsize(bars) > 1000
    with pytest.raises(ValueError, match="one array per field"):
        ked.plots.plot_size_vs_frequency(model, d.value_counts[:2], tmp_path / "x.png")
    rep = ked.dimension_summary(model)
    rec = rep["layers"]["embedding"][0]
    assert sum(rec["size_histogram"]) == rec["vocab"] and "mean_value_dims" in rec


def test_pme_writes_size_histograms_to_tensorboard(small_data, tmp_path):
    d = small_data
    model = ked.models.compile_ctr(ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=4, hidden=(4,)))
    x, y = d.train
    model.fit(d.inputs(x[:2048]), y[:2048], batch_size=512, epochs=1, verbose=0,
              callbacks=[ked.PMEPruner(0.5, verbose=0, log_dir=str(tmp_path / "tb"))])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    tags = acc.Tags()["tensors"]
    assert any(t.startswith("value_sizes/embedding/") for t in tags)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 2), st.floats(0.05, 0.9), st.sampled_from([1, 3, 1 << 18]))
def test_select_entries_matches_a_sorting_reference(seed, min_size, frac, chunk_rows):
    """The chunked radix selection (no whole-table temporary) keeps exactly the
    entries a full sort would, ties broken towards lower positions, min_size first,
    whatever the chunk size."""
    rng = np.random.default_rng(seed)
    imps = [rng.integers(0, 4, (7, 5)).astype(np.float32), rng.random((4, 5)).astype(np.float32)]
    imps[1][0, 0] = np.nan
    total = sum(i.size for i in imps)
    target = max(min_size * 11, int(frac * total))
    got = select_entries(imps, target, min_size, chunk_rows=chunk_rows)
    # reference: mark each row's min_size best, then the best of the rest by a stable sort
    keep = []
    for imp in imps:
        m = np.zeros(imp.shape, bool)
        if min_size:
            np.put_along_axis(m, np.argpartition(-imp, min_size - 1, axis=1)[:, :min_size], True, axis=1)
        keep.append(m)
    flat = np.concatenate([np.where(m, -np.inf, np.nan_to_num(i, nan=-1.0)).ravel() for i, m in zip(imps, keep)])
    rest = target - sum(int(m.sum()) for m in keep)
    chosen = np.zeros(flat.size, bool)
    if rest > 0:
        order = np.argsort(-flat, kind="stable")[:rest]
        chosen[order] = True
    start, want = 0, []
    for i, m in zip(imps, keep):
        want.append((chosen[start:start + i.size].reshape(i.shape) | m).sum(1))
        start += i.size
    assert sum(int(g.sum()) for g in got) == target
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("chunk_rows", [1, 3, 5, 1 << 18])
def test_select_entries_reads_an_accumulator_variable_chunk_by_chunk(chunk_rows):
    """PME's accumulator goes to the selection as the variable (a dense read of the scatter-updated
    variable copied it whole, and its numpy copy was one more table): read chunk by chunk, it keeps
    exactly the entries its numpy value keeps."""
    from keras_embdim.search.probes import EntryProbe

    rng = np.random.default_rng(3)
    probe = EntryProbe(11, 4)
    probe.importance.scatter_add(tf.IndexedSlices(tf.constant(rng.random((9, 4)), tf.float32),
                                                  tf.constant([0, 2, 2, 5, 7, 8, 10, 10, 3])))
    total = probe.total_importance()
    assert total is probe.importance  # one worker: no copy of the accumulator is made
    values = probe.importance.numpy()
    for target, min_size in ((13, 0), (20, 1), (44, 2)):
        got = select_entries([total], target, min_size, chunk_rows=chunk_rows)
        want = select_entries([values], target, min_size)
        np.testing.assert_array_equal(got[0], want[0])
        assert int(got[0].sum()) == target


def _largest_graph_constant(path: str) -> int:
    """Elements of the largest constant in a SavedModel's graph (its functions included)."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        sm.ParseFromString(f.read())
    graph = sm.meta_graphs[0].graph_def
    nodes = list(graph.node) + [n for fn in graph.library.function for n in fn.node_def]
    sizes = [math.prod(d.size for d in n.attr["value"].tensor.tensor_shape.dim) for n in nodes if n.op == "Const"]
    return max(sizes, default=0)


def _small_prunable_mlp(data_seed: int):
    """A 3-field MLP over one `PrunableEmbedding` (D = 8), built: `(data, model, sample, layer)`."""
    keras.utils.set_random_seed(0)
    d = ked.data.make_synthetic_ctr(num_rows=2_000, num_fields=3, max_vocab=2000, seed=data_seed)
    model = ked.models.compile_ctr(ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=8, hidden=(8,),
                                                        embedding="prunable"))
    sample = d.inputs(d.test[0][:300])
    model.predict(sample, verbose=0)
    return d, model, sample, ked.find_searchable_layers(model)[0]


@pytest.mark.parametrize("table_dtype", ["float32", "int8"])
def test_head_export_pads_the_rows_below_the_widest_into_the_head(table_dtype, tmp_path):
    """Sizes 8 / 7 / 1 (5 %, 2 %, the rest; D = 8): every row keeps its first column in the base
    (4 B per row), the rows at 8 and 7 are keyed (a uint8 step and half a byte of code each) and whole
    in the head (a zero for each row at 7, the base's column again): within 1.10x, no tail row; served
    as the layer computes, in a process without keras_embdim."""
    d, model, sample, layer = _small_prunable_mlp(data_seed=2)
    n = sum(d.vocab_sizes)
    sizes = np.random.default_rng(0).permutation(np.repeat([8, 7, 1], [n // 20, n // 50, n - n // 20 - n // 50]))
    layer.set_value_sizes(sizes)
    packed = ragged.pack_index(sizes, 8, field_sizes=d.vocab_sizes, layout="head")
    H = n // 20 + n // 50
    assert (packed.base_width, packed.head_from, packed.head_width, packed.head_rows) == (1, 7, 8, H)
    assert packed.tail_kept == 0
    assert np.diff(np.flatnonzero(sizes > 1), prepend=-1).max() < 256  # uint8 steps, no filler
    # base, head with its zero row, the zero slot, the keys' steps and codes (two per byte)
    nbytes = 4 * n + 32 * (H + 1) + 4 + H + (H + 1) // 2
    assert ragged.layout_bytes(sizes, 8)["head"] == nbytes <= 1.10 * 4 * sizes.sum()
    r = ked.export_compact(model, str(tmp_path / "e"), sample_inputs=sample, table_dtype=table_dtype, verbose=0)
    assert r.layouts["embedding"] == "head" and r.max_abs_diff <= 1e-5
    emb = sum(b for k, b in saved_variable_bytes(r.path).items() if k.startswith(TABLES_ATTRIBUTE + "/"))
    if table_dtype == "float32":
        assert emb == ragged.layout_bytes(sizes, 8)["head"] <= 1.10 * 4 * sizes.sum()
    else:  # one byte per stored value (the base, the head with its padding and zero row, the zero slot),
        stored = n + (H + 1) * 8 + 1  # and a float16 scale per row
        assert emb == ragged.layout_bytes(sizes, 8)["head"] - 3 * stored + 2 * n
    # the head rows' keys are stored once, in the variables: the graph's hash table is filled from them
    # at load, no constant of the graph holds them (or the places they map to)
    assert _largest_graph_constant(r.path) < packed.head_rows
    atol = (r.precision_max_abs_diff or 0) + 1e-5
    report = check_in_fresh_process(r.path, sample, {"ctr": model.predict(sample, batch_size=300, verbose=0)},
                                    atol=atol)
    assert report["tf2_max_abs_diff"] <= atol and report["tf1_max_abs_diff"] <= atol


@pytest.mark.parametrize("fold,table_dtype", [(True, "float32"), (False, "int8")])
def test_export_stores_the_fields_of_one_size_whole(fold, table_dtype, tmp_path):
    """A field whose values all keep 6 of 8 columns is stored whole (a `[V, 6]` table, one row
    gather), a field that keeps nothing takes no bytes, and the field of spread sizes is packed in
    the head layout; served as the layer computes, folded and padded, in a process without
    keras_embdim; `value_dense_fields=False` packs every field as before."""
    d, model, sample, layer = _small_prunable_mlp(data_seed=1)
    v0, v1, v2 = d.vocab_sizes
    assert (v0, v1, v2) == (10, 141, 2000)
    spread = np.random.default_rng(0).permutation(np.repeat([8, 7, 1], [v2 // 20, v2 // 50, v2 - v2 // 20 - v2 // 50]))
    sizes = [np.full(v0, 6), np.zeros(v1, int), spread]
    layer.set_value_sizes(np.concatenate(sizes))
    r = ked.export_compact(model, str(tmp_path / "e"), sample_inputs=sample, fold=fold, table_dtype=table_dtype,
                           verbose=0)
    assert r.layouts["embedding"] == "field+head" and r.dense_fields == {"embedding": d.field_names[:2]}
    assert r.max_abs_diff <= 1e-5 and bool(r.folds["embedding"]["folded_into"]) == fold
    kept = int(sum(s.sum() for s in sizes))
    if table_dtype == "float32":
        assert r.embedding_bytes == 4 * v0 * 6 + ragged.layout_bytes(spread, 8)["head"] <= 1.10 * 4 * kept
        assert r.embedding_padding_bytes == 0  # every row of the whole field keeps its 6 columns
    else:  # one byte per value and a float16 scale per row, in the whole field's table too
        assert r.embedding_bytes < kept + 2 * sum(d.vocab_sizes) + 1.10 * 4 * (spread > 1).sum()
    atol = (r.precision_max_abs_diff or 0) + 1e-5
    report = check_in_fresh_process(r.path, sample, {"ctr": model.predict(sample, batch_size=300, verbose=0)},
                                    atol=atol)
    assert report["tf2_max_abs_diff"] <= atol and report["tf1_max_abs_diff"] <= atol
    packed = ked.export_compact(model, str(tmp_path / "p"), sample_inputs=sample, fold=fold, table_dtype=table_dtype,
                                verbose=0, value_dense_fields=False)
    assert packed.dense_fields == {} and "field" not in packed.layouts["embedding"]
    if table_dtype == "float32":
        assert packed.embedding_bytes == ragged.layout_bytes(np.concatenate(sizes), 8)[packed.layouts["embedding"]]
