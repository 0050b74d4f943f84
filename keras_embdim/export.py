"""`export_compact`: a SavedModel whose searched tables hold only kept dimensions.

How it works (docs/architecture.md):
1. Every searchable layer's table is compacted (`keras_embdim.compaction`) into
   new per-field variables of shape `[n_f, k_f]`.
2. The layers are switched to look up from those variables and the model's
   inference call is traced once into a concrete function; the switch is undone
   right after tracing, so the Keras model is never changed.
3. The SavedModel tracks exactly the variables that function captures, so no
   full-size table (nor optimizer state, masks or search variables) is written,
   and every variable is written once.
4. It is written to a temporary folder next to `export_dir`, loaded back, run on
   sample inputs and compared with the Keras model, its variable bytes are
   counted, and only then is it moved into place.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from keras_embdim import _compat, compaction
from keras_embdim.mask import find_searchable_layers
from keras_embdim.report import dimension_summary

logger = logging.getLogger("keras_embdim")

TABLES_ATTRIBUTE = "embedding_tables"
REPORT_FILE = "dimensions.json"


class ExportError(RuntimeError):
    """The export could not be written or did not verify; nothing was moved into place."""


@dataclass
class ExportResult:
    path: str
    searched: bool
    kept_params: int
    full_params: int
    embedding_bytes: int
    embedding_overhead: float  # embedding bytes / (kept params x 4 B)
    variable_bytes: int
    variables_file_bytes: int
    max_abs_diff: float | None
    inputs: dict = field(default_factory=dict)
    outputs: list = field(default_factory=list)
    layouts: dict = field(default_factory=dict)  # layer -> "field" or the per-value ragged layout
    table_dtype: str = "float32"
    # max |model with the stored precision - model in float32| on the verification inputs
    precision_max_abs_diff: float | None = None

    def to_json(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------- signature
_NAME_OK = re.compile(r"[^A-Za-z0-9_.\-]")


def _clean(name: str) -> str:
    name = _NAME_OK.sub("_", name) or "inputs"
    return name if name[0].isalpha() else f"x_{name}"


def _spec_of(value: Any, name: str) -> tf.TensorSpec:
    value = tf.convert_to_tensor(value)
    return tf.TensorSpec([None, *value.shape[1:]], value.dtype, name=name)


def _input_layout(model: Any, input_signature: Any, sample_inputs: Any):
    """(kind, names, specs): how named serving inputs map to the model's inputs."""
    if input_signature is not None:
        # Its form says how the model is called: one tensor, a list, or a dict.
        if isinstance(input_signature, tf.TensorSpec):
            n = _clean(input_signature.name or "inputs")
            return "single", [n], {n: tf.TensorSpec(input_signature.shape, input_signature.dtype, name=n)}
        if isinstance(input_signature, (list, tuple)) and all(isinstance(s, tf.TensorSpec) for s in input_signature):
            names = [_clean(s.name or f"input_{i}") for i, s in enumerate(input_signature)]
            return "list", names, {n: tf.TensorSpec(s.shape, s.dtype, name=n) for n, s in zip(names, input_signature)}
        if not isinstance(input_signature, dict):
            raise ValueError(
                "`input_signature` must be a tf.TensorSpec (model takes one tensor), a list of them, "
                f"or a dict of name -> tf.TensorSpec (model takes a dict); received {input_signature!r}."
            )
        names = list(input_signature)
        specs = {_clean(n): tf.TensorSpec(s.shape, s.dtype, name=_clean(n)) for n, s in input_signature.items()}
        return "dict", names, specs
    struct = _compat.input_structure(model)
    if struct is None:
        if sample_inputs is None:
            raise ValueError(
                f"model '{model.name}' has no symbolic inputs (subclassed?); pass "
                "`input_signature` (dict of name -> tf.TensorSpec) or `sample_inputs`."
            )
        if isinstance(sample_inputs, dict):
            names = list(sample_inputs)
            return "dict", names, {_clean(n): _spec_of(sample_inputs[n], _clean(n)) for n in names}
        if isinstance(sample_inputs, (list, tuple)):
            names = [f"input_{i}" for i in range(len(sample_inputs))]
            return "list", names, {n: _spec_of(v, n) for n, v in zip(names, sample_inputs)}
        return "single", ["inputs"], {"inputs": _spec_of(sample_inputs, "inputs")}

    def spec(t, name):
        shape = _compat.symbolic_shape(t)
        return tf.TensorSpec([None, *shape[1:]], _compat.symbolic_dtype(t), name=name)

    if isinstance(struct, dict):
        names = list(struct)
        return "dict", names, {_clean(n): spec(struct[n], _clean(n)) for n in names}
    if isinstance(struct, (list, tuple)):
        names, seen = [], set()
        for i, t in enumerate(struct):
            n = _clean(_compat.symbolic_name(t))
            if n in seen:
                n = f"{n}_{i}"
            seen.add(n)
            names.append(n)
        return "list", names, {n: spec(t, n) for n, t in zip(names, struct)}
    n = _clean(_compat.symbolic_name(struct))
    return "single", [n], {n: spec(struct, n)}


def _model_inputs(kind: str, names: list, named: dict):
    if kind == "dict":
        return {n: named[_clean(n)] for n in names}
    if kind == "list":
        return [named[n] for n in names]
    return named[names[0]]


def _named_outputs(model: Any, outputs: Any) -> dict:
    if isinstance(outputs, dict):
        return {_clean(k): v for k, v in outputs.items()}
    flat = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    names = _compat.output_names(model)
    if not names or len(names) != len(flat):
        names = [f"output_{i}" for i in range(len(flat))]
    return {_clean(n): v for n, v in zip(names, flat)}


def synthesize_inputs(specs: dict, model: Any, rows: int = 64, seed: int = 0) -> dict:
    """Valid-looking inputs for verification: ids below the smallest vocabulary."""
    rng = np.random.default_rng(seed)
    layers = find_searchable_layers(model)
    low = min((min(l.field_vocab_sizes) for l in layers), default=2)
    out = {}
    for name, s in specs.items():
        shape = [rows if i == 0 else (d or 1) for i, d in enumerate(s.shape.as_list())]
        if s.dtype.is_integer:
            out[name] = rng.integers(0, max(1, low), size=shape).astype(s.dtype.as_numpy_dtype)
        elif s.dtype == tf.string:
            out[name] = np.full(shape, b"", dtype=object)
        elif s.dtype == tf.bool:
            out[name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            out[name] = rng.standard_normal(shape).astype(s.dtype.as_numpy_dtype)
    return out


# -------------------------------------------------------------------- export
def _layer_resources(model: Any) -> list:
    """Non-variable resources held by the model's layers (e.g. a `StringLookup`'s
    hash table): the SavedModel must track them for the serving graph to load."""
    out, seen = [], set()

    def visit(value, depth=0):
        if isinstance(value, tf.saved_model.experimental.TrackableResource) and not isinstance(value, tf.Variable):
            if id(value) not in seen:
                seen.add(id(value))
                out.append(value)
        elif isinstance(value, (list, tuple)) and depth < 2:
            for v in value:
                visit(v, depth + 1)
        elif isinstance(value, dict) and depth < 2:
            for v in value.values():
                visit(v, depth + 1)

    for layer in _compat.flatten_layers(model):
        for value in list(vars(layer).values()):
            visit(value)
    return out


def _variables_file_bytes(saved_dir: str) -> int:
    var_dir = os.path.join(saved_dir, "variables")
    return sum(
        os.path.getsize(os.path.join(var_dir, f)) for f in os.listdir(var_dir) if f.startswith("variables.data")
    )


def saved_variable_bytes(saved_dir: str) -> dict[str, int]:
    """Bytes of every variable stored in a SavedModel, by checkpoint key."""
    reader = tf.train.load_checkpoint(os.path.join(saved_dir, "variables", "variables"))
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    out = {}
    for key, shape in shapes.items():
        if not key.endswith(".ATTRIBUTES/VARIABLE_VALUE"):
            continue
        out[key] = int(np.prod(shape, dtype=np.int64)) * tf.as_dtype(dtypes[key]).size
    return out


def export_compact(
    model: Any,
    export_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    sample_inputs: Any = None,
    input_signature: dict | None = None,
    verify: bool = True,
    atol: float = 1e-5,
    verbose: int = 1,
    value_layout: str = "auto",
    jit_compile: bool = False,
    table_dtype: str = "float32",
) -> ExportResult:
    """Export `model` for TF Serving with its searched tables compacted.

    Args:
        model: a Keras model containing keras_embdim layers (a model without
            any is exported at full size, and the report says so).
        export_dir: target folder; it must not exist unless `overwrite=True`.
        overwrite: replace an existing export (only after the new one verified).
        sample_inputs: inputs (dict by input name, list, or array) used to check
            that the export predicts what the model predicts; default: 64
            generated rows with ids valid for every field.
        input_signature: for models without symbolic inputs (subclassed): a
            named `tf.TensorSpec` if the model takes one tensor, a list of them,
            or a dict of name -> `tf.TensorSpec` if it takes a dict; default: the
            model's own inputs.
        verify: load the export back and compare (default True).
        atol: largest allowed absolute difference in verification.
        verbose: print where the export went.
        value_layout: for per-value layers (PME, TwinsMaskLayer): the packed
            layout, `"auto"` (the fastest within 1.10 x the kept bytes),
            `"offsets"`, `"runs"` or `"planes"` (`keras_embdim.ragged`).
        jit_compile: XLA-compile the embedding lookups in the serving graph
            (per value about 2x faster on CPU at batch 512; TF Serving then
            needs `--xla_cpu_compilation_enabled=true`).
        table_dtype: storage of the kept values: `"float32"` (default, exact),
            `"float16"` (2 B per value) or `"int8"` (1 B per value plus a
            float16 scale per row). The export is verified against the model
            run on exactly the stored values, and the effect of the precision
            itself is reported (`precision_max_abs_diff`).

    Returns:
        an `ExportResult` (also written, with the dimension report, to
        `export_dir/dimensions.json`).

    Example:

    ```python
    ked.export_compact(model, "export/ctr")
    # then, with TensorFlow only:
    serve = tf.saved_model.load("export/ctr").signatures["serving_default"]
    ```
    """
    export_dir = os.path.abspath(os.fspath(export_dir))
    if os.path.exists(export_dir) and not overwrite:
        raise FileExistsError(
            f"export_dir={export_dir!r} already exists; pass overwrite=True to replace it "
            "(the old export is kept until the new one has verified)."
        )
    parent = os.path.dirname(export_dir)
    os.makedirs(parent, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"export_dir={export_dir!r}: its folder {parent!r} is not writable.")

    from keras_embdim import ragged

    if value_layout != "auto" and value_layout not in ragged.LAYOUTS:
        raise ValueError(f"value_layout must be 'auto' or one of {ragged.LAYOUTS}, got {value_layout!r}.")
    from keras_embdim import quantize

    quantize.check_dtype(table_dtype)
    layers = find_searchable_layers(model)
    kind, names, specs = _input_layout(model, input_signature, sample_inputs)

    # 1. compact tables (per field: kept columns; per value: the ragged layout)
    serving, compact_vars, compacted = {}, [], []
    for layer in layers:
        state = compaction.compact_layer(
            layer, value_layout=value_layout, jit_compile=jit_compile, table_dtype=table_dtype
        )
        serving[layer] = state
        compact_vars.extend(state.variables)
        compacted.append(layer)

    # 2. trace the inference call with the layers reading the compact tables
    def serve(named):
        outputs = model(_model_inputs(kind, names, named), training=False)
        return _named_outputs(model, outputs)

    fn = tf.function(serve, input_signature=[specs], autograph=False)
    try:
        for layer, state in serving.items():
            layer._set_serving_tables(state)
        concrete = fn.get_concrete_function()
    finally:
        for layer in serving:
            layer._set_serving_tables(None)

    captured = list(concrete.variables)
    full_tables = {id(_compat.tf_variable(l.embedding_variable)) for l in compacted}
    leaked = [v.name for v in captured if id(v) in full_tables]
    if leaked:
        raise ExportError(
            f"the serving graph still reads full tables {leaked}: something other than the "
            "searchable layer uses them (a shared weight?); refusing to ship them."
        )
    compact_ids = {id(v) for v in compact_vars}
    module = tf.Module()
    # every compact table (a resource gather_nd captures its variable without
    # listing it in `concrete.variables`, so the captured list is not enough)
    setattr(module, TABLES_ATTRIBUTE, list(compact_vars))
    module.model_variables = [v for v in captured if id(v) not in compact_ids]
    # lookup tables (StringLookup, IntegerLookup, hashing tables) the graph reads
    module.resources = _layer_resources(model)

    summary = dimension_summary(layers) if layers else {"params_before": 0, "params_after": 0, "kept_fraction": 1.0, "layers": {}}
    searched = any(not l.dimension_mask().is_full for l in layers)
    native = [l.name for l in _compat.flatten_layers(model) if type(l).__name__ == "MixedDimensionEmbedding"]
    if not searched and native:
        logger.info("export_compact: model '%s' has natively mixed-dimension tables %s; exported as they are.",
                    model.name, native)
    elif not searched:
        logger.warning(
            "export_compact: model '%s' has %s; exporting full-size tables.",
            model.name,
            "no searchable layer" if not layers else "not been searched (every dimension is kept)",
        )

    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(export_dir)}.tmp-", dir=parent)
    try:
        tf.saved_model.save(module, tmp, signatures={"serving_default": concrete})
        var_bytes = saved_variable_bytes(tmp)
        emb_bytes = sum(b for k, b in var_bytes.items() if k.startswith(TABLES_ATTRIBUTE + "/"))
        tracked_bytes = sum(
            int(np.prod(v.shape)) * v.dtype.size for v in getattr(module, TABLES_ATTRIBUTE) + module.model_variables
        )
        if sum(var_bytes.values()) != tracked_bytes:
            raise ExportError(
                f"the SavedModel stores {sum(var_bytes.values())} variable bytes, expected {tracked_bytes}."
            )
        kept = summary["params_after"]
        # per field: exactly the kept params (at float32); per value: the packed layout's own count
        expected_bytes = sum(st.nbytes for st in serving.values())
        if table_dtype == "float32" and any(
            st.nbytes != 4 * l.dimension_mask().kept_params for l, st in serving.items() if st.granularity == "field"
        ):
            raise ExportError("a per-field compact table holds more than its kept parameters.")
        if emb_bytes != expected_bytes:
            raise ExportError(f"embedding bytes {emb_bytes} != the {expected_bytes} the compact layout holds.")
        max_diff = precision_diff = None
        if verify:
            stored = {l: st.dequantized for l, st in serving.items()} if table_dtype != "float32" else {}
            max_diff, precision_diff = _verify(model, tmp, kind, names, specs, sample_inputs, atol, stored)
        result = ExportResult(
            path=export_dir,
            searched=searched,
            kept_params=int(summary["params_after"]),
            full_params=int(summary["params_before"]),
            embedding_bytes=int(emb_bytes),
            embedding_overhead=float(emb_bytes / (4 * kept)) if kept else 1.0,
            variable_bytes=int(sum(var_bytes.values())),
            variables_file_bytes=_variables_file_bytes(tmp),
            max_abs_diff=max_diff,
            inputs={n: {"dtype": s.dtype.name, "shape": s.shape.as_list()} for n, s in specs.items()},
            outputs=list(concrete.structured_outputs),
            layouts={l.name: getattr(st, "layout", "field") for l, st in serving.items()},
            table_dtype=table_dtype,
            precision_max_abs_diff=precision_diff,
        )
        with open(os.path.join(tmp, REPORT_FILE), "w") as fh:
            json.dump({"export": result.to_json(), **summary}, fh, indent=2)
        _move_into_place(tmp, export_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    msg = (
        f"Exported to {export_dir}: embedding tables {result.embedding_bytes:,} B "
        f"({result.kept_params:,} of {result.full_params:,} params), all variables "
        f"{result.variable_bytes:,} B"
        + (f", max |served - trained| = {max_diff:.2e}" if max_diff is not None else "")
    )
    logger.info(msg)
    if verbose:
        print(msg)
    return result


def _verify(model, saved_dir, kind, names, specs, sample_inputs, atol, stored_tables=None) -> tuple:
    """`(max |served - model|, max |model at stored precision - model|)`.

    `stored_tables` maps a layer to the full table with its kept entries at the
    stored precision: the model is run on those (then the original table is
    put back, whatever happens) so that the served predictions are compared
    with what they must equal, and the precision's own effect is measured apart.
    """
    if sample_inputs is None:
        named = synthesize_inputs(specs, model)
    elif isinstance(sample_inputs, dict):
        named = {_clean(k): np.asarray(v) for k, v in sample_inputs.items()}
    elif isinstance(sample_inputs, (list, tuple)):
        named = {n: np.asarray(v) for n, v in zip(specs, sample_inputs)}
    else:
        named = {next(iter(specs)): np.asarray(sample_inputs)}
    missing = set(specs) - set(named)
    if missing:
        raise ValueError(f"sample_inputs lacks inputs {sorted(missing)}; the export takes {sorted(specs)}.")

    def run_model():
        out = _named_outputs(model, model(_model_inputs(kind, names, named), training=False))
        return {k: _compat.to_numpy(v) for k, v in out.items()}

    expected = run_model()
    precision_diff = None
    if stored_tables:
        originals = {l: _compat.to_numpy(l.embedding_variable).copy() for l in stored_tables}
        try:
            for layer, table in stored_tables.items():
                layer.embedding_variable.assign(table)
            at_precision = run_model()
        finally:
            for layer, table in originals.items():
                layer.embedding_variable.assign(table)
        precision_diff = max(float(np.max(np.abs(at_precision[k] - expected[k]), initial=0.0)) for k in expected)
        expected = at_precision
    loaded = tf.saved_model.load(saved_dir)
    got = loaded.signatures["serving_default"](
        **{n: tf.convert_to_tensor(named[n], specs[n].dtype) for n in specs}
    )
    worst = 0.0
    for key, value in expected.items():
        if key not in got:
            raise ExportError(f"the export lacks output {key!r}; it has {sorted(got)}.")
        diff = float(np.max(np.abs(value - got[key].numpy()), initial=0.0))
        worst = max(worst, diff)
    if not worst <= atol:
        raise ExportError(f"the export predicts differently from the model: max |diff| = {worst} > atol={atol}.")
    return worst, precision_diff


def _move_into_place(tmp: str, export_dir: str, overwrite: bool) -> None:
    if os.path.exists(export_dir):
        if not overwrite:  # appeared meanwhile
            raise FileExistsError(f"export_dir={export_dir!r} already exists.")
        backup = tempfile.mkdtemp(prefix=f".{os.path.basename(export_dir)}.old-", dir=os.path.dirname(export_dir))
        os.rmdir(backup)
        os.rename(export_dir, backup)
        try:
            os.rename(tmp, export_dir)
        except BaseException:
            os.rename(backup, export_dir)
            raise
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.rename(tmp, export_dir)
