import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import keras_embdim as ked
from keras_embdim import keras
from keras_embdim.export import TABLES_ATTRIBUTE, saved_variable_bytes
from keras_embdim.export.compact import group_widths
from keras_embdim.serving import check_in_fresh_process


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained and pruned to budget 0.2 through fit, exported by the callback."""
    keras.utils.set_random_seed(0)
    d = ked.data.make_synthetic_ctr(num_rows=20_000, num_fields=6, max_vocab=2000, seed=5)
    model = ked.models.compile_ctr(ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=16, hidden=(32,)))
    path = str(tmp_path_factory.mktemp("exports") / "ctr")
    pruner = ked.SingleShotPruner(0.2, warmup_steps=10, scoring_steps=5, verbose=0)
    exporter = ked.DimensionExporter(path, verbose=0)
    x, y = d.train
    model.fit(d.inputs(x), y, batch_size=512, epochs=2, verbose=0, callbacks=[pruner, exporter])
    assert exporter.result.path == os.path.join(path, "1")  # the first version of a TF Serving base path
    return d, model, pruner, exporter, exporter.result.path


def test_served_in_fresh_process_equals_trained_on_1000_rows(trained):
    d, model, _, _, path = trained
    sample = d.inputs(d.test[0][:1000])
    expected = {"ctr": model.predict(sample, batch_size=1000, verbose=0)}
    report = check_in_fresh_process(path, sample, expected, atol=1e-5)
    assert report["keras_embdim_importable"] is False
    assert report["tf2_max_abs_diff"] <= 1e-5 and report["tf1_max_abs_diff"] <= 1e-5
    assert report["signature_inputs"] == sorted(d.field_names)
    assert report["signature_outputs"] == ["ctr"]


def test_embedding_bytes_equal_kept_params_and_no_full_table(trained):
    d, model, pruner, exporter, path = trained
    kept = pruner.result.params_after
    full = pruner.result.params_full
    var_bytes = saved_variable_bytes(path)
    emb = {k: b for k, b in var_bytes.items() if k.startswith(TABLES_ATTRIBUTE + "/")}
    # the kept parameters, plus the zero columns that pad small fields into a wider table (group_widths)
    dims = layer_kept_dims(model)
    stored = group_widths(dims, d.vocab_sizes)
    padding = int((stored - dims) @ np.asarray(d.vocab_sizes))
    assert exporter.result.embedding_padding_bytes == 4 * padding <= 0.01 * 4 * kept
    assert sum(emb.values()) == (kept + padding) * 4
    assert exporter.result.embedding_bytes == (kept + padding) * 4
    # budget within one field-dimension
    assert 0.2 * full - max(d.vocab_sizes) < kept <= 0.2 * full
    # no variable of the full table's shape, and no variable stored twice
    reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
    shapes = [tuple(s) for k, s in reader.get_variable_to_shape_map().items() if "VARIABLE_VALUE" in k]
    assert (sum(d.vocab_sizes), 16) not in shapes
    dense_params = sum(int(np.prod(w.shape)) for w in model.trainable_weights) - full
    # the first Dense is folded: its kernel keeps only the rows of the stored columns (zero rows for padding)
    assert exporter.result.folds == {"embedding": {"folded_into": ["mlp_0"], "padded": None,
                                                   "id_check": "on_invalid_id", "rank_folded": {}}}
    first = model.get_layer("mlp_0").kernel
    removed_rows = int(first.shape[0]) - int(stored.sum())
    assert exporter.result.variable_bytes == (kept + padding + dense_params - removed_rows * int(first.shape[1])) * 4
    assert exporter.result.bytes["embedding_tables"] + exporter.result.bytes["other_variables"] == \
        exporter.result.variable_bytes
    # the variables file on disk is the bytes plus a small header/index overhead
    assert exporter.result.variables_file_bytes <= exporter.result.variable_bytes * 1.02 + 4096


def layer_kept_dims(model):
    return ked.find_searchable_layers(model)[0].dimension_mask().kept_dims


def test_dimensions_json_report(trained):
    d, model, pruner, _, path = trained
    with open(os.path.join(path, "dimensions.json")) as fh:
        rep = json.load(fh)
    assert rep["params_after"] == pruner.result.params_after
    assert rep["params_before"] == pruner.result.params_full
    fields = rep["layers"]["embedding"]
    assert [f["field"] for f in fields] == d.field_names
    for f, vocab in zip(fields, d.vocab_sizes):
        assert f["vocab"] == vocab and f["params_after"] == f["kept_dims"] * vocab
        assert len(f["kept_columns"]) == f["kept_dims"]
    assert rep["export"]["searched"] is True


def test_saved_model_cli_shows_serving_signature(trained):
    _, _, _, _, path = trained
    cli = shutil.which("saved_model_cli") or os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    out = subprocess.run([cli, "show", "--dir", path, "--tag_set", "serve", "--signature_def", "serving_default"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "inputs['f00" in out.stdout and "outputs['ctr']" in out.stdout


def test_existing_export_dir_is_refused_and_untouched(trained, tmp_path):
    _, model, _, _, path = trained
    before = sorted(os.listdir(path))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ked.export_compact(model, path, version=None, verbose=0)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ked.export_compact(model, os.path.dirname(path), version=1, verbose=0)
    assert sorted(os.listdir(path)) == before


def test_exporter_callback_fails_fast_when_dir_exists(trained):
    d, model, _, _, path = trained
    before = [w.copy() for w in model.get_weights()]
    x, y = d.train
    with pytest.raises(FileExistsError, match="Nothing was trained"):
        model.fit(d.inputs(x[:64]), y[:64], epochs=1, verbose=0,
                  callbacks=[ked.DimensionExporter(os.path.dirname(path), version=1)])
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_failed_verification_leaves_previous_export_and_no_partial(trained, tmp_path, monkeypatch,
                                                                    move_output_bias_after_save):
    d, model, _, _, _ = trained
    target = str(tmp_path / "exp")
    ked.export_compact(model, target, version=None, verbose=0)
    stamp = os.path.getmtime(os.path.join(target, "saved_model.pb"))
    restore = move_output_bias_after_save(model)
    try:
        with pytest.raises(ked.ExportError, match="predicts differently"):
            ked.export_compact(model, target, version=None, overwrite=True, verbose=0)
        assert os.path.getmtime(os.path.join(target, "saved_model.pb")) == stamp
        assert sorted(os.listdir(tmp_path)) == ["exp"]  # no temporary folder left behind
        restore()
        monkeypatch.undo()
        ked.export_compact(model, target, version=None, overwrite=True, verbose=0)
        assert sorted(os.listdir(tmp_path)) == ["exp"]
        # versioned: a failed export leaves no version folder and no temporary folder either
        base = str(tmp_path / "base")
        ked.export_compact(model, base, verbose=0)
        move_output_bias_after_save(model)
        with pytest.raises(ked.ExportError, match="predicts differently"):
            ked.export_compact(model, base, verbose=0)
        assert sorted(os.listdir(base)) == ["1"]
    finally:
        restore()


def test_disk_full_mid_write_leaves_previous_export_and_no_partial(trained, tmp_path, monkeypatch):
    import errno

    d, model, _, _, _ = trained
    target = str(tmp_path / "exp")
    ked.export_compact(model, target, version=None, verbose=0)
    files = {f: open(os.path.join(target, f), "rb").read() for f in ("saved_model.pb", "dimensions.json")}
    weights = [w.copy() for w in model.get_weights()]
    real_save = tf.saved_model.save

    def save_then_fill_the_disk(obj, export_dir, *args, **kwargs):
        real_save(obj, export_dir, *args, **kwargs)  # some files are written...
        with open(os.path.join(export_dir, "variables", "variables.data-00000-of-00001"), "r+b") as fh:
            fh.truncate(10)  # ...then the disk is full half-way through the data
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tf.saved_model, "save", save_then_fill_the_disk)
    with pytest.raises(OSError, match="No space left"):
        ked.export_compact(model, target, version=None, overwrite=True, verbose=0)
    assert sorted(os.listdir(tmp_path)) == ["exp"]  # no partial folder
    for f, data in files.items():  # the previous export is byte for byte the same
        assert open(os.path.join(target, f), "rb").read() == data
    for a, b in zip(weights, model.get_weights()):  # and the model is untouched
        np.testing.assert_array_equal(a, b)


def test_unwritable_folder_is_refused_before_anything_is_written(trained, tmp_path, monkeypatch):
    _, model, _, _, _ = trained
    real_access = os.access
    # the tests may run as root, which may write anywhere: ask os.access the way a user would be answered
    monkeypatch.setattr(os, "access", lambda p, mode: False if mode == os.W_OK else real_access(p, mode))
    with pytest.raises(PermissionError, match="is not writable"):
        ked.export_compact(model, str(tmp_path / "sub" / "exp"), verbose=0)
    assert not (tmp_path / "sub" / "exp").exists()


def test_xla_compiled_per_field_lookup_serves_in_a_fresh_process(trained, tmp_path):
    d, model, _, _, _ = trained
    sample = d.inputs(d.test[0][:300])
    r = ked.export_compact(model, str(tmp_path / "xla"), sample_inputs=sample, verbose=0, jit_compile=True)
    assert r.max_abs_diff <= 1e-5 and r.embedding_bytes == 4 * r.kept_params + r.embedding_padding_bytes
    report = check_in_fresh_process(r.path, sample, {"ctr": model.predict(sample, verbose=0)})
    assert report["tf2_max_abs_diff"] <= 1e-5 and report["tf1_max_abs_diff"] <= 1e-5


def test_unsearched_model_exports_full_and_says_so(tmp_path, caplog):
    d = ked.data.make_synthetic_ctr(num_rows=2000, num_fields=3, max_vocab=50, seed=1)
    model = ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=4, hidden=(4,))
    with caplog.at_level("WARNING", logger="keras_embdim"):
        r = ked.export_compact(model, str(tmp_path / "e"), verbose=0)
    assert "not been searched" in caplog.text
    assert r.searched is False and r.embedding_bytes == sum(d.vocab_sizes) * 4 * 4


def test_deepfm_with_dropped_columns_exports_equal(tmp_path):
    d = ked.data.make_synthetic_ctr(num_rows=4000, num_fields=4, max_vocab=300, seed=2)
    model = ked.models.compile_ctr(ked.models.build_deepfm(d.vocab_sizes, d.field_names, embedding_dim=8, hidden=(8,)))
    x, y = d.train
    model.fit(d.inputs(x), y, batch_size=256, epochs=1, verbose=0)
    layer = ked.find_searchable_layers(model)[0]
    keep = np.zeros((4, 8), bool)
    keep[0, [1, 5]] = True
    keep[1, :] = True
    keep[3, 7] = True  # field 2 keeps nothing: a min_dim=0 outcome
    layer.set_dimension_mask(keep)
    sample = d.inputs(d.test[0][:500])
    r = ked.export_compact(model, str(tmp_path / "fm"), sample_inputs=sample, verbose=0)
    assert r.embedding_bytes == layer.dimension_mask().kept_params * 4 + r.embedding_padding_bytes
    expected = {"ctr": model.predict(sample, verbose=0)}
    check_in_fresh_process(r.path, sample, expected)


def test_subclassed_model_with_input_signature(tmp_path):
    class Ranker(keras.Model):
        def __init__(self):
            super().__init__()
            self.emb = ked.PrunableEmbedding([30, 40], 6)
            self.out = keras.layers.Dense(1)

        def call(self, ids):
            return self.out(tf.reshape(self.emb(ids), [-1, 12]))

    model = Ranker()
    ids = np.stack([np.arange(20) % 30, np.arange(20) % 40], 1).astype("int32")
    model(ids)
    keep = np.ones((2, 6), bool)
    keep[0, 2:] = False
    model.emb.set_dimension_mask(keep)
    with pytest.raises(ValueError, match="input_signature"):
        ked.export_compact(model, str(tmp_path / "x"), verbose=0)
    sig = tf.TensorSpec([None, 2], tf.int32, name="ids")
    r = ked.export_compact(model, str(tmp_path / "s"), input_signature=sig, sample_inputs={"ids": ids}, verbose=0)
    assert r.embedding_bytes == (30 * 2 + 40 * 6) * 4
    loaded = tf.saved_model.load(r.path).signatures["serving_default"]
    got = list(loaded(ids=ids).values())[0].numpy()  # numpy int32 into the int64 signature
    got32 = list(tf.saved_model.load(r.path).signatures["serving_int32"](ids=tf.constant(ids)).values())[0].numpy()
    np.testing.assert_array_equal(got, got32)
    np.testing.assert_allclose(got, model(ids).numpy(), atol=1e-6)


@pytest.mark.parametrize("fold", [True, False])
def test_small_fields_padded_into_a_wider_table_serve_exactly(tmp_path, fold):
    """Widths 1 (a 4-row field), 3 (a 6-row field) and 5 (a 900-row field): the two small fields
    join the width-5 table for 12 + 12 zero entries (0.5 % of the 4,510 kept), and the export,
    folded or padded, serves what the model computes, in a process without keras_embdim."""
    keras.utils.set_random_seed(0)
    vocab = [4, 6, 900]
    model = ked.models.build_mlp(vocab, ["a", "b", "c"], embedding_dim=8, hidden=(16,))
    layer = ked.find_searchable_layers(model)[0]
    keep = np.zeros((3, 8), bool)
    keep[0, [5]] = keep[1, [0, 2, 7]] = keep[2, :5] = True
    layer.set_dimension_mask(keep)
    rng = np.random.default_rng(0)
    sample = {n: rng.integers(0, v, 300).astype("int64") for n, v in zip(["a", "b", "c"], vocab)}
    r = ked.export_compact(model, str(tmp_path / "e"), sample_inputs=sample, verbose=0, fold=fold)
    kept = 4 * 1 + 6 * 3 + 900 * 5
    assert r.kept_params == kept and r.embedding_padding_bytes == 4 * (4 * 4 + 6 * 2)
    assert r.embedding_bytes == 4 * kept + r.embedding_padding_bytes
    assert json.load(open(os.path.join(r.path, "dimensions.json")))["export"]["embedding_padding_bytes"] == 112
    tables = {k: b for k, b in saved_variable_bytes(r.path).items() if k.startswith(TABLES_ATTRIBUTE + "/")}
    assert list(tables.values()) == [4 * 910 * 5]  # one [910, 5] table instead of three
    report = check_in_fresh_process(r.path, sample, {"ctr": model.predict(sample, verbose=0)})
    assert report["tf2_max_abs_diff"] <= 1e-5 and report["tf1_max_abs_diff"] <= 1e-5


def test_overwrite_replaces_only_an_earlier_export(trained, tmp_path):
    """overwrite=True must never delete a folder of other files (or a file) in the export's place."""
    _, model, _, _, _ = trained
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("print('mine')")
    with pytest.raises(FileExistsError, match=r"holds files that are not a SavedModel \(train.py\)"):
        ked.export_compact(model, str(project), version=None, overwrite=True, verbose=0)
    assert (project / "train.py").read_text() == "print('mine')"
    (tmp_path / "base" / "3").mkdir(parents=True)
    (tmp_path / "base" / "3" / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a SavedModel"):
        ked.export_compact(model, str(tmp_path / "base"), version=3, overwrite=True, verbose=0)
    assert (tmp_path / "base" / "3" / "notes.txt").read_text() == "x"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        ked.export_compact(model, str(tmp_path / "afile"), version=None, overwrite=True, verbose=0)
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        ked.export_compact(model, str(tmp_path / "afile"), verbose=0)  # versioned: afile/1
    assert (tmp_path / "afile").read_text() == "x"
    assert sorted(os.listdir(tmp_path)) == ["afile", "base", "project"]  # nothing left behind
    # an empty folder, and an earlier export, are replaced
    (tmp_path / "empty").mkdir()
    ked.export_compact(model, str(tmp_path / "empty"), version=None, overwrite=True, verbose=0)
    again = ked.export_compact(model, str(tmp_path / "empty"), version=None, overwrite=True, verbose=0)
    assert os.path.isfile(os.path.join(again.path, "saved_model.pb"))
