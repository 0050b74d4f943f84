"""The methods' math, apart from Keras (checkable by hand and against numpy references).

- `budget`: how many parameters a budget keeps; the global ranking of
  field-dimensions under it (SSEDS, HAM); `ByteBudget`.
- `probes`: gate gradients (SSEDS) and entry importances (PME) read off training steps.
- `hard_mask`: HAM's straight-through hard mask.
- `entries`: PME's global entry selection.
- `twins`: AMTL's frequency features, twins, prefix mask and budget landing.
- `orthogonality`: HAM's orthogonal regularity of embedding columns.
- `rotation`: each field's columns on its principal axes (SSEDS `rotate=True`).
"""
