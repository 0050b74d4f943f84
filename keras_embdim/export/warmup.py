"""TF Serving warmup requests: `assets.extra/tf_serving_warmup_requests`.

TF Serving initializes much of a model lazily: without warmup the first
requests after a model loads pay for the graph's optimization and its
kernels' first runs (tens of milliseconds against a fraction of one:
docs/results/warmup.md). When a SavedModel holds this file, TF Serving runs
every request in it (a TFRecord of `tensorflow.serving.PredictionLog`
protos) through the model as it loads, and only then serves it; a record
that fails to parse or run fails the load, and more than `MAX_RECORDS` records
are refused.

The records are written here without the `tensorflow-serving-api` package
(it requires the full `tensorflow` wheel): a `PredictionLog` holding a
`PredictLog` whose `PredictRequest` names the signature and maps each input
name to a `TensorProto` is a few nested length-delimited protobuf fields.
`read` parses them back the way TF Serving does (unknown fields skipped); the
tests check both against the official protos.

Example:

>>> import numpy as np
>>> record = encode("serving_default", {"user": np.array([3, 7], np.int64)})
>>> name, inputs = decode(record)
>>> name, inputs["user"].tolist()
('serving_default', [3, 7])
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

from keras_embdim.export.signature import utf8

WARMUP_FOLDER = "assets.extra"  # `kSavedModelAssetsExtraDirectory`
WARMUP_FILE = "tf_serving_warmup_requests"  # `WarmupConsts::kRequestsFileName`
MAX_RECORDS = 1000  # `WarmupConsts::kMaxNumRecords`: TF Serving refuses a file with more
# batch 1, and a small batch: a batch of 1 alone leaves the first larger request cold (numbers in the
# commit that wrote this comment); after both, the first request of batch 512 takes 1.3-2.4x its
# steady state (docs/results/warmup.md)
DEFAULT_BATCH_SIZES = (1, 16)

# field numbers of tensorflow_serving/apis/{prediction_log,predict,model}.proto
_PREDICTION_LOG_PREDICT_LOG = 6
_PREDICT_LOG_REQUEST = 1
_REQUEST_MODEL_SPEC = 1
_REQUEST_INPUTS = 2
_MODEL_SPEC_SIGNATURE_NAME = 3
_MAP_KEY, _MAP_VALUE = 1, 2
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5  # wire types


def check_batch_sizes(value: Any, signatures: int = 2) -> tuple[int, ...]:
    """`warmup_batch_sizes`: a sequence of positive integers (empty: no warmup file), at most
    `MAX_RECORDS` records for `signatures` signatures (one record per signature and size)."""
    bad = (isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple))
           or any(isinstance(b, (bool, np.bool_)) or not isinstance(b, (int, np.integer)) or b < 1 for b in value))
    if bad:
        raise ValueError("`warmup_batch_sizes` must be a list or tuple of positive integers (the batch sizes of the "
                         f"TF Serving warmup requests; () writes none); received warmup_batch_sizes={value!r}.")
    if len(value) * signatures > MAX_RECORDS:
        raise ValueError(f"`warmup_batch_sizes` must give at most {MAX_RECORDS // signatures} sizes: TF Serving "
                         f"refuses more than {MAX_RECORDS} warmup records ({signatures} signatures x "
                         f"{len(value)} sizes); received {len(value)}.")
    return tuple(int(b) for b in value)


@dataclass
class Request:
    """One warmup record: `inputs` (signature input name -> array of the signature's dtype) are
    the verification inputs' rows `rows`, for signature `signature`."""

    signature: str
    inputs: dict
    rows: np.ndarray


def requests(inputs: dict, batch_sizes: Sequence[int]) -> list[Request]:
    """One `Request` per signature and batch size. `inputs`: signature name -> input name ->
    array in that signature's dtype (the same rows in every array): each request takes its
    rows in order, repeated when fewer than the batch size."""
    out = []
    for name, arrays in inputs.items():
        n = len(next(iter(arrays.values())))
        for b in batch_sizes:
            rows = np.arange(b) % n
            values = {key: np.asarray(value)[rows] for key, value in arrays.items()}
            out.append(Request(name, {key: _as_bytes(v) if v.dtype.kind in "USO" else v for key, v in values.items()},
                               rows))
    return out


def _as_bytes(value: np.ndarray) -> np.ndarray:
    """Strings as a `TensorProto` holds them and `tf.make_ndarray` gives them back: an object
    array of bytes (UTF-8)."""
    flat = utf8(value)
    out = np.empty(len(flat), object)
    out[:] = flat
    return out.reshape(value.shape)


def encode(signature_name: str, inputs: dict) -> bytes:
    """A serialized `PredictionLog` of a `PredictRequest` for `signature_name` with `inputs`
    (name -> array; in name order)."""
    entries = b"".join(
        _field(_REQUEST_INPUTS, _field(_MAP_KEY, key.encode()) + _field(
            _MAP_VALUE, tf.make_tensor_proto(np.asarray(inputs[key])).SerializeToString()))
        for key in sorted(inputs)
    )
    model_spec = _field(_MODEL_SPEC_SIGNATURE_NAME, signature_name.encode())
    request = _field(_REQUEST_MODEL_SPEC, model_spec) + entries
    return _field(_PREDICTION_LOG_PREDICT_LOG, _field(_PREDICT_LOG_REQUEST, request))


def decode(record: bytes) -> tuple[str, dict]:
    """`(signature name, inputs)` of a serialized `PredictionLog` holding a predict request (an
    empty signature name is TF Serving's `"serving_default"`); other fields are skipped."""
    logs = [v for n, v in _parse(record) if n == _PREDICTION_LOG_PREDICT_LOG]
    if not logs:
        raise ValueError("the warmup record holds no predict_log (field 6 of PredictionLog).")
    name, inputs = "", {}
    for n, request in _parse(logs[-1]):
        if n != _PREDICT_LOG_REQUEST:
            continue
        for m, value in _parse(request):
            if m == _REQUEST_MODEL_SPEC:
                name = next((v.decode() for k, v in _parse(value) if k == _MODEL_SPEC_SIGNATURE_NAME), name)
            elif m == _REQUEST_INPUTS:
                entry = dict(_parse(value))
                inputs[entry.get(_MAP_KEY, b"").decode()] = tf.make_ndarray(
                    tensor_pb2.TensorProto.FromString(entry.get(_MAP_VALUE, b"")))
    return name or "serving_default", inputs


def path_in(saved_dir: str) -> str:
    return os.path.join(saved_dir, WARMUP_FOLDER, WARMUP_FILE)


def write(saved_dir: str, records: list[Request]) -> str:
    """Write `records` to the SavedModel folder's warmup file; returns its path."""
    path = path_in(saved_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as fh:
        for r in records:
            fh.write(encode(r.signature, r.inputs))
    return path


def read(saved_dir: str) -> list[tuple[str, dict]]:
    """The `(signature name, inputs)` of every record of the SavedModel's warmup file (none
    when it has no file)."""
    path = path_in(saved_dir)
    if not os.path.exists(path):
        return []
    return [decode(r.numpy()) for r in tf.data.TFRecordDataset(path)]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return _varint(number << 3 | _BYTES) + _varint(len(payload)) + payload


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated protobuf varint in a warmup record.")
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return value, i


def _parse(buf: bytes) -> list[tuple[int, Any]]:
    """The `(field number, value)` pairs of one protobuf message: the bytes of a length-delimited
    field, the integer of a varint; fixed-width fields as their bytes."""
    out, i = [], 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, i = _read_varint(buf, i)
        elif wire == _BYTES:
            size, i = _read_varint(buf, i)
            value, i = buf[i:i + size], i + size
            if len(value) != size:
                raise ValueError("truncated protobuf field in a warmup record.")
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
            value, i = buf[i:i + size], i + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} in a warmup record.")
        out.append((number, value))
    return out
