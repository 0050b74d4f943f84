"""`DimensionExporter`: export the compacted model when training ends."""

from __future__ import annotations

import os
from typing import Any, Callable

from keras_embdim import _compat
from keras_embdim._compat import keras
from keras_embdim.export import ExportResult, export_compact
from keras_embdim.export import signature, warmup, writer
from keras_embdim.export.exporter import check_options


class DimensionExporter(keras.callbacks.Callback):
    """Writes a compacted SavedModel for TF Serving at the end of `fit`.

    Put it after the search callback in `callbacks=[...]`. See
    `keras_embdim.export_compact` for what is written and verified.

    Args:
        export_dir: TF Serving's model base path; the export goes to
            `export_dir/<version>/` (with `version=None`: into `export_dir`).
        version: `"auto"` (default: the next free version number), a positive
            integer, or None.
        overwrite: replace an existing export (or an empty folder) at the
            target once the new one verified; a file or a folder of other files
            is refused (`"auto"` versions never overwrite).
        sample_inputs: inputs to verify the export on (default: generated), or a
            batched `tf.data.Dataset` (its first batch's inputs).
        input_signature: for models without symbolic inputs.
        verify: compare the export with the model before moving it into place.
        atol: largest allowed absolute difference in that comparison for a model computing in
            float32; a model with a layer computing in float16 or bfloat16 (a
            mixed-precision policy) is allowed at least 4 x that dtype's epsilon x
            max(1, largest |prediction|), the rounding by which two faithful runs
            of it differ (`ExportResult.verified_tolerance` says what was applied).
        verbose: print where the export went.
        value_layout: per-value layers: the packed layout (`export_compact`).
        value_read: per-value layers: `"auto"`, `"prefix"` or `"ranged"` row reads (`export_compact`).
        jit_compile: XLA-compile the lookups (`export_compact`).
        table_dtype: `"float32"`, `"float16"` or `"int8"` storage (`export_compact`).
        on_invalid_id: `"error"`, `"zero"` or `"unchecked"` for served ids outside
            a field's vocabulary (`export_compact`).
        fold: compute Dense layers fed by searched embeddings from the kept
            values only (`export_compact`).
        value_dense_fields: per-value layers: store fields whose values nearly
            all keep the field's widest size in per-field tables (`export_compact`).
        warmup_batch_sizes: the batch sizes of the TF Serving warmup requests
            written with the export (default `(1, 16)`; `()`: none; `export_compact`).
        example_signature: also serve `serving_tf_example`, taking serialized
            `tf.train.Example`s, and the signatures of TF Serving's Regress /
            Classify APIs on it (`export_compact`).
        submodel: export a part of the trained model instead of all of it: the
            name of an attribute of the model (`"query_model"`, the query tower
            of a TFRS retrieval model) or a callable `model -> keras.Model`.
            Default: the model `fit` trains.

    Example:

    ```python
    model.fit(train, epochs=3, callbacks=[
        ked.SingleShotPruner(budget=0.1), ked.DimensionExporter("models/ctr")])
    # TF Serving: --model_base_path=$PWD/models/ctr (the export is models/ctr/1)
    ```
    """

    def __init__(
        self,
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
        submodel: str | Callable[[Any], Any] | None = None,
    ):
        super().__init__()
        if submodel is not None and not (isinstance(submodel, str) and submodel) and not callable(submodel):
            raise ValueError(
                "`submodel` must be the name of a model attribute (e.g. 'query_model') or a callable "
                f"model -> keras.Model; received submodel={submodel!r}."
            )
        self.submodel = submodel
        # the same checks as `export_compact`'s, now: a bad option fails before any training
        options = check_options(export_dir=export_dir, version=version, overwrite=overwrite, verify=verify,
                                atol=atol, verbose=verbose, value_layout=value_layout, value_read=value_read,
                                jit_compile=jit_compile, table_dtype=table_dtype, on_invalid_id=on_invalid_id,
                                fold=fold, value_dense_fields=value_dense_fields,
                                warmup_batch_sizes=warmup_batch_sizes, example_signature=example_signature)
        self.export_dir = options.pop("export_dir")
        self.options = options  # every other option, as `export_compact` takes it
        self.sample_inputs = sample_inputs
        self.input_signature = input_signature
        self.result: ExportResult | None = None

    def _target(self) -> Any:
        """The model to export: the trained one or the part `submodel` names."""
        if self.submodel is None:
            return self.model
        if isinstance(self.submodel, str):
            target = getattr(self.model, self.submodel, None)
            if target is None:
                raise ValueError(
                    f"DimensionExporter: model '{self.model.name}' has no attribute "
                    f"submodel={self.submodel!r} to export."
                )
        else:
            target = self.submodel(self.model)
        if not isinstance(target, keras.layers.Layer) or not callable(target):
            raise ValueError(
                f"DimensionExporter: submodel={self.submodel!r} gave {type(target).__name__}, "
                "expected a keras.Model (or layer) to export."
            )
        return target

    def on_train_begin(self, logs=None):
        # Fail fast, before hours of training, if the export could not be written.
        try:
            writer.resolve(self.export_dir, self.options["version"], self.options["overwrite"], create=False)
        except (FileExistsError, PermissionError) as e:
            raise type(e)(f"DimensionExporter: {e} Nothing was trained.") from None
        target = self._target()  # a wrong `submodel` fails now, not after training
        if self.sample_inputs is not None:  # so do sample inputs of unequal rows, or wrong names
            sample = signature.sample_from(self.sample_inputs)
            signature.check_sample_rows(sample)
            if self.input_signature is not None or _compat.input_structure(target) is not None:
                # the names the export will take are known (a subclassed model's only once it ran)
                signature.named_sample(signature.input_layout(target, self.input_signature, sample), sample)

    def on_train_end(self, logs=None):
        self.result = export_compact(self._target(), self.export_dir, sample_inputs=self.sample_inputs,
                                     input_signature=self.input_signature, **self.options)
