"""`export_compact`: a SavedModel whose searched tables hold only kept dimensions.

How it works (docs/reference/architecture.md):
1. Every searchable layer's table is compacted field by field from its variable
   (`keras_embdim.export.compact`): per-field masks into one table per kept
   width, per-value sizes into a packed layout.
2. Where a searched layer's output reaches a `Dense` only through data-moving
   layers, the Dense is computed from the kept values and the matching kernel
   rows (`keras_embdim.export.fold`); elsewhere the layer serves its padded
   output. The serving function is traced once per signature with the layers
   switched to their lookups, and switched back right after, so the Keras model
   is never changed.
3. The SavedModel tracks exactly the variables the serving graph reads: no
   full-size table, optimizer state, mask or search variable is written, and
   every variable is written once.
4. It is written to a hidden temporary folder beside its target, its bytes are
   counted by part, it is loaded back and run on sample inputs against the
   Keras model, given readable permissions, and only then renamed into place
   (by default as the next numbered version of a TF Serving model base path).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from keras_embdim import _compat, _utils
from keras_embdim.export import fold as fold_lib
from keras_embdim.export import layouts, quantize, serving_apis, signature, warmup, writer
from keras_embdim.export.compact import compact_layer
from keras_embdim.export.lookup import check_invalid_id_policy
from keras_embdim.searchable import find_searchable_layers
from keras_embdim.report import dimension_summary
from keras_embdim.validation import check_bool, check_number, check_verbose

logger = logging.getLogger("keras_embdim")

TABLES_ATTRIBUTE = "embedding_tables"
REPORT_FILE = "dimensions.json"


class ExportError(RuntimeError):
    """The export could not be written or did not verify; nothing was moved into place."""


@dataclass
class ExportResult:
    """What `export_compact` wrote (also in the export's `dimensions.json`)."""

    path: str  # the SavedModel folder (`base_path/<version>` when versioned)
    searched: bool
    kept_params: int
    full_params: int
    embedding_bytes: int
    embedding_overhead: float  # embedding bytes / (kept params x 4 B)
    # of the embedding bytes: zero columns that pad narrow fields into a wider per-field table
    # (at most 1 % of the kept bytes; `keras_embdim.export.compact.group_widths`), and the zeros
    # past its values' sizes that a per-value layer's whole-stored field holds (`dense_fields`)
    embedding_padding_bytes: int
    variable_bytes: int
    variables_file_bytes: int
    max_abs_diff: float | None
    inputs: dict = field(default_factory=dict)
    outputs: list = field(default_factory=list)
    # layer -> "field", the per-value layout, or "field+<layout>" for a per-value layer with fields
    # stored whole in per-field tables (`dense_fields`; "field" alone when every field is)
    layouts: dict = field(default_factory=dict)
    table_dtype: str = "float32"
    # max |model with the stored precision - model in float32| on the verification inputs
    precision_max_abs_diff: float | None = None
    # the largest |served - model| the verification allowed: `atol`, or for a model computing in
    # float16 / bfloat16 the rounding of that dtype (`verification_tolerance`); None: not verified
    verified_tolerance: float | None = None
    base_path: str | None = None  # TF Serving's --model_base_path (None: not versioned)
    version: int | None = None
    signatures: list = field(default_factory=list)
    on_invalid_id: str = "error"
    # records in assets.extra/tf_serving_warmup_requests (one per signature and warmup batch size)
    warmup_requests: int = 0
    # bytes by part: embedding_tables, other_variables (stored values), graph, assets (lookup
    # vocabularies), warmup_requests (the warmup file), variables_files (values + index on disk)
    # and total on disk
    bytes: dict = field(default_factory=dict)
    # per searched layer: the Dense (and cross, FM, pooling) layers it was folded into, or why it serves padded, and whether its
    # served ids are checked ("on_invalid_id") or the check was left out (it could never fail, or
    # on_invalid_id="unchecked"), and its fields served in the basis of their rows ("rank_folded": a
    # field of fewer ids than kept columns, read only by folded Dense layers: `fold.fold_ranks`)
    folds: dict = field(default_factory=dict)
    # per-value layers: the fields stored whole, in per-field tables (`value_dense_fields`)
    dense_fields: dict = field(default_factory=dict)
    # kept values not stored because their fields are rank-folded (`folds[layer]["rank_folded"]`: a
    # field of n ids keeping k columns served at its rank r stores n x r values, not n x k), in bytes:
    # embedding_bytes = kept params x 4 B - this + embedding_padding_bytes (float32)
    embedding_rank_folded_bytes: int = 0
    # the signature output name of each output of the endpoint `serve`, in `tf.nest.flatten` order (a
    # dict output's raw keys sorted; each signature name cleaned from its key)
    serve_outputs: list = field(default_factory=list)
    # the signatures of TF Serving's Regress / Classify APIs (`example_signature=True`), each
    # {"name", "method", "output"}: `keras_embdim.export.serving_apis`
    serving_apis: list = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


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

    for layer in _utils.flatten_layers(model):
        for value in list(vars(layer).values()):
            visit(value)
    return out


@contextlib.contextmanager
def _serving(compacted: dict):
    """The searchable layers look up from their compact tables (padded output) while inside."""
    try:
        for layer, compact in compacted.items():
            layer.use_serving_lookup(compact.lookup)
        yield
    finally:
        for layer in compacted:
            layer.use_serving_lookup(None)


def check_options(
    *,
    export_dir: Any,
    version: Any,
    overwrite: Any,
    verify: Any,
    atol: Any,
    verbose: Any,
    value_layout: Any,
    value_read: Any,
    jit_compile: Any,
    table_dtype: Any,
    on_invalid_id: Any,
    fold: Any,
    value_dense_fields: Any,
    warmup_batch_sizes: Any,
    example_signature: Any,
) -> dict:
    """`export_compact`'s options (see there), each checked before anything is read or
    written: a bad one is refused with an error naming it and what it takes (a truthy
    string is not a bool: `overwrite="no"` must not replace an export). Returns them as
    the export uses them (the path as a str, a numpy integer as an int).
    `DimensionExporter` checks its options with this when it is built."""
    if not isinstance(export_dir, (str, os.PathLike)) or not os.fspath(export_dir):
        raise ValueError(f"`export_dir` must be a non-empty path (str or os.PathLike); received "
                         f"export_dir={export_dir!r}.")
    jit_compile = check_bool("jit_compile", jit_compile)
    example_signature = check_bool("example_signature", example_signature)
    # at most three signatures take warmup records: serving_default, serving_int32 (integer inputs) and
    # serving_tf_example (Regress / Classify signatures share its tensors and take none)
    signatures = 3 if example_signature else 2
    return {
        "export_dir": os.fspath(export_dir),
        "version": writer.check_version(version),
        "overwrite": check_bool("overwrite", overwrite),
        "verify": check_bool("verify", verify),
        "atol": check_number("atol", atol, low=0),
        "verbose": check_verbose(verbose),
        "value_layout": layouts.check_layout(value_layout, jit_compile),
        "value_read": layouts.check_read(value_read),
        "jit_compile": jit_compile,
        "table_dtype": quantize.check_dtype(table_dtype),
        "on_invalid_id": check_invalid_id_policy(on_invalid_id),
        "fold": check_bool("fold", fold),
        "value_dense_fields": check_bool("value_dense_fields", value_dense_fields),
        "warmup_batch_sizes": warmup.check_batch_sizes(warmup_batch_sizes, signatures),
        "example_signature": example_signature,
    }


def export_compact(
    model: Any,
    export_dir: str | os.PathLike,
    *,
    version: int | str | None = "auto",
    overwrite: bool = False,
    sample_inputs: Any = None,
    input_signature: dict | None = None,
    verify: bool = True,
    atol: float = 1e-5,
    verbose: int = 1,
    value_layout: str = "auto",
    value_read: str = "auto",
    jit_compile: bool = False,
    table_dtype: str = "float32",
    on_invalid_id: str = "error",
    fold: bool = True,
    value_dense_fields: bool = True,
    warmup_batch_sizes: tuple[int, ...] | list[int] = warmup.DEFAULT_BATCH_SIZES,
    example_signature: bool = False,
) -> ExportResult:
    """Export `model` for TF Serving with its searched tables compacted.

    Args:
        model: a Keras model containing keras_embdim layers (a model without
            any is exported at full size, and the report says so).
        export_dir: TF Serving's model base path: the export goes to
            `export_dir/<version>/` (with `version=None`: into `export_dir` itself).
        version: `"auto"` (default: the next free version number, 1 for a new
            folder), a positive integer, or None (no version folder).
        overwrite: replace an existing export (or an empty folder) at the
            target, only after the new one verified; a file or a folder of
            other files is refused. `"auto"` versions never overwrite.
        sample_inputs: inputs (dict by input name, list, or array; the same
            number of rows, at least one, in every input; or a batched
            `tf.data.Dataset`, whose first batch's inputs are taken) used to
            check that the export predicts what the model predicts; default:
            64 generated rows with ids valid for every field.
        input_signature: for models without symbolic inputs (subclassed): a
            named `tf.TensorSpec` if the model takes one tensor, a list of them,
            or a dict of name -> `tf.TensorSpec` if it takes a dict; default: the
            model's own inputs.
        verify: load the export back and compare (default True).
        atol: largest allowed absolute difference in verification for a model computing in
            float32; a model with a layer computing in float16 or bfloat16 (a
            mixed-precision policy) is allowed at least 4 x that dtype's epsilon x
            max(1, largest |prediction|), the rounding by which two faithful runs
            of it differ (`ExportResult.verified_tolerance` says what was applied).
        verbose: print where the export went.
        value_layout: for per-value layers (PME, TwinsMaskLayer): the packed
            layout, `"auto"` (the fastest within 1.10 x the kept bytes),
            `"head"` (the widest rows whole in a table of their own, read by
            one row gather, the others' start and size in the same hash
            table; not with `jit_compile`),
            `"offsets"`, `"runs"`,
            `"planes"` or `"sparse"` (`keras_embdim.export.layouts`).
        value_read: for per-value layers without XLA: how a lookup reads its
            rows. `"prefix"` reads each looked-up row at the layer's widest
            size, a cost that does not depend on the traffic; `"ranged"` reads
            only the kept values, faster when requests mostly hit rare (narrow)
            values. After a per-value search the frequent values keep the most
            columns, so served traffic mostly hits wide rows: `"auto"` (default)
            takes `"prefix"` for the single-index layouts and `"ranged"` for
            the head layout, whose other rows are the narrow, rare ones
            (docs/results/serving.md).
        jit_compile: XLA-compile the embedding lookups in the serving graph
            (TF Serving then needs `--xla_cpu_compilation_enabled=true`).
        table_dtype: storage of the kept values: `"float32"` (default, exact),
            `"float16"` (2 B per value) or `"int8"` (1 B per value plus a
            float16 scale per row). The export is verified against the model
            run on exactly the stored values, and the effect of the precision
            itself is reported (`precision_max_abs_diff`).
        on_invalid_id: what a served request with an id outside its field's
            vocabulary gets: `"error"` (default: the request fails with a
            message naming the layer, the field, the id and the vocabulary
            size), `"zero"` (a zero embedding for that id; the request answers)
            or `"unchecked"` (no check in the served graph, as Keras' own
            `Embedding`: an invalid id is not detected, it reads another row
            or fails in the gather; for ids that are in range by construction).
        fold: compute the `Dense` layers fed by searched embeddings from the
            kept values only (`keras_embdim.export.fold`); False serves every
            searched layer's padded output.
        value_dense_fields: for per-value layers: a field whose values nearly
            all keep the field's widest size (a small field of frequent
            values, after a per-value search) is stored whole in a per-field
            table, its lookups plain row gathers, while the bytes stay within
            1.10 x the kept bytes; the other fields are packed by
            `value_layout` (`keras_embdim.export.compact.dense_field_plan`).
            False packs every field.
        warmup_batch_sizes: the batch sizes of the TF Serving warmup requests
            written to `assets.extra/tf_serving_warmup_requests`: one request
            per signature and size, of the verification inputs' rows (repeated
            up to the size; with `verify=False`, of generated ids valid for
            every field). TF Serving runs them as it loads the model, so
            that the first served requests do not pay for its lazy
            initialization (docs/results/warmup.md); the export replays them
            in its verification. Default `(1, 16)`; `()` writes no file.
        example_signature: also serve `serving_tf_example`, whose one input
            `examples` takes serialized `tf.train.Example`s (a feature per
            model input: int64, float or bytes, of the input's shape), as
            TFX's Keras exports do; its predictions are `serving_default`'s.
            On the same graph, the signatures TF Serving's Regress and
            Classify APIs take (which `tf.saved_model.save` cannot write):
            `regression` for a float32 output of shape `[batch]` or
            `[batch, 1]`, `classification` (scores) for `[batch, classes]`;
            `regression_<output>` / `classification_<output>` when the model
            has several outputs (`keras_embdim.export.serving_apis`).

    Every option is checked before anything is read or written (`check_options`;
    the sample's input names and rows too): a bad one is an error naming it.

    Returns:
        an `ExportResult` (also written, with the dimension report, to the
        export's `dimensions.json`).

    Example:

    ```python
    r = ked.export_compact(model, "models/ctr")   # models/ctr/1
    # then, with TensorFlow only:
    serve = tf.saved_model.load(r.path).signatures["serving_default"]
    # or as after Keras' model.export(): the model's own inputs in, its outputs out
    predictions = tf.saved_model.load(r.path).serve(inputs)
    ```
    """
    if tf.distribute.has_strategy():  # plain variables and a plain verification load, no collective
        return _utils.outside_strategy(export_compact, **locals())
    checked = check_options(export_dir=export_dir, version=version, overwrite=overwrite, verify=verify, atol=atol,
                            verbose=verbose, value_layout=value_layout, value_read=value_read,
                            jit_compile=jit_compile, table_dtype=table_dtype, on_invalid_id=on_invalid_id, fold=fold,
                            value_dense_fields=value_dense_fields, warmup_batch_sizes=warmup_batch_sizes,
                            example_signature=example_signature)
    export_dir, version, atol = checked["export_dir"], checked["version"], checked["atol"]
    warmup_batch_sizes = checked["warmup_batch_sizes"]
    layers = find_searchable_layers(model)  # `model` must be a Keras model or layer
    sample_inputs = signature.sample_from(sample_inputs)  # a dataset: its first batch
    layout = signature.input_layout(model, input_signature, sample_inputs)
    reference = None  # the model's outputs on the sample, computed once: the verification compares with them
    if sample_inputs is not None:  # wrong names, row counts or ids fail now, not after the compaction
        named = signature.named_sample(layout, sample_inputs)
        if checked["verify"]:  # unverified, the sample is not used (the warmup requests are generated ids)
            reference = _check_model_runs(model, layout, named)
    # `serving_tf_example`'s features (an input no tf.train.Example feature can hold fails now)
    features = signature.example_features(layout.serving_specs(tf.int64)) if example_signature else None
    auto = version == "auto"
    target = writer.resolve(export_dir, version, overwrite)

    # 1. compact tables, field by field from the variables
    compacted = {
        layer: compact_layer(layer, value_layout=value_layout, value_read=value_read, jit_compile=jit_compile,
                             table_dtype=table_dtype, on_invalid_id=on_invalid_id,
                             value_dense_fields=value_dense_fields)
        for layer in layers
    }
    # 2. folds, and the serving function traced per signature
    # every graph network runs through the fold executor (no per-input casts where
    # none are needed); with fold=False or nothing to fold the plan only runs it
    plan, report = fold_lib.plan(model, compacted if fold else {}, fold_lib.FoldReport())
    for layer in compacted:
        if layer.name not in report.layers:
            report.add(layer.name, reason="folding is off (fold=False)" if not fold else "not reached by a foldable Dense")
        if on_invalid_id == "unchecked" and report.layers[layer.name]["id_check"] == "on_invalid_id":
            report.leave_out_id_check(layer.name, "on_invalid_id='unchecked'")
    # fields of fewer ids than kept columns, read only by folded Dense layers: stored and served in
    # the basis of their rows, the basis multiplied into the kernel rows
    fold_lib.fold_ranks(plan, compacted, report)

    returned = []  # the model's output structure (a dict, a list, one tensor), seen when `serve` is traced

    def serve(named):
        if plan is not None:
            outputs = fold_lib.run(plan, layout.model_inputs(named, cast=False))
        else:  # a subclassed model: its call takes the model's dtypes
            outputs = model(layout.model_inputs(named), training=False)
        returned[:] = [tf.nest.map_structure(lambda _: None, outputs)]
        return signature.named_outputs(model, outputs)

    signatures = {signature.DEFAULT_SIGNATURE: layout.serving_specs(tf.int64)}
    if layout.has_integer_inputs:
        signatures[signature.INT32_SIGNATURE] = layout.serving_specs(tf.int32)

    def serve_examples(examples):  # parsed int64 / float32 / bytes features as `serving_default` takes them
        specs = signatures[signature.DEFAULT_SIGNATURE]
        return serve({n: tf.cast(v, specs[n].dtype) for n, v in tf.io.parse_example(examples, features).items()})

    with _serving(compacted):
        concrete = {
            name: tf.function(serve, input_signature=[specs], autograph=False).get_concrete_function()
            for name, specs in signatures.items()
        }
        if example_signature:
            examples = tf.TensorSpec([None], tf.string, name=signature.EXAMPLES_INPUT)
            concrete[signature.EXAMPLE_SIGNATURE] = tf.function(
                serve_examples, input_signature=[examples], autograph=False).get_concrete_function()
    default = concrete[signature.DEFAULT_SIGNATURE]
    # TF Serving's Regress / Classify API signatures on `serving_tf_example`'s graph (added after the save)
    apis = []
    if example_signature:
        example_outputs = concrete[signature.EXAMPLE_SIGNATURE].structured_outputs
        apis = serving_apis.plan({n: tf.TensorSpec(t.shape, t.dtype) for n, t in example_outputs.items()})

    def serve_model(inputs):  # Keras' `serve` endpoint: `serving_default`'s function, called (stored once)
        named = {n: signature.to_dtype(v, tf.int64) if v.dtype.is_integer else v
                 for n, v in layout.named_inputs(inputs).items()}
        return signature.structured_outputs(model, returned[0], default(named))

    serve_outputs = tf.nest.flatten(signature.structured_outputs(model, returned[0], {
        n: n for n in default.structured_outputs}))  # names as the leaves of `serve`'s output structure

    compact_vars = [v for c in compacted.values() for v in c.variables]
    folded_vars = plan.variables if plan is not None else []
    own = {id(v) for v in compact_vars + folded_vars}
    captured, seen = [], set()
    for fn in concrete.values():
        for v in fn.variables:
            if id(v) not in seen and id(v) not in own:
                seen.add(id(v))
                captured.append(v)
    full_tables = {id(_compat.tf_variable(layer.embedding_variable)) for layer in compacted}
    leaked = [v.name for v in captured if id(v) in full_tables]
    if leaked:
        raise ExportError(
            f"the serving graph still reads full tables {leaked}: something other than the "
            "searchable layer uses them (a shared weight?); refusing to ship them."
        )
    module = tf.Module()
    # every compact table (a resource gather can capture its variable without
    # listing it in `concrete.variables`, so the captured list is not enough)
    setattr(module, TABLES_ATTRIBUTE, list(compact_vars))
    module.folded_kernels = list(folded_vars)
    module.model_variables = captured
    # lookup tables (StringLookup, IntegerLookup, hashing tables, a head layout's row index) the graph reads
    module.resources = _layer_resources(model) + [r for c in compacted.values() for r in c.resources]
    module.serve = tf.function(serve_model, input_signature=[layout.model_specs()], autograph=False)

    summary = dimension_summary(layers) if layers else {"params_before": 0, "params_after": 0, "kept_fraction": 1.0, "layers": {}}
    searched = any(not layer.dimension_mask().is_full for layer in layers)
    native = [l.name for l in _utils.flatten_layers(model) if type(l).__name__ == "MixedDimensionEmbedding"]
    if not searched and native:
        logger.info("export_compact: model '%s' has natively mixed-dimension tables %s; exported as they are.",
                    model.name, native)
    elif not searched:
        logger.warning(
            "export_compact: model '%s' has %s; exporting full-size tables.",
            model.name,
            "no searchable layer" if not layers else "not been searched (every dimension is kept)",
        )

    while True:
        tmp = writer.temporary_folder(target)
        try:
            result = _write(tmp, target, module, concrete, compacted, layout, model, summary, searched, report,
                            sample_inputs, verify, atol, table_dtype, on_invalid_id, layers, signatures,
                            features, warmup_batch_sizes, serve_outputs, apis, reference)
            path = writer.move_into_place(tmp, target)
            break
        except FileExistsError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not auto:
                raise
            target = writer.resolve(export_dir, "auto", False)  # another export took the version: next one
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    result.path = path
    msg = (
        f"Exported to {path}: embedding tables {result.embedding_bytes:,} B "
        f"({result.kept_params:,} of {result.full_params:,} params), all variables "
        f"{result.variable_bytes:,} B"
        + (f", max |served - trained| = {result.max_abs_diff:.2e}" if result.max_abs_diff is not None else "")
    )
    logger.info(msg)
    if verbose:
        print(msg)
    return result


def _write(tmp, target, module, concrete, compacted, layout, model, summary, searched, report, sample_inputs,
           verify, atol, table_dtype, on_invalid_id, layers, signature_specs, features,
           warmup_batch_sizes, serve_outputs, apis, reference) -> ExportResult:
    tf.saved_model.save(module, tmp, signatures=concrete)
    serving_apis.add_to_saved_model(tmp, signature.EXAMPLE_SIGNATURE, signature.EXAMPLES_INPUT, apis)
    # the warmup requests' rows are the verification's, replayed there; unverified (verify=False), generated
    # ids valid for every field rather than a sample nothing checks: a request the server cannot run fails its load
    named = _verification_inputs(layout, sample_inputs if verify else None, layers)
    served = _signature_inputs(named, signature_specs, features)
    requests = warmup.requests(served, warmup_batch_sizes)
    if requests:
        warmup.write(tmp, requests)
    var_bytes = writer.saved_variable_bytes(tmp)
    emb_bytes = sum(b for k, b in var_bytes.items() if k.startswith(TABLES_ATTRIBUTE + "/"))
    tracked = getattr(module, TABLES_ATTRIBUTE) + module.folded_kernels + module.model_variables
    tracked_bytes = sum(int(np.prod(v.shape)) * v.dtype.size for v in tracked)
    if sum(var_bytes.values()) != tracked_bytes:
        raise ExportError(f"the SavedModel stores {sum(var_bytes.values())} variable bytes, expected {tracked_bytes}.")
    kept = summary["params_after"]
    expected_bytes = sum(c.nbytes for c in compacted.values())
    if table_dtype == "float32" and any(
        c.nbytes != 4 * (layer.dimension_mask().kept_params - c.lookup.rank_saved_params + c.lookup.padding_params)
        for layer, c in compacted.items() if c.lookup.granularity == "field"
    ):
        raise ExportError("a per-field compact table holds more than its kept parameters and padding.")
    if emb_bytes != expected_bytes:
        raise ExportError(f"embedding bytes {emb_bytes} != the {expected_bytes} the compact layout holds.")
    max_diff = precision_diff = tolerance = None
    if verify:
        max_diff, precision_diff, tolerance = _verify(model, tmp, layout, named, served, atol, compacted,
                                                      table_dtype, requests, apis, reference)
    disk = writer.disk_bytes(tmp)
    result = ExportResult(
        path=target.path,
        searched=searched,
        kept_params=int(kept),
        full_params=int(summary["params_before"]),
        embedding_bytes=int(emb_bytes),
        embedding_overhead=float(emb_bytes / (4 * kept)) if kept else 1.0,
        embedding_padding_bytes=int(sum(c.lookup.padding_params for c in compacted.values())
                                    * quantize.itemsize(table_dtype)),
        variable_bytes=int(sum(var_bytes.values())),
        variables_file_bytes=sum(
            os.path.getsize(os.path.join(tmp, "variables", f))
            for f in os.listdir(os.path.join(tmp, "variables")) if f.startswith("variables.data")
        ),
        max_abs_diff=max_diff,
        inputs={n: {"dtype": s.dtype.name, "shape": s.shape.as_list()}
                for n, s in layout.serving_specs(tf.int64).items()},
        outputs=list(concrete[signature.DEFAULT_SIGNATURE].structured_outputs),
        layouts={layer.name: c.lookup.layout for layer, c in compacted.items()},
        table_dtype=table_dtype,
        precision_max_abs_diff=precision_diff,
        verified_tolerance=tolerance,
        base_path=target.base if target.version is not None else None,
        version=target.version,
        signatures=list(concrete) + [a.name for a in apis],
        serving_apis=[a.to_json() for a in apis],
        on_invalid_id=on_invalid_id,
        warmup_requests=len(requests),
        bytes={"embedding_tables": int(emb_bytes), "other_variables": int(sum(var_bytes.values()) - emb_bytes), **disk},
        folds=report.to_json(),
        dense_fields={layer.name: c.lookup.dense_fields for layer, c in compacted.items() if c.lookup.dense_fields},
        embedding_rank_folded_bytes=int(sum(c.lookup.rank_saved_params for c in compacted.values())
                                        * quantize.itemsize(table_dtype)),
        serve_outputs=serve_outputs,
    )
    with open(os.path.join(tmp, REPORT_FILE), "w") as fh:
        json.dump({"export": result.to_json(), **summary}, fh, indent=2)
    writer.publish_permissions(tmp)
    return result


# Machine epsilon of the 16-bit float compute dtypes (`np.finfo(...).eps`), and how many of them,
# at the predictions' scale, two faithful runs of one mixed-precision model may differ by: about
# one (Keras' own `model.export()` as much as ours; numbers in the commit that added this), the
# factor 4 is the margin. Grappler fuses MatMul + BiasAdd + activation into one op that rounds
# once where the eager call rounds after each op (docs/guides/deployment.md, "Mixed precision").
LOW_PRECISION_EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7}
LOW_PRECISION_EPS_FACTOR = 4.0


def low_precision_dtype(model: Any) -> str | None:
    """The narrowest float dtype any layer of `model` computes in, if float16 or bfloat16."""
    found = {str(layer.compute_dtype) for layer in _utils.flatten_layers(model)}
    for name in ("bfloat16", "float16"):  # the coarser first
        if name in found:
            return name
    return None


def verification_tolerance(atol: float, compute_dtype: str | None, expected: dict) -> float:
    """The largest |served - model| the verification allows.

    `atol` for a model computing in float32; for one with a layer computing in
    float16 or bfloat16 (a mixed-precision policy), at least
    `LOW_PRECISION_EPS_FACTOR` x that dtype's machine epsilon x max(1, the
    largest |prediction|): the served graph and the model's own call round
    differently (as Keras' own export does), by about one epsilon.

    >>> verification_tolerance(1e-5, None, {"y": np.array([0.9])})
    1e-05
    >>> verification_tolerance(1e-5, "bfloat16", {"y": np.array([-3.0, 0.5])})
    0.09375
    """
    if compute_dtype is None:
        return float(atol)
    scale = max([1.0] + [float(np.max(np.abs(np.asarray(v, np.float64)), initial=0.0)) for v in expected.values()])
    return max(float(atol), LOW_PRECISION_EPS_FACTOR * LOW_PRECISION_EPS[compute_dtype] * scale)


def _verification_inputs(layout, sample_inputs, layers) -> dict:
    """The inputs the export is verified on (and its warmup requests' rows): the sample's, or
    64 generated rows with ids valid for every field."""
    if sample_inputs is None:
        low = min((min(layer.field_vocab_sizes) for layer in layers), default=2)
        return signature.synthesize_inputs(layout.specs, low)
    return signature.named_sample(layout, sample_inputs)


def _signature_inputs(named: dict, specs: dict, features: dict | None) -> dict:
    """The verification inputs as each signature takes them: signature name -> input name ->
    array in that signature's dtypes (`specs`), and for `serving_tf_example` (when `features`)
    the rows as serialized `tf.train.Example`s."""
    out = {name: {n: np.asarray(named[n]) if s.dtype == tf.string else np.asarray(named[n]).astype(
        s.dtype.as_numpy_dtype) for n, s in signature_specs.items()} for name, signature_specs in specs.items()}
    if features is not None:
        out[signature.EXAMPLE_SIGNATURE] = {signature.EXAMPLES_INPUT: signature.to_examples(named, features)}
    return out


def _model_outputs(model, layout, named: dict) -> dict:
    """The model's outputs on `named` inputs, by output name, as numpy."""
    tensors = {n: tf.convert_to_tensor(v) for n, v in named.items()}
    out = signature.named_outputs(model, model(layout.model_inputs(tensors), training=False))
    return {k: _utils.to_numpy(v) for k, v in out.items()}


def _check_model_runs(model, layout, named: dict) -> dict:
    """The model's outputs on `sample_inputs` (`_model_outputs`), which it must run on: an id outside its
    field's vocabulary is refused naming the argument, before the compaction (the layer's own message
    says which layer and vocabulary)."""
    try:
        return _model_outputs(model, layout, named)
    except tf.errors.InvalidArgumentError as e:
        said = re.sub(r"\x1b\[[0-9;]*m", "", e.message).split("Arguments received by")[0].strip()
        found = re.search(r'Summarized data: b"(.*?)"', said)  # an Assert's message: the layer's own words
        said = found.group(1) if found else said
        raise ValueError(f"`sample_inputs`: the model cannot run on them: {said[:800]}") from None


def _verify(model, saved_dir, layout, named, served, atol, compacted, table_dtype, requests, apis,
            reference=None) -> tuple:
    """`(max |served - model|, max |model at stored precision - model|, the tolerance applied)`
    over every signature (`served`: each one's inputs, `_signature_inputs`), over the warmup
    requests read back from the export's file, and over the Regress / Classify API signatures
    (`apis`), run on `serving_tf_example`'s examples as TF Serving runs them (`serving_apis.run`).

    For float16 / int8 exports the model is run on exactly the stored values
    (`CompactLayer.stored_values`), so that the served predictions are compared
    with what they must equal, and the precision's own effect is measured apart.
    `reference`: the model's outputs on `named` when already computed (`_check_model_runs`).
    """
    tensors = {n: tf.convert_to_tensor(v) for n, v in named.items()}

    def run_model():
        return _model_outputs(model, layout, named)

    expected = reference if reference is not None else run_model()
    precision_diff = None
    if table_dtype != "float32":
        with contextlib.ExitStack() as stack:
            for c in compacted.values():
                stack.enter_context(c.stored_values())
            at_precision = run_model()
        precision_diff = max(float(np.max(np.abs(np.asarray(at_precision[k], np.float64)
                                                 - np.asarray(expected[k], np.float64)), initial=0.0))
                             for k in expected)
        expected = at_precision
    worst = 0.0
    if apis:  # first: the session holding its own copy of the tables is closed before the TF2 load
        try:
            api_out = serving_apis.run(saved_dir, apis, served[signature.EXAMPLE_SIGNATURE][signature.EXAMPLES_INPUT])
        except ValueError as e:  # a signature or an output TF Serving would refuse
            raise ExportError(str(e)) from e
        for api in apis:
            value = np.asarray(expected[api.output])
            diff = np.asarray(api_out[api.name], np.float64) - value.reshape(api_out[api.name].shape)
            worst = max(worst, float(np.max(np.abs(diff), initial=0.0)))
    loaded = tf.saved_model.load(saved_dir)

    def compare(got, rows=None):
        nonlocal worst
        for key, value in expected.items():
            if key not in got:
                raise ExportError(f"the export lacks output {key!r}; it has {sorted(got)}.")
            value = np.asarray(value)[rows] if rows is not None else value
            diff = np.asarray(value, np.float64) - np.asarray(got[key].numpy(), np.float64)
            worst = max(worst, float(np.max(np.abs(diff), initial=0.0)))

    for name, inputs in served.items():
        compare(loaded.signatures[name](**{n: tf.constant(v) for n, v in inputs.items()}))
    compare(signature.named_outputs(model, loaded.serve(layout.endpoint_inputs(tensors))))  # Keras' endpoint
    _replay_warmup(loaded, saved_dir, requests, compare)
    compute_dtype = low_precision_dtype(model)
    tolerance = verification_tolerance(atol, compute_dtype, expected)
    if not worst <= tolerance:
        allowed = f"atol={atol}" if compute_dtype is None else (
            f"{tolerance:.3g} (the model computes in {compute_dtype}: the larger of atol={atol} and "
            f"{LOW_PRECISION_EPS_FACTOR:g} x its epsilon x max(1, largest |prediction|))")
        raise ExportError(f"the export predicts differently from the model: max |diff| = {worst} > {allowed}.")
    return worst, precision_diff, tolerance


def _replay_warmup(loaded, saved_dir, requests, compare) -> None:
    """Read the warmup file back and run each record as TF Serving's warmup does (the signature
    it names, exactly its inputs), checking it holds the requests meant and `compare`-ing
    what they predict with the model's predictions of their rows."""
    records = warmup.read(saved_dir)
    if len(records) != len(requests):
        raise ExportError(f"the warmup file holds {len(records)} records, expected {len(requests)}.")
    for (name, inputs), meant in zip(records, requests):
        fn = loaded.signatures.get(name)
        specs = fn.structured_input_signature[1] if fn is not None else {}
        if name != meant.signature or sorted(inputs) != sorted(specs) or any(
                inputs[k].dtype != meant.inputs[k].dtype or not np.array_equal(inputs[k], meant.inputs[k])
                for k in inputs):
            raise ExportError(f"a warmup record for signature {name!r} with inputs {sorted(inputs)} does not hold "
                              f"the request meant for {meant.signature!r} with inputs {sorted(meant.inputs)}.")
        compare(fn(**{k: tf.constant(v, specs[k].dtype) for k, v in inputs.items()}), meant.rows)
