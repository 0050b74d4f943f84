"""What a TF Serving user needs from an export: versions, permissions, signatures, ids, bytes."""

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import tensorflow as tf

import keras_embdim as ked
from keras_embdim import rows as row_ops
from keras_embdim import keras
from keras_embdim.export import compact
from keras_embdim.serving import check_in_fresh_process


def test_versions_auto_explicit_and_plain(searched, tmp_path):
    d, model, sample = searched
    base = str(tmp_path / "models" / "ctr")
    first = ked.export_compact(model, base, sample_inputs=sample, verbose=0)
    second = ked.export_compact(model, base, sample_inputs=sample, verbose=0)
    assert (first.version, second.version) == (1, 2) and first.base_path == base
    assert sorted(os.listdir(base)) == ["1", "2"]  # no temporary folder left
    seven = ked.export_compact(model, base, version=7, sample_inputs=sample, verbose=0)
    assert seven.path == os.path.join(base, "7")
    with pytest.raises(FileExistsError, match="version='auto' for the next version"):
        ked.export_compact(model, base, version=7, verbose=0)
    again = ked.export_compact(model, base, version=7, overwrite=True, sample_inputs=sample, verbose=0)
    assert again.path == seven.path
    assert ked.export_compact(model, base, sample_inputs=sample, verbose=0).version == 8  # next after the highest
    # a plain SavedModel folder is not a base path
    plain = ked.export_compact(model, str(tmp_path / "plain"), version=None, sample_inputs=sample, verbose=0)
    assert plain.version is None and plain.base_path is None and plain.path == str(tmp_path / "plain")
    with pytest.raises(FileExistsError, match="is a SavedModel itself"):
        ked.export_compact(model, str(tmp_path / "plain"), verbose=0)
    for bad in (0, -1, "latest", True, 1.5):
        with pytest.raises(ValueError, match="`version` must be 'auto'"):
            ked.export_compact(model, base, version=bad, verbose=0)
        with pytest.raises(ValueError, match="`version` must be 'auto'"):
            ked.DimensionExporter(base, version=bad)


def test_a_version_taken_while_exporting_moves_to_the_next_one(searched, tmp_path, monkeypatch):
    """Another export takes version 1 while ours is written: ours goes to 2 (its report says so) and
    never replaces the other's; with an explicit version it fails, leaving no temporary folder."""
    from keras_embdim.export import writer

    d, model, sample = searched
    base = tmp_path / "ctr"
    move = writer.move_into_place
    taken = []

    def racing_move(tmp, target):
        if not taken:  # the other export lands first
            taken.append(target.path)
            os.makedirs(target.path)
            (base / os.path.basename(target.path) / "theirs").write_text("x")
        return move(tmp, target)

    monkeypatch.setattr(writer, "move_into_place", racing_move)
    r = ked.export_compact(model, str(base), sample_inputs=sample, verbose=0)
    assert taken == [str(base / "1")] and r.version == 2 and r.path == str(base / "2")
    assert sorted(os.listdir(base)) == ["1", "2"] and os.listdir(base / "1") == ["theirs"]
    report = json.loads((base / "2" / "dimensions.json").read_text())["export"]
    assert report["version"] == 2 and report["path"] == r.path
    want = model.predict(sample, verbose=0)
    served = tf.saved_model.load(r.path).signatures["serving_default"](
        **{k: tf.constant(np.asarray(v), tf.int64) for k, v in sample.items()})
    np.testing.assert_allclose(next(iter(served.values())).numpy().reshape(want.shape), want, atol=1e-5)
    taken.clear()
    with pytest.raises(FileExistsError, match="already exists"):
        ked.export_compact(model, str(base), version=5, sample_inputs=sample, verbose=0)
    assert sorted(os.listdir(base)) == ["1", "2", "5"] and os.listdir(base / "5") == ["theirs"]


def test_exporter_callback_writes_the_next_version_and_fails_fast_on_a_taken_one(searched, tmp_path):
    d, model, sample = searched
    base = str(tmp_path / "ctr")
    x, y = d.train
    model.compile(optimizer="adam", loss="binary_crossentropy")
    cb = ked.DimensionExporter(base, sample_inputs=sample, verbose=0)
    model.fit(d.inputs(x[:64]), y[:64], epochs=1, verbose=0, callbacks=[cb])
    assert cb.result.path == os.path.join(base, "1")
    weights = [w.copy() for w in model.get_weights()]
    with pytest.raises(FileExistsError, match="Nothing was trained"):
        model.fit(d.inputs(x[:64]), y[:64], epochs=1, verbose=0, callbacks=[ked.DimensionExporter(base, version=1)])
    for a, b in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(a, b)


BAD_OPTIONS = [
    ("overwrite", "no", "`overwrite` must be True or False"),  # truthy, but must not replace an export
    ("verify", 1, "`verify` must be True or False"),
    ("jit_compile", "yes", "`jit_compile` must be True or False"),
    ("atol", -1.0, "`atol` must be a finite number >= 0"),
    ("atol", float("nan"), "`atol` must be a finite number"),
    ("verbose", "x", "`verbose` must be an integer >= 0"),
    ("version", 0, "`version` must be 'auto'"),
    ("table_dtype", "fp16", "table_dtype"),
    ("on_invalid_id", "ERROR", "on_invalid_id"),
    ("example_signature", "yes", "`example_signature` must be True or False"),
]


@pytest.mark.parametrize("name,value,message", BAD_OPTIONS)
def test_a_bad_export_option_is_refused_before_anything_is_written(searched, tmp_path, name, value, message):
    d, model, sample = searched
    base = tmp_path / "ctr"
    first = ked.export_compact(model, str(base), sample_inputs=sample, verbose=0)
    before = sorted(os.listdir(base)), os.path.getmtime(first.path)
    options = {"version": 1, "verbose": 0, name: value}
    with pytest.raises(ValueError, match=message):
        ked.export_compact(model, str(base), sample_inputs=sample, **options)
    with pytest.raises(ValueError, match=message):  # the callback checks the same options when it is built
        ked.DimensionExporter(str(base), **options)
    assert (sorted(os.listdir(base)), os.path.getmtime(first.path)) == before


def test_bad_export_arguments_name_themselves(searched, tmp_path):
    d, model, sample = searched
    with pytest.raises(ValueError, match="`export_dir` must be a non-empty path"):
        ked.export_compact(model, None)
    with pytest.raises(ValueError, match="`export_dir` must be a non-empty path"):
        ked.DimensionExporter("")
    with pytest.raises(TypeError, match="`model` must be a Keras model or layer"):
        ked.export_compact("model.keras", str(tmp_path / "a"))
    uneven = {k: (v[:3] if i else v[:2]) for i, (k, v) in enumerate(sample.items())}
    with pytest.raises(ValueError, match=r"same number of rows .* received rows"):
        ked.export_compact(model, str(tmp_path / "b"), sample_inputs=uneven, verbose=0)
    with pytest.raises(ValueError, match="at least one"):
        ked.export_compact(model, str(tmp_path / "c"), sample_inputs={k: v[:0] for k, v in sample.items()}, verbose=0)
    words = {k: np.array(["a", "b"]) for k in sample}
    with pytest.raises(ValueError, match=r"must match the dtypes .* of dtype <U1, the export takes int"):
        ked.export_compact(model, str(tmp_path / "h"), sample_inputs=words, verbose=0)
    halves = {k: v[:3] + np.array([0.0, 0.5, 0.0]) for k, v in sample.items()}  # would be truncated to other ids
    with pytest.raises(ValueError, match=r"whole numbers for integer inputs; received '\w+' holds \d+\.5, the export "
                                         r"takes int32"):
        ked.export_compact(model, str(tmp_path / "h"), sample_inputs=halves, verbose=0)
    # whole numbers as floats (a pandas id column with a gap reads as float64) are ids
    ked.export_compact(model, str(tmp_path / "j"), sample_inputs={k: v[:3] * 1.0 for k, v in sample.items()}, verbose=0)
    with pytest.raises(ValueError, match="`input_signature` must be a tf.TensorSpec"):
        ked.export_compact(model, str(tmp_path / "i"), input_signature={k: 5 for k in sample}, verbose=0)
    two_d = {k: np.stack([v[:3], v[:3]], axis=1) for k, v in sample.items()}
    with pytest.raises(ValueError, match=r"must match the shapes .* of shape \(3, 2\), the export takes \(None,\)"):
        ked.export_compact(model, str(tmp_path / "g"), sample_inputs=two_d, verbose=0)
    with pytest.raises(ValueError, match=r"lacks inputs .* it holds \['zz'\]"):
        ked.export_compact(model, str(tmp_path / "d"), sample_inputs={"zz": np.zeros(3, np.int64)}, verbose=0)
    assert not any((tmp_path / n).exists() for n in "abcdghi")  # refused before the base folder was made
    # the callback refuses a sample of uneven rows when training begins, before any step
    x, y = d.train
    model.compile(optimizer="adam", loss="binary_crossentropy")
    weights = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match="same number of rows"):
        model.fit(d.inputs(x[:64]), y[:64], epochs=1, verbose=0,
                  callbacks=[ked.DimensionExporter(str(tmp_path / "e"), sample_inputs=uneven, verbose=0)])
    with pytest.raises(ValueError, match="lacks inputs"):  # a functional model's input names are known
        wrong = ked.DimensionExporter(str(tmp_path / "f"), sample_inputs={"zz": np.zeros(2)}, verbose=0)
        model.fit(d.inputs(x[:64]), y[:64], epochs=1, verbose=0, callbacks=[wrong])
    for a, b in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_dataset_verifies_the_export_on_its_first_batch(searched, tmp_path):
    d, model, sample = searched
    x, y = d.train
    ds = tf.data.Dataset.from_tensor_slices((d.inputs(x[:100]), y[:100])).batch(32)
    r = ked.export_compact(model, str(tmp_path / "ds"), sample_inputs=ds, verbose=0)
    assert r.max_abs_diff <= 1e-5
    # the same first batch as arrays gives the same verification
    first = {k: v[:32] for k, v in d.inputs(x).items()}
    same = ked.export_compact(model, str(tmp_path / "arrays"), sample_inputs=first, verbose=0)
    assert r.max_abs_diff == same.max_abs_diff
    with pytest.raises(ValueError, match="empty tf.data.Dataset"):
        ked.export_compact(model, str(tmp_path / "empty"), sample_inputs=ds.take(0), verbose=0)
    with pytest.raises(ValueError, match=r"single examples .* batch it"):
        ked.export_compact(model, str(tmp_path / "unbatched"), sample_inputs=ds.unbatch(), verbose=0)
    model.compile(optimizer="adam", loss="binary_crossentropy")  # the callback takes one too
    cb = ked.DimensionExporter(str(tmp_path / "cb"), sample_inputs=ds, verbose=0)
    model.fit(ds, epochs=1, verbose=0, callbacks=[cb])
    assert cb.result.max_abs_diff <= 1e-5


def test_exporter_callback_passes_its_options_on(searched, tmp_path, monkeypatch):
    from keras_embdim.callbacks import dimension_exporter

    d, model, sample = searched
    x, y = d.train
    seen = {}

    def export(*args, **kwargs):
        seen.update(kwargs)
        return ked.export_compact(*args, **kwargs)

    monkeypatch.setattr(dimension_exporter, "export_compact", export)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    cb = ked.DimensionExporter(str(tmp_path / "ctr"), sample_inputs=sample, verbose=0, atol=2e-5, version=np.int64(3),
                               on_invalid_id="zero")
    model.fit(d.inputs(x[:64]), y[:64], epochs=1, verbose=0, callbacks=[cb])
    assert seen["atol"] == 2e-5 and seen["version"] == 3 and type(seen["version"]) is int
    assert seen["on_invalid_id"] == "zero" and seen["sample_inputs"] is sample
    assert cb.result.path == str(tmp_path / "ctr" / "3") and cb.result.on_invalid_id == "zero"


def test_permissions_are_those_of_model_export(searched, tmp_path):
    d, model, sample = searched
    old = os.umask(0o022)
    try:
        r = ked.export_compact(model, str(tmp_path / "perm"), sample_inputs=sample, verbose=0)
    finally:
        os.umask(old)
    for root, dirs, files in os.walk(r.path):
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o755, root
        for f in files:
            assert stat.S_IMODE(os.stat(os.path.join(root, f)).st_mode) == 0o644, f


def _read_all_as(uid: int, folder: str) -> subprocess.CompletedProcess:
    """List every folder and read every file of `folder` as another user (what a server
    running as its own user does when it loads the model)."""
    script = 'find "$1" -type d -exec ls {} + > /dev/null && find "$1" -type f -exec cat {} + > /dev/null && id -u'

    def drop_privileges():
        os.setgid(uid)
        os.setuid(uid)

    return subprocess.run(["/bin/sh", "-c", script, "sh", folder], capture_output=True, text=True, timeout=120,
                          preexec_fn=drop_privileges, cwd="/")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="switching to another uid needs root")
def test_another_user_can_read_every_file_of_the_export(searched):
    """TF Serving often runs as its own user (the docker image's, or a service account)."""
    d, model, sample = searched
    top = tempfile.mkdtemp(dir="/tmp")
    os.chmod(top, 0o755)  # a folder every user may enter, as a model repository is
    old = os.umask(0o022)
    try:
        r = ked.export_compact(model, os.path.join(top, "ctr"), sample_inputs=sample, verbose=0)
    finally:
        os.umask(old)
    proc = _read_all_as(65534, os.path.join(top, "ctr"))
    assert proc.returncode == 0 and proc.stdout.strip() == "65534", proc.stderr
    # the check can fail: a file only its owner may read (what mkdtemp's 0700 did to the folder) is refused
    os.chmod(os.path.join(r.path, "saved_model.pb"), 0o600)
    assert _read_all_as(65534, os.path.join(top, "ctr")).returncode != 0


def test_int64_and_int32_ids_and_no_wrap_around(searched, tmp_path):
    d, model, sample = searched
    r = ked.export_compact(model, str(tmp_path / "ids"), sample_inputs=sample, verbose=0)
    assert r.signatures == ["serving_default", "serving_int32"]
    assert {n: v["dtype"] for n, v in r.inputs.items()} == {n: "int64" for n in d.field_names}
    loaded = tf.saved_model.load(r.path)
    want = model.predict(sample, verbose=0)
    for arrays in ({k: v.astype(np.int64) for k, v in sample.items()}, {k: v.astype(np.int32) for k, v in sample.items()}):
        np.testing.assert_allclose(loaded.signatures["serving_default"](**arrays)["ctr"].numpy(), want, atol=1e-6)
    int32 = {k: tf.constant(v, tf.int32) for k, v in sample.items()}
    np.testing.assert_allclose(loaded.signatures["serving_int32"](**int32)["ctr"].numpy(), want, atol=1e-6)
    # 2**32 + 1 would be id 1 after a plain int64 -> int32 cast: it must be refused
    bad = {k: np.ones(2, np.int64) for k in sample}
    bad[d.field_names[0]][1] = 2**32 + 1
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside its vocabulary"):
        loaded.signatures["serving_default"](**bad)


def test_invalid_ids_error_or_zero_chosen_at_export(searched, tmp_path):
    d, model, sample = searched
    names = d.field_names
    err = ked.export_compact(model, str(tmp_path / "err"), sample_inputs=sample, verbose=0)
    zero = ked.export_compact(model, str(tmp_path / "zero"), sample_inputs=sample, verbose=0, on_invalid_id="zero")
    assert (err.on_invalid_id, zero.on_invalid_id) == ("error", "zero")
    bad = {k: np.asarray(v[:3]).astype(np.int64) for k, v in sample.items()}
    vocab = d.vocab_sizes[2]
    bad[names[2]][1] = vocab + 5
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=rf'field \\"{names[2]}\\" received id {vocab + 5}, outside its vocabulary of {vocab} ids'):
        tf.saved_model.load(err.path).signatures["serving_default"](**bad)
    # "zero": that id embeds to zeros, the request answers, and equals the model with the id's row zeroed
    served = tf.saved_model.load(zero.path).signatures["serving_default"](**bad)["ctr"].numpy()
    layer = ked.find_searchable_layers(model)[0]
    table = np.asarray(layer.embedding_variable).copy()
    fixed = dict(bad)
    fixed[names[2]] = np.where(bad[names[2]] >= vocab, 0, bad[names[2]])
    row = int(layer.layout.offsets[2])  # id 0 of field 2: zeroed while the model predicts
    try:
        t = table.copy()
        t[row] = 0.0
        layer.embedding_variable.assign(t)
        want = model.predict(fixed, verbose=0)
    finally:
        layer.embedding_variable.assign(table)
    np.testing.assert_allclose(served[1], want[1], atol=1e-6)
    np.testing.assert_allclose(served[[0, 2]], model.predict(fixed, verbose=0)[[0, 2]], atol=1e-6)
    with pytest.raises(ValueError, match="`on_invalid_id` must be one of"):
        ked.DimensionExporter(str(tmp_path / "x"), on_invalid_id="clip")


def test_unchecked_builds_no_id_check_and_serves_valid_ids_the_same(searched, tmp_path):
    """`on_invalid_id="unchecked"`: the served graph has no check (no cond, no assertion), as
    Keras' own model; valid ids serve what the model predicts, in a fresh TensorFlow-only process."""
    d, model, sample = searched
    err = ked.export_compact(model, str(tmp_path / "err"), sample_inputs=sample, verbose=0)
    raw = ked.export_compact(model, str(tmp_path / "raw"), sample_inputs=sample, verbose=0, on_invalid_id="unchecked")
    assert raw.on_invalid_id == "unchecked" and raw.max_abs_diff <= 1e-5
    name = ked.find_searchable_layers(model)[0].name
    assert raw.folds[name]["id_check"] == "left out: on_invalid_id='unchecked'"
    assert err.folds[name]["id_check"] == "on_invalid_id"
    with open(os.path.join(raw.path, "dimensions.json")) as f:
        assert json.load(f)["export"]["folds"][name]["id_check"] == "left out: on_invalid_id='unchecked'"
    checks = {"If", "StatelessIf", "Assert"}
    assert checks & _serving_op_types(err.path)
    assert not checks & _serving_op_types(raw.path)
    # the padded output (fold=False) reads its ids through the layer's guard, not the folded path's stack
    padded = ked.export_compact(model, str(tmp_path / "padded"), sample_inputs=sample, verbose=0, fold=False,
                                on_invalid_id="unchecked")
    assert padded.max_abs_diff <= 1e-5 and padded.folds[name]["padded"]
    assert not checks & _serving_op_types(padded.path)
    report = check_in_fresh_process(raw.path, sample, {"ctr": model.predict(sample, verbose=0)}, atol=1e-5)
    assert report["keras_embdim_importable"] is False
    assert report["tf2_max_abs_diff"] <= 1e-5 and report["tf1_max_abs_diff"] <= 1e-5


BAD_REQUEST_TF1 = r"""
import sys
sys.modules["keras_embdim"] = None  # TensorFlow only, as TF Serving
import numpy as np, tensorflow as tf
export_dir, field, names = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
graph = tf.Graph()
with tf.compat.v1.Session(graph=graph) as sess:
    sd = tf.compat.v1.saved_model.loader.load(sess, ["serve"], export_dir).signature_def["serving_default"]
    request = {n: np.array([1, 2], np.int64) for n in names}
    request[field] = np.array([1, 10**6], np.int64)
    try:
        sess.run(graph.get_tensor_by_name(sd.outputs["ctr"].name),
                 {graph.get_tensor_by_name(sd.inputs[n].name): v for n, v in request.items()})
        print("ANSWERED")
    except tf.errors.InvalidArgumentError as e:
        print("REFUSED", e.message.splitlines()[0] if "received id" not in e.message else
              [line for line in e.message.splitlines() if "received id" in line][0])
"""


def test_a_bad_request_is_refused_by_the_tf1_session_loader_in_a_fresh_process(searched, tmp_path):
    """As TF Serving runs it: the id check's failing branch (a function of its own, not inlined) runs
    in a session graph too, and its message names the field, the id and the vocabulary."""
    d, model, sample = searched
    r = ked.export_compact(model, str(tmp_path / "err"), sample_inputs=sample, verbose=0)
    field = d.field_names[2]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", BAD_REQUEST_TF1, r.path, field, ",".join(d.field_names)],
                          capture_output=True, text=True, timeout=300, env=env)
    out = proc.stdout.strip().splitlines()
    assert out and out[-1].startswith("REFUSED"), (proc.stdout, proc.stderr[-2000:])
    assert f'field \\"{field}\\" received id 1000000, outside its vocabulary of {d.vocab_sizes[2]} ids' in out[-1]


def test_string_inputs_with_a_lookup_inside_serve_in_a_fresh_process(tmp_path):
    keras.utils.set_random_seed(0)
    vocab = [f"city_{i}" for i in range(40)]
    inp = keras.Input(shape=(), dtype="string", name="city")
    lookup = keras.layers.StringLookup(vocabulary=vocab, name="lookup")
    emb = ked.PrunableEmbedding(len(vocab) + 1, 8, name="emb")
    model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid", name="p")(emb(lookup(inp))))
    emb.set_dimension_mask(np.array([[1, 0, 1, 1, 0, 0, 1, 0]], bool))
    cities = np.array(["city_3", "city_28", "nowhere", "city_0"])
    r = ked.export_compact(model, str(tmp_path / "s"), sample_inputs={"city": cities}, verbose=0)
    assert r.folds["emb"]["folded_into"] == ["p"] and r.inputs["city"]["dtype"] == "string"
    assert r.signatures == ["serving_default"]  # no integer input: no int32 variant
    # the lookup's 41 ids (OOV included) fit the layer's 41 rows: the id check could never fail, so it is not built
    assert r.folds["emb"]["id_check"].startswith("left out: its ids come from lookup")
    assert not {"If", "StatelessIf", "Assert"} & _serving_op_types(r.path)
    report = check_in_fresh_process(r.path, {"city": cities}, {"p": model.predict(tf.constant(cities), verbose=0)})
    assert report["tf1_max_abs_diff"] <= 1e-6 and report["tf2_max_abs_diff"] <= 1e-6


def _examples(rows: dict, kinds: dict) -> list:
    """Serialized tf.train.Examples built field by field with the protos' own setters (not the
    exporter's `to_examples`): `kinds[name]` is "int64", "float" or "bytes"."""
    out = []
    for i in range(len(next(iter(rows.values())))):
        ex = tf.train.Example()
        for name, kind in kinds.items():
            values = np.asarray(rows[name][i]).reshape(-1).tolist()
            getattr(ex.features.feature[name], f"{kind}_list").value.extend(
                [v.encode() for v in values] if kind == "bytes" else values)
        out.append(ex.SerializeToString())
    return out


def test_the_example_signature_serves_tf_examples_as_serving_default(searched, tmp_path):
    d, model, sample = searched
    r = ked.export_compact(model, str(tmp_path / "ex"), sample_inputs=sample, verbose=0, example_signature=True)
    assert r.signatures == ["serving_default", "serving_int32", "serving_tf_example", "regression"]
    assert r.warmup_requests == 6  # none for `regression`: it runs serving_tf_example's tensors (warmed)
    loaded = tf.saved_model.load(r.path)
    fn = loaded.signatures["serving_tf_example"]
    assert list(fn.structured_input_signature[1]) == ["examples"]
    rows = {k: v[:50] for k, v in sample.items()}
    got = fn(examples=tf.constant(_examples(rows, {n: "int64" for n in d.field_names})))["ctr"].numpy()
    np.testing.assert_allclose(got, model.predict(rows, verbose=0), atol=1e-5)
    np.testing.assert_array_equal(got, loaded.signatures["serving_default"](**{
        k: tf.constant(v.astype(np.int64)) for k, v in rows.items()})["ctr"].numpy())
    # a missing feature fails the request, naming it
    partial = _examples({k: v[:1] for k, v in rows.items()}, {n: "int64" for n in d.field_names[1:]})
    with pytest.raises(tf.errors.InvalidArgumentError, match=d.field_names[0]):
        fn(examples=tf.constant(partial))
    # its warmup requests are examples of the sample's rows, and TF Serving's replay runs them
    from keras_embdim.export import warmup

    (name, one), (_, sixteen) = [rec for rec in warmup.read(r.path) if rec[0] == "serving_tf_example"]
    first_row = _examples({k: v[:1] for k, v in sample.items()}, {n: "int64" for n in d.field_names})
    parse = tf.train.Example.FromString  # a map's serialized order is not fixed: compare the messages
    assert [parse(x) for x in one["examples"]] == [parse(x) for x in first_row]
    assert len(sixteen["examples"]) == 16
    report = check_in_fresh_process(r.path, sample, {"ctr": model.predict(sample, verbose=0)})
    assert report["warmup_records"] in (6, None)  # None: tensorflow-serving-api absent (test_warmup requires it)
    assert report["api_signatures"] == ["regression"] and report["api_max_abs_diff"] <= 1e-5


def test_the_example_signature_with_string_and_float_inputs(tmp_path):
    keras.utils.set_random_seed(0)
    vocab = [f"city_{i}" for i in range(30)]
    city = keras.Input(shape=(), dtype="string", name="city")
    dense = keras.Input(shape=(2,), dtype="float32", name="dense")
    emb = ked.PrunableEmbedding(len(vocab) + 1, 8, name="emb")
    x = keras.layers.Concatenate()([emb(keras.layers.StringLookup(vocabulary=vocab, name="lookup")(city)), dense])
    model = keras.Model([city, dense], keras.layers.Dense(1, activation="sigmoid", name="p")(x))
    emb.set_dimension_mask(np.array([[1, 0, 1, 1, 0, 0, 1, 0]], bool))
    sample = {"city": np.array(["city_3", "city_28", "nowhere"]),
              "dense": np.array([[0.5, -1.0], [2.0, 0.25], [0.0, 3.5]], np.float32)}
    r = ked.export_compact(model, str(tmp_path / "s"), sample_inputs=sample, verbose=0, example_signature=True)
    assert r.signatures == ["serving_default", "serving_tf_example", "regression"]
    fn = tf.saved_model.load(r.path).signatures["serving_tf_example"]
    examples = _examples(sample, {"city": "bytes", "dense": "float"})
    got = fn(examples=tf.constant(examples))["p"].numpy()
    expected = model.predict([tf.constant(sample["city"]), sample["dense"]], verbose=0)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(_tf_serving_api(r.path, "regression", examples, "regress"), expected[:, 0], atol=1e-6)


def _tf_serving_api(path, name: str, examples: list, method: str) -> np.ndarray:
    """Signature `name` run as TF Serving's Regress / Classify handler runs it (regressor.cc,
    classifier.cc), written here apart from the exporter's: the TF1 session loader, TF's own
    validity check of the SignatureDef and TF Serving's of its method name, the serialized examples
    fed to `inputs`; returns the regressions (`[batch]`) or the scores (`[batch, classes]`)."""
    method_name = {"regress": tf.saved_model.REGRESS_METHOD_NAME,
                   "classify": tf.saved_model.CLASSIFY_METHOD_NAME}[method]
    key = {"regress": tf.saved_model.REGRESS_OUTPUTS, "classify": tf.saved_model.CLASSIFY_OUTPUT_SCORES}[method]
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as sess:
        sd = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(path)).signature_def[name]
        assert sd.method_name == method_name and tf.compat.v1.saved_model.is_valid_signature(sd)
        assert list(sd.inputs) == [tf.saved_model.REGRESS_INPUTS] and list(sd.outputs) == [key]
        feed = {sd.inputs[tf.saved_model.REGRESS_INPUTS].name: np.array(examples, object)}
        out = sess.run(sd.outputs[key].name, feed)
    assert out.dtype == np.float32 and out.shape[0] == len(examples)
    if method == "regress":
        assert out.ndim == 1 or out.shape[1:] == (1,)  # TF Serving: [batch] or [batch, 1]
        return out.reshape(-1)
    assert out.ndim == 2
    return out


def test_the_example_signature_brings_tf_servings_regress_api(searched, tmp_path):
    """`tf.saved_model.save` writes every signature with the Predict method; TF Serving's Regress API
    accepts only `tensorflow/serving/regress`. The export's `regression` signature is one, on the
    example signature's tensors, and TF2 loading is unchanged."""
    from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

    d, model, sample = searched
    r = ked.export_compact(model, str(tmp_path / "reg"), sample_inputs=sample, verbose=0, example_signature=True)
    assert r.serving_apis == [{"name": "regression", "method": "regress", "output": "ctr"}]
    rows = {k: v[:40] for k, v in sample.items()}
    examples = _examples(rows, {n: "int64" for n in d.field_names})
    np.testing.assert_allclose(_tf_serving_api(r.path, "regression", examples, "regress"),
                               model.predict(rows, verbose=0)[:, 0], atol=1e-5)
    # the same tensors as serving_tf_example: nothing traced twice, and TF2 lists the signatures it did
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as sess:
        defs = tf.compat.v1.saved_model.loader.load(sess, ["serve"], r.path).signature_def
    assert defs["regression"].inputs["inputs"].name == defs["serving_tf_example"].inputs["examples"].name
    assert defs["regression"].outputs["outputs"].name == defs["serving_tf_example"].outputs["ctr"].name
    assert sorted(tf.saved_model.load(r.path).signatures) == ["serving_default", "serving_int32", "serving_tf_example"]
    # the fingerprint is the changed saved_model.pb's, not the one `tf.saved_model.save` wrote
    from tensorflow.core.protobuf import fingerprint_pb2

    with open(os.path.join(r.path, "fingerprint.pb"), "rb") as fh:
        written = fingerprint_pb2.FingerprintDef.FromString(fh.read())
    now = fingerprint_pb2.FingerprintDef.FromString(fingerprinting.CreateFingerprintDef(r.path))
    written.ClearField("uuid"), now.ClearField("uuid")  # a random id each time
    assert written == now
    cli = shutil.which("saved_model_cli") or os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    out = subprocess.run([cli, "show", "--dir", r.path, "--tag_set", "serve", "--signature_def", "regression"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Method name is: tensorflow/serving/regress" in out.stdout, out.stderr
    with open(os.path.join(r.path, "dimensions.json")) as fh:
        assert json.load(fh)["export"]["serving_apis"] == r.serving_apis
    # without example_signature there is no example graph, so no such signature
    plain = ked.export_compact(model, str(tmp_path / "plain"), sample_inputs=sample, verbose=0)
    assert plain.serving_apis == [] and "regression" not in plain.signatures


def test_a_regress_request_built_as_the_guide_builds_it(searched, tmp_path):
    """The gRPC `RegressionRequest` of docs/guides/deployment.md, built with TF Serving's own protos,
    its examples serialized as the server does before it runs the signature
    (`InputToSerializedExampleTensor`), answers with the model's predictions."""
    regression_pb2 = pytest.importorskip("tensorflow_serving.apis.regression_pb2")
    d, model, sample = searched
    r = ked.export_compact(model, str(tmp_path / "grpc"), sample_inputs=sample, verbose=0, example_signature=True)
    rows = [{n: int(sample[n][i]) for n in d.field_names} for i in range(8)]
    req = regression_pb2.RegressionRequest()
    req.model_spec.name = "ctr"
    req.model_spec.signature_name = "regression"
    for row in rows:
        example = req.input.example_list.examples.add()
        for name, value in row.items():
            example.features.feature[name].int64_list.value.append(value)
    served = [ex.SerializeToString() for ex in req.input.example_list.examples]
    want = model.predict({n: sample[n][:8] for n in d.field_names}, verbose=0)[:, 0]
    np.testing.assert_allclose(_tf_serving_api(r.path, req.model_spec.signature_name, served, "regress"), want,
                               atol=1e-5)


def _three_heads_model():
    """Heads of shape [batch] and [batch, 1] (Regress), [batch, 3] (Classify) and a float64 one
    (neither: TF Serving's handlers take float32 only)."""
    keras.utils.set_random_seed(0)
    ids = keras.Input(shape=(2,), dtype="int32", name="ids")
    x = keras.layers.Flatten()(ked.PrunableEmbedding([20, 30], 4, name="emb")(ids))
    heads = {"click": keras.layers.Reshape(())(keras.layers.Dense(1, activation="sigmoid", name="click_dense")(x)),
             "stay": keras.layers.Dense(1, name="stay")(x),
             "topic": keras.layers.Dense(3, activation="softmax", name="topic")(x),
             "wide": keras.layers.Dense(2, dtype="float64", name="wide")(x)}
    return keras.Model(ids, heads)


def test_every_float32_head_gets_a_regress_or_classify_signature(tmp_path):
    model = _three_heads_model()
    ked.find_searchable_layers(model)[0].set_dimension_mask(np.array([[1, 1, 0, 1], [0, 1, 0, 0]], bool))
    sample = {"ids": np.array([[1, 2], [19, 29], [0, 7], [5, 0]], np.int64)}
    r = ked.export_compact(model, str(tmp_path / "heads"), sample_inputs=sample, verbose=0, example_signature=True)
    assert [(a["name"], a["method"], a["output"]) for a in r.serving_apis] == [
        ("regression_click", "regress", "click"), ("regression_stay", "regress", "stay"),
        ("classification_topic", "classify", "topic")]
    want = {k: np.asarray(v) for k, v in model(tf.constant(sample["ids"], tf.int32), training=False).items()}
    examples = _examples(sample, {"ids": "int64"})
    np.testing.assert_allclose(_tf_serving_api(r.path, "regression_click", examples, "regress"), want["click"],
                               atol=1e-6)
    np.testing.assert_allclose(_tf_serving_api(r.path, "regression_stay", examples, "regress"), want["stay"][:, 0],
                               atol=1e-6)
    scores = _tf_serving_api(r.path, "classification_topic", examples, "classify")
    np.testing.assert_allclose(scores, want["topic"], atol=1e-6)
    # TF Serving's MultiInference API asks for several in one request: their input must be one tensor
    # (multi_inference.cc), and one run fetches every output
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as sess:
        defs = tf.compat.v1.saved_model.loader.load(sess, ["serve"], r.path).signature_def
        names = [a["name"] for a in r.serving_apis]
        assert len({defs[n].inputs["inputs"].name for n in names}) == 1
        fetch = {n: next(iter(defs[n].outputs.values())).name for n in names}
        together = sess.run(fetch, {defs[names[0]].inputs["inputs"].name: np.array(examples, object)})
    np.testing.assert_allclose(together["regression_click"], want["click"], atol=1e-6)
    np.testing.assert_allclose(together["classification_topic"], want["topic"], atol=1e-6)
    report = check_in_fresh_process(r.path, sample, {k: v for k, v in want.items()})
    assert report["api_signatures"] == ["regression_click", "regression_stay", "classification_topic"]
    assert report["api_max_abs_diff"] <= 1e-6


def test_tf_servings_checks_of_api_outputs():
    """`serving_apis.check_output` refuses what TF Serving's handlers refuse, with their reasons."""
    from keras_embdim.export import serving_apis

    reg = serving_apis.ApiSignature("regression", "regress", "y")
    np.testing.assert_array_equal(serving_apis.check_output(reg, np.ones((3, 1), np.float32), 3), np.ones(3))
    with pytest.raises(ValueError, match=r"shape \[3\] or \[3, 1\], got \[3, 2\]"):
        serving_apis.check_output(reg, np.ones((3, 2), np.float32), 3)
    with pytest.raises(ValueError, match="float32 output, got float64"):
        serving_apis.check_output(reg, np.ones(3), 3)
    cls = serving_apis.ApiSignature("classification", "classify", "y")
    with pytest.raises(ValueError, match=r"scores of shape \[2, classes\], got \[2\]"):
        serving_apis.check_output(cls, np.ones(2, np.float32), 2)
    # neither integers nor an unknown number of classes
    assert serving_apis.plan({"ids": tf.TensorSpec([None, 1], tf.int64),
                              "p": tf.TensorSpec([None, None], tf.float32)}) == []


def test_the_example_signature_needs_inputs_of_a_fixed_shape(tmp_path):
    ids = keras.Input(shape=(None,), dtype="int32", name="history")
    emb = ked.PrunableEmbedding(50, 4, name="emb")
    model = keras.Model(ids, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(emb(ids))))
    with pytest.raises(ValueError, match="input 'history' is int64 of shape \\[None, None\\]"):
        ked.export_compact(model, str(tmp_path / "h"), verbose=0, example_signature=True)
    assert not os.path.exists(tmp_path / "h" / "1")


def _serving_op_types(path) -> set:
    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    graph = fn.graph.as_graph_def()
    return {n.op for f in graph.library.function for n in f.node_def} | {n.op for n in graph.node}


@pytest.mark.parametrize("wide_lookup", [False, True])
def test_per_field_lookups_inside_leave_out_the_id_check_only_when_it_cannot_fail(tmp_path, wide_lookup):
    """Per-field `StringLookup`s into `StackFields`: when each lookup's ids fit its field's
    vocabulary the served graph has no id check and serves as trained; when one lookup can
    give an id past its field (a vocabulary wider than the field), the check stays and such a
    request fails naming the field."""
    keras.utils.set_random_seed(0)
    cities, shops = [f"city_{i}" for i in range(12)], [f"shop_{i}" for i in range(7)]
    inputs = {n: keras.Input(shape=(), dtype="string", name=n) for n in ("city", "shop")}
    city_ids = keras.layers.StringLookup(vocabulary=cities, name="city_lookup")(inputs["city"])
    shop_ids = keras.layers.StringLookup(vocabulary=shops, name="shop_lookup")(inputs["shop"])
    shop_rows = len(shops) + 1 - (3 if wide_lookup else 0)  # the layer's rows for "shop" (the lookup gives 8 ids)
    emb = ked.PrunableEmbedding([len(cities) + 1, shop_rows], 4, name="emb", field_names=["city", "shop"])
    x = keras.layers.Flatten()(emb(ked.layers.StackFields()([city_ids, shop_ids])))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="p")(x))
    emb.set_dimension_mask(np.array([[1, 0, 1, 1], [0, 1, 0, 0]], bool))
    req = {"city": np.array(["city_3", "nowhere", "city_11"]), "shop": np.array(["shop_0", "shop_2", "shop_3"])}
    r = ked.export_compact(model, str(tmp_path / "s"), sample_inputs=req, verbose=0)
    serve = tf.saved_model.load(r.path).signatures["serving_default"]
    np.testing.assert_allclose(serve(**{k: tf.constant(v) for k, v in req.items()})["p"].numpy(),
                               model.predict({k: tf.constant(v) for k, v in req.items()}, verbose=0), atol=1e-6)
    if not wide_lookup:
        assert r.folds["emb"]["id_check"].startswith("left out: its ids come from city_lookup, shop_lookup")
        assert not {"If", "StatelessIf", "Assert"} & _serving_op_types(r.path)
        return
    assert r.folds["emb"]["id_check"] == "on_invalid_id"
    bad = r'field \\?"shop\\?" received id 6, outside its vocabulary of 5'  # (quotes escaped in a graph's error)
    with pytest.raises(tf.errors.InvalidArgumentError, match=bad):
        serve(city=tf.constant(["city_1"]), shop=tf.constant(["shop_5"]))  # id 6: past the field's 5 rows


def _ids_then_two_heads_model():
    """One `[batch, 3]` id input, a list of two outputs: a named head and an unnamed one."""
    ids = keras.Input((3,), dtype="int32", name="ids")
    emb = ked.PrunableEmbedding(30, 8, name="emb")
    flat = keras.layers.Flatten()(emb(ids))
    click = keras.layers.Dense(1, activation="sigmoid", name="click")(flat)
    model = keras.Model(ids, [click, keras.layers.Dense(2)(flat)])
    emb.build()
    emb.set_dimension_mask(np.random.default_rng(1).random((1, 8)) < 0.5)
    return model, np.random.default_rng(2).integers(0, 30, (20, 3)).astype("int32")


def _two_inputs_model(as_dict: bool):
    """Two id inputs (int32, int64; "zeta" before "alpha": not in sorted order), as a list or a
    dict; a dict of two outputs."""
    a, b = keras.Input((), dtype="int32", name="zeta"), keras.Input((), dtype="int64", name="alpha")
    ea, eb = ked.PrunableEmbedding(30, 8, name="emb_zeta"), ked.PrunableEmbedding(40, 8, name="emb_alpha")
    h = keras.layers.Dense(4, activation="relu", name="hidden")(keras.layers.Concatenate()([ea(a), eb(b)]))
    model = keras.Model({"zeta": a, "alpha": b} if as_dict else [a, b],
                        {"p": keras.layers.Dense(1, activation="sigmoid", name="p_head")(h),
                         "q": keras.layers.Dense(1, name="q_head")(h)})
    rng = np.random.default_rng(3)
    for layer in (ea, eb):
        layer.build()
        layer.set_dimension_mask(rng.random((1, 8)) < 0.5)
    x = [rng.integers(0, 30, 20).astype("int32"), rng.integers(0, 40, 20).astype("int64")]
    return model, ({"zeta": x[0], "alpha": x[1]} if as_dict else x)


@pytest.mark.parametrize("kind", ["dict_in", "tensor_in_list_out", "list_in_dict_out", "unsorted_dict_in"])
def test_the_serve_endpoint_takes_and_returns_what_model_export_does(searched, tmp_path, kind):
    """`tf.saved_model.load(path).serve(x)` (and `TFSMLayer(path, call_endpoint="serve")`) as after
    Keras' own `model.export()` of the Keras in use: the same input structure (Keras 3: the model's;
    tf_keras: a functional model's inputs as a flat list, a dict's keys sorted), names and dtypes in,
    the model's output structure out, equal to the model's predictions; also in a fresh
    TensorFlow-only process."""
    if kind == "dict_in":
        d, model, x = searched
    elif kind == "tensor_in_list_out":
        model, x = _ids_then_two_heads_model()
    else:
        model, x = _two_inputs_model(as_dict=kind == "unsorted_dict_in")
    r = ked.export_compact(model, str(tmp_path / "ours"), version=None, sample_inputs=x, verbose=0)
    theirs = str(tmp_path / "keras")
    ked._compat.keras_export(model, theirs)
    ours, keras_loaded = tf.saved_model.load(r.path), tf.saved_model.load(theirs)
    named = dict(zip(r.inputs, x if isinstance(x, list) else [x])) if not isinstance(x, dict) else x
    (ours_in,), _ = ours.serve.concrete_functions[0].structured_input_signature
    (keras_in,), _ = keras_loaded.serve.concrete_functions[0].structured_input_signature
    tf.nest.assert_same_structure(ours_in, keras_in)
    assert [(s.name, s.dtype, s.shape.as_list()) for s in tf.nest.flatten(ours_in)] == [
        (s.name, s.dtype, s.shape.as_list()) for s in tf.nest.flatten(keras_in)]
    request = tf.nest.map_structure(lambda s: named[s.name], keras_in)  # the arrays as Keras' endpoint takes them
    got, want = ours.serve(request), keras_loaded.serve(request)
    tf.nest.assert_same_structure(got, want)
    predicted = model.predict(x, verbose=0)
    for g, p in zip(tf.nest.flatten(got), tf.nest.flatten(predicted)):
        np.testing.assert_allclose(g.numpy(), p, atol=1e-5)
    if ked.KERAS_3:  # Keras 3's way to reload an export into a model
        layer = keras.layers.TFSMLayer(r.path, call_endpoint="serve")
        for g, p in zip(tf.nest.flatten(layer(request)), tf.nest.flatten(predicted)):
            np.testing.assert_allclose(np.asarray(g), p, atol=1e-5)
    expected = dict(zip(r.outputs, predicted if isinstance(predicted, list) else [predicted]))
    if isinstance(predicted, dict):
        expected = predicted
    report = check_in_fresh_process(r.path, named, expected, atol=1e-5)
    assert report["serve_max_abs_diff"] <= 1e-5


def test_the_serve_endpoint_keeps_names_the_signatures_clean(tmp_path):
    """An input and a dict output whose names a signature cannot hold ("user id", "click rate"): the
    signatures clean them ("user_id", "click_rate"), `serve` takes and returns them as the model does,
    and the fresh-process check pairs its outputs with the signature's (`ExportResult.serve_outputs`)."""
    a = keras.Input((), dtype="int32", name="user id")
    emb = ked.PrunableEmbedding(30, 8, name="emb")
    h = keras.layers.Dense(4, activation="relu", name="hidden")(emb(a))
    model = keras.Model({"user id": a}, {"click rate": keras.layers.Dense(1, activation="sigmoid", name="head")(h),
                                         "b": keras.layers.Dense(1, name="b_head")(h)})
    emb.build()
    emb.set_dimension_mask(np.random.default_rng(1).random((1, 8)) < 0.5)
    x = {"user id": np.random.default_rng(2).integers(0, 30, 20).astype("int32")}
    r = ked.export_compact(model, str(tmp_path / "e"), sample_inputs=x, verbose=0)
    assert list(r.inputs) == ["user_id"] and sorted(r.outputs) == ["b", "click_rate"]
    assert r.serve_outputs == ["b", "click_rate"]  # tf.nest.flatten's order of the raw keys
    predicted = model.predict(x, verbose=0)
    loaded = tf.saved_model.load(r.path)  # kept: its variables live as long as it does
    got = loaded.serve(x if ked.KERAS_3 else x["user id"])  # tf_keras' form: a functional model's one input alone
    assert sorted(got) == ["b", "click rate"]
    for key in got:
        np.testing.assert_allclose(got[key].numpy(), predicted[key], atol=1e-5)
    report = check_in_fresh_process(r.path, {"user_id": x["user id"]},
                                    {"click_rate": predicted["click rate"], "b": predicted["b"]}, atol=1e-5)
    assert report["serve_max_abs_diff"] <= 1e-5


def test_bytes_by_part_add_up(searched, tmp_path):
    d, model, sample = searched
    r = ked.export_compact(model, str(tmp_path / "b"), sample_inputs=sample, verbose=0)
    b = r.bytes
    assert b["embedding_tables"] == r.embedding_bytes == 4 * r.kept_params + r.embedding_padding_bytes
    assert b["embedding_tables"] + b["other_variables"] == r.variable_bytes
    assert b["graph"] == sum(os.path.getsize(os.path.join(r.path, f)) for f in os.listdir(r.path) if f.endswith(".pb"))
    on_disk = sum(os.path.getsize(os.path.join(root, f)) for root, _, fs in os.walk(r.path) for f in fs)
    assert b["total"] == on_disk - os.path.getsize(os.path.join(r.path, "dimensions.json"))
    assert b["variables_files"] >= r.variable_bytes and b["assets"] == 0
    warmup_file = os.path.join(r.path, "assets.extra", "tf_serving_warmup_requests")
    assert b["warmup_requests"] == os.path.getsize(warmup_file) > 0
    with open(os.path.join(r.path, "dimensions.json")) as fh:
        assert json.load(fh)["export"]["bytes"] == b


@pytest.mark.parametrize("per_value", [False, True, "split"])
def test_compaction_reads_the_table_a_chunk_at_a_time(searched, monkeypatch, per_value):
    """No whole-table copy: every read of the table is at most one chunk of rows (per-value:
    every field packed, or the second stored whole, `dense_field_plan`)."""
    layer = ked.PrunableEmbedding([300, 50], 8, name="big")
    layer.build()
    rng = np.random.default_rng(0)
    layer.embedding_variable.assign(rng.standard_normal((350, 8)).astype(np.float32))
    if per_value == "split":
        layer.set_value_sizes(np.r_[rng.integers(0, 9, 300), np.full(50, 5)])
    elif per_value:
        layer.set_value_sizes(rng.integers(0, 9, 350))
    else:
        layer.set_dimension_mask(rng.random((2, 8)) < 0.5)
    whole = compact.compact_layer(layer).lookup
    reads, real = [], row_ops.read_rows
    monkeypatch.setattr(row_ops, "CHUNK_ROWS", 64)
    monkeypatch.setattr(compact.row_ops, "read_rows", lambda v, a, b, c=None: reads.append(b - a) or real(v, a, b, c))
    chunked = compact.compact_layer(layer).lookup
    assert reads and max(reads) <= 64
    assert chunked.dense_fields == (["field_1"] if per_value == "split" else [])
    ids = np.stack([rng.integers(0, 300, 40), rng.integers(0, 50, 40)], -1)
    np.testing.assert_array_equal(chunked.padded(tf.constant(ids)).numpy(), whole.padded(tf.constant(ids)).numpy())
