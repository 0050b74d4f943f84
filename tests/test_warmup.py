"""TF Serving warmup requests (`assets.extra/tf_serving_warmup_requests`): written by every export,
checked against TF Serving's own protos, replayed as TF Serving replays them when it loads a model."""

import importlib.util
import os

import numpy as np
import pytest
import tensorflow as tf

import keras_embdim as ked
from keras_embdim import keras
from keras_embdim.export import ExportError, warmup
from keras_embdim.serving import check_in_fresh_process

if importlib.util.find_spec("tensorflow_serving") is None:
    if os.environ.get("CI"):
        raise ImportError("CI must install tensorflow-serving-api for the warmup tests (.ci/run does).")
    pytest.skip("tensorflow-serving-api is not installed (pip install --no-deps tensorflow-serving-api)",
                allow_module_level=True)

from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2  # noqa: E402


@pytest.fixture(scope="module")
def few(searched):
    """The conftest model with 5 sample rows: a request of 16 repeats them."""
    d, model, sample = searched
    return d, model, {k: v[:5] for k, v in sample.items()}


INPUTS = {
    "user": np.array([[3], [70000000000]], np.int64),  # 2-D, beyond int32
    "item": np.array([1, 2], np.int32),
    "city": np.array([b"paris", "zürich".encode()], object),
}


def test_records_parse_as_tf_serving_prediction_logs():
    log = prediction_log_pb2.PredictionLog.FromString(warmup.encode("serving_int32", INPUTS))
    assert log.WhichOneof("log_type") == "predict_log"
    request = log.predict_log.request
    assert request.model_spec.signature_name == "serving_int32" and not request.output_filter
    assert sorted(request.inputs) == sorted(INPUTS)
    for name, value in INPUTS.items():
        got = tf.make_ndarray(request.inputs[name])
        assert got.dtype == value.dtype and got.shape == value.shape
        np.testing.assert_array_equal(got, value)


def test_reads_tf_serving_prediction_logs_skipping_what_it_does_not_use():
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name="ctr", signature_name="serving_int32"),
        inputs={k: tf.make_tensor_proto(v) for k, v in INPUTS.items()}, output_filter=["ctr"])
    request.model_spec.version.value = 3
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    log.log_metadata.model_spec.name = "ctr"  # field 1, before the predict_log
    name, inputs = warmup.decode(log.SerializeToString())
    assert name == "serving_int32" and sorted(inputs) == sorted(INPUTS)
    for key, value in INPUTS.items():
        assert inputs[key].dtype == value.dtype
        np.testing.assert_array_equal(inputs[key], value)
    # no signature name: TF Serving's default
    bare = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(
        request=predict_pb2.PredictRequest(inputs={"item": tf.make_tensor_proto(INPUTS["item"])})))
    assert warmup.decode(bare.SerializeToString())[0] == "serving_default"
    with pytest.raises(ValueError, match="no predict_log"):
        warmup.decode(prediction_log_pb2.PredictionLog(log_metadata=log.log_metadata).SerializeToString())
    with pytest.raises(ValueError, match="truncated"):
        warmup.decode(log.SerializeToString()[:-3])


def test_every_export_carries_warmup_requests_that_tf_serving_replays(few, tmp_path):
    d, model, sample = few
    r = ked.export_compact(model, str(tmp_path / "ctr"), sample_inputs=sample, verbose=0)
    path = os.path.join(r.path, "assets.extra", "tf_serving_warmup_requests")
    assert r.warmup_requests == 4 and r.bytes["warmup_requests"] == os.path.getsize(path) > 0
    assert r.bytes["assets"] == 0  # the warmup file is its own part
    records = [prediction_log_pb2.PredictionLog.FromString(x.numpy()).predict_log.request
               for x in tf.data.TFRecordDataset(path)]
    # one request per signature and batch size, the sample's rows in order, repeated up to the size
    assert [(q.model_spec.signature_name, tf.make_ndarray(q.inputs[d.field_names[0]]).shape[0]) for q in records] == [
        ("serving_default", 1), ("serving_default", 16), ("serving_int32", 1), ("serving_int32", 16)]
    for q, dtype in zip(records[1::2], (np.int64, np.int32)):
        assert sorted(q.inputs) == sorted(d.field_names)
        for name in d.field_names:
            got = tf.make_ndarray(q.inputs[name])
            assert got.dtype == dtype
            np.testing.assert_array_equal(got, np.resize(sample[name], 16))
    # TensorFlow only, as TF Serving loads it: every record run through the session loader
    report = check_in_fresh_process(r.path, sample, {"ctr": model.predict(sample, verbose=0)})
    assert report["warmup_records"] == 4 and report["tf1_max_abs_diff"] <= 1e-5


def test_warmup_batch_sizes_choose_the_requests_or_none(few, tmp_path):
    d, model, sample = few
    none = ked.export_compact(model, str(tmp_path / "none"), sample_inputs=sample, verbose=0, warmup_batch_sizes=())
    assert none.warmup_requests == 0 and none.bytes["warmup_requests"] == 0
    assert not os.path.exists(os.path.join(none.path, "assets.extra"))
    assert check_in_fresh_process(none.path, sample, {"ctr": model.predict(sample, verbose=0)})["warmup_records"] == 0
    x, y = d.train
    model.compile(optimizer="adam", loss="binary_crossentropy")
    cb = ked.DimensionExporter(str(tmp_path / "cb"), sample_inputs=sample, verbose=0, warmup_batch_sizes=[2, 64, 7])
    model.fit(d.inputs(x[:64]), y[:64], epochs=1, verbose=0, callbacks=[cb])
    assert cb.result.warmup_requests == 6
    sizes = [(name, len(next(iter(inputs.values())))) for name, inputs in warmup.read(cb.result.path)]
    assert sizes == [("serving_default", 2), ("serving_default", 64), ("serving_default", 7),
                     ("serving_int32", 2), ("serving_int32", 64), ("serving_int32", 7)]


@pytest.mark.parametrize("bad", [0, -1, 1.5, "16", True, [1, 0], (2, None), 16, [1] * 501])
def test_bad_warmup_batch_sizes_are_refused_before_anything_is_written(few, tmp_path, bad):
    d, model, sample = few
    with pytest.raises(ValueError, match="`warmup_batch_sizes` must"):
        ked.export_compact(model, str(tmp_path / "x"), sample_inputs=sample, verbose=0, warmup_batch_sizes=bad)
    with pytest.raises(ValueError, match="`warmup_batch_sizes` must"):
        ked.DimensionExporter(str(tmp_path / "x"), warmup_batch_sizes=bad)
    assert not os.path.exists(tmp_path / "x")


def test_warmup_sizes_count_the_example_signature_too(few, tmp_path):
    """TF Serving refuses a warmup file of more than 1000 records: with `serving_tf_example` three
    signatures take one per size, so 400 sizes (1200 records) are refused before anything is
    written, and 333 fit."""
    d, model, sample = few
    with pytest.raises(ValueError, match="at most 333 sizes.*3 signatures x 400 sizes"):
        ked.export_compact(model, str(tmp_path / "x"), sample_inputs=sample, verbose=0, example_signature=True,
                           warmup_batch_sizes=[1] * 400)
    with pytest.raises(ValueError, match="at most 333 sizes"):
        ked.DimensionExporter(str(tmp_path / "x"), example_signature=True, warmup_batch_sizes=[1] * 400)
    assert not os.path.exists(tmp_path / "x")
    r = ked.export_compact(model, str(tmp_path / "y"), sample_inputs=sample, verbose=0, example_signature=True,
                           warmup_batch_sizes=list(range(1, 334)), verify=False)
    assert r.warmup_requests == 999


def test_an_unverified_export_warms_up_with_generated_ids_not_an_unchecked_sample(few, tmp_path):
    """With verify=False nothing replays the records before the server does: they are generated ids
    valid for every field, not the sample's (whose bad id would fail TF Serving's load)."""
    d, model, sample = few
    bad = {k: v.copy() for k, v in sample.items()}
    bad[d.field_names[0]][0] = 10**6
    r = ked.export_compact(model, str(tmp_path / "ctr"), sample_inputs=bad, verbose=0, verify=False)
    assert r.max_abs_diff is None and r.warmup_requests == 4
    records = warmup.read(r.path)
    assert all(int(v.max()) < min(d.vocab_sizes) for _, inputs in records for v in inputs.values())
    assert check_in_fresh_process(r.path, sample, {"ctr": model.predict(sample, verbose=0)})["warmup_records"] == 4


def test_a_warmup_file_that_would_fail_tf_serving_is_refused(few, tmp_path, monkeypatch):
    """TF Serving fails to load a model whose warmup request fails: the export replays its own
    file and ships nothing when a record is not the request meant (here one input left out)."""
    d, model, sample = few
    encode = warmup.encode
    monkeypatch.setattr(warmup, "encode", lambda name, inputs: encode(name, dict(list(inputs.items())[1:])))
    base = tmp_path / "ctr"
    with pytest.raises(ExportError, match="does not hold the request meant"):
        ked.export_compact(model, str(base), sample_inputs=sample, verbose=0)
    assert os.listdir(base) == []  # no version, no temporary folder


@pytest.fixture(scope="module")
def verified(few, tmp_path_factory):
    """A verified export of `few` (test_every_export_carries_warmup_requests_that_tf_serving_replays
    shows the fresh-process check passes on such an export) and the predictions it must give."""
    d, model, sample = few
    r = ked.export_compact(model, str(tmp_path_factory.mktemp("warmup") / "ok"), sample_inputs=sample, verbose=0)
    return r.path, {"ctr": model.predict(sample, verbose=0)}


@pytest.mark.parametrize("fault", ["an input left out", "int32 ids for the int64 signature", "1001 records"])
def test_the_fresh_process_check_fails_a_warmup_file_tf_serving_would_refuse(few, verified, tmp_path, fault):
    """The TensorFlow-only check replays the file as TF Serving does, so a record the server would
    refuse fails it (here written into a verified export by hand)."""
    import shutil

    d, model, sample = few
    path, expected = verified
    bad = str(tmp_path / "bad")
    shutil.copytree(path, bad)
    inputs = {k: np.asarray(v[:2], np.int64) for k, v in sample.items()}
    if fault == "an input left out":
        inputs.pop(d.field_names[1])
    elif fault.startswith("int32"):
        inputs[d.field_names[1]] = inputs[d.field_names[1]].astype(np.int32)
    with tf.io.TFRecordWriter(os.path.join(bad, "assets.extra", "tf_serving_warmup_requests")) as fh:
        for _ in range(1001 if fault == "1001 records" else 1):  # TF Serving reads at most 1000
            fh.write(warmup.encode("serving_default", inputs))
    message = {"an input left out": "!= signature 'serving_default' inputs", "1001 records": "more than 1000"}.get(
        fault, "is int32, signature")
    with pytest.raises(AssertionError, match=message):
        check_in_fresh_process(bad, sample, expected)


def test_string_inputs_warm_up_with_strings(tmp_path):
    keras.utils.set_random_seed(0)
    vocab = [f"city_{i}" for i in range(40)]
    inp = keras.Input(shape=(), dtype="string", name="city")
    emb = ked.PrunableEmbedding(len(vocab) + 1, 8, name="emb")
    model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid", name="p")(
        emb(keras.layers.StringLookup(vocabulary=vocab, name="lookup")(inp))))
    emb.set_dimension_mask(np.array([[1, 0, 1, 1, 0, 0, 1, 0]], bool))
    cities = np.array(["city_3", "city_28", "nowhere"])
    r = ked.export_compact(model, str(tmp_path / "s"), sample_inputs={"city": cities}, verbose=0)
    assert r.warmup_requests == 2  # one signature: no integer input
    (name, one), (_, many) = warmup.read(r.path)
    assert name == "serving_default" and one["city"].tolist() == [b"city_3"]
    assert many["city"].tolist() == [c.encode() for c in np.resize(cities, 16)]
    report = check_in_fresh_process(r.path, {"city": cities}, {"p": model.predict(tf.constant(cities), verbose=0)})
    assert report["warmup_records"] == 2
