"""Compact, fold, write and verify SavedModels for TF Serving.

- `compact`: a searched layer's table -> the tables that ship (field by field
  from the variable);
- `lookup`: the serving lookups of those tables (standard TF ops only);
- `layouts`: per-value packed layouts; `quantize`: float16 / int8 storage;
- `fold`: Dense layers computed from kept values only;
- `signature`: named inputs, stable output names, int64 / int32 ids;
- `serving_apis`: the signatures of TF Serving's Regress / Classify APIs;
- `writer`: versions, permissions, atomic moves, bytes by part;
- `exporter`: `export_compact`, which puts them together.
"""

from keras_embdim.export.exporter import REPORT_FILE, TABLES_ATTRIBUTE, ExportError, ExportResult, export_compact
from keras_embdim.export.writer import saved_variable_bytes

__all__ = ["REPORT_FILE", "TABLES_ATTRIBUTE", "ExportError", "ExportResult", "export_compact", "saved_variable_bytes"]
