"""Generate docs/reference/api.md from the docstrings of keras_embdim's public API.

    python docs/reference/gen_api.py            # rewrite docs/reference/api.md
    python docs/reference/gen_api.py --check    # exit 1 if docs/reference/api.md is out of date

The reference lists every name in `keras_embdim.__all__` and the public names
of `keras_embdim.data`, `keras_embdim.models` and `keras_embdim.plots`: the
signature, the docstring, and for classes the public methods and properties
they define themselves (what they inherit from Keras is Keras' documentation).
`tests/test_docstrings.py` runs the check, so a changed docstring or signature
without a regenerated reference fails CI.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "api.md")

SECTIONS = [
    ("Layers", ["PrunableEmbedding", "HardMaskEmbedding", "TwinsMaskLayer", "MixedDimensionEmbedding",
                "SearchableEmbedding", "StackFields", "FieldOffsets"]),
    ("Search callbacks", ["SingleShotPruner", "HardMaskSearch", "TwinsMaskSearch", "PMEPruner",
                          "OrthogonalRegularizer", "DimensionSearchCallback", "SearchResult", "Phase",
                          "dimension_history", "ByteBudget"]),
    ("Regularizers", ["OrthogonalEmbeddingRegularizer"]),
    ("Row-sparse optimizers", ["row_sparse", "LazyAdam", "LazyAdagrad", "LazySGD"]),
    ("The methods by name", ["get_method", "Method"]),
    ("Export", ["DimensionExporter", "export_compact", "ExportResult", "ExportError"]),
    ("Converting models", ["make_searchable", "add_twins", "rebuild_mixed"]),
    ("Reports and the protocol", ["dimension_report", "dimension_summary", "format_report",
                                  "find_searchable_layers", "DimensionMask", "DimensionSearchable", "FieldLayout"]),
]
# public names that are not documented by their repr
NOT_RENDERED = {
    "keras": "`keras_embdim.keras`: the Keras the package runs on (Keras 3, or `tf_keras` under "
             "`TF_USE_LEGACY_KERAS=1`); use it to build models that mix keras_embdim's layers with Keras'.",
    "METHODS": "`keras_embdim.METHODS`: the four methods by name, see `keras_embdim.methods` below.",
}
MODULES = [("keras_embdim.methods", "The methods"), ("keras_embdim.data", "Data"),
           ("keras_embdim.models", "Model zoo"), ("keras_embdim.plots", "Plots")]


def _signature(obj) -> str:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    params = []
    for p in sig.parameters.values():
        if p.name == "self":
            continue
        text = str(p.replace(annotation=inspect.Parameter.empty))
        params.append(text)
    return "(" + ", ".join(params) + ")"


def _own_members(cls):
    """Public methods and properties defined by keras_embdim itself on `cls` or its bases."""
    out = []
    seen = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("keras_embdim"):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") or name in seen or name in ("get_config", "from_config", "build", "call"):
                continue
            if isinstance(value, property) or inspect.isfunction(value) or isinstance(value, (classmethod, staticmethod)):
                seen.add(name)
                out.append((name, value))
    return sorted(out)


def _doc(obj) -> str:
    return inspect.cleandoc(obj.__doc__) if obj.__doc__ else "(no docstring)"


def _entry(name: str, obj, level: str = "###") -> list[str]:
    lines = []
    if not callable(obj):
        return [f"{level} `{name}` = `{obj!r}`", ""]
    if inspect.isclass(obj):
        init = obj.__init__
        own = getattr(init, "__module__", "") or ""
        # a constructor inherited from Keras differs between Keras 3 and 2: not ours to document
        sig = _signature(init) if own.startswith(("keras_embdim", "dataclasses")) or own == obj.__module__ else "(...)"
        if init is object.__init__ or "Exception" in [b.__name__ for b in obj.__mro__]:
            sig = "(message)" if issubclass(obj, BaseException) else "()"
        lines.append(f"{level} `{name}{sig}`")
        lines += ["", _doc(obj), ""]
        members = _own_members(obj)
        if members:
            lines.append("Members:")
            lines.append("")
            for mname, value in members:
                if isinstance(value, property):
                    first = (_doc(value.fget) if value.fget and value.fget.__doc__ else "").split("\n")[0]
                    lines.append(f"- `{mname}` (property){': ' + first if first else ''}")
                else:
                    fn = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
                    first = _doc(fn).split("\n\n")[0].replace("\n", " ") if fn.__doc__ else ""
                    lines.append(f"- `{mname}{_signature(fn)}`{': ' + first if first else ''}")
            lines.append("")
    else:
        lines.append(f"{level} `{name}{_signature(obj)}`")
        lines += ["", _doc(obj), ""]
    return lines


def render() -> str:
    import keras_embdim as ked

    lines = [
        "# API reference",
        "",
        "Generated from the docstrings by `python docs/reference/gen_api.py` (checked in CI: a stale",
        "reference fails `tests/test_docstrings.py`). Every layer and callback is registered for",
        "Keras serialization; every layer works in Keras 3 and in Keras 2 (`tf_keras`).",
        "",
    ]
    listed = set()
    for title, names in SECTIONS:
        lines += [f"## {title}", ""]
        for n in names:
            lines += _entry(f"keras_embdim.{n}", getattr(ked, n))
            listed.add(n)
    lines += ["## Names that are not classes or functions", ""]
    lines += [f"- {text}" for text in NOT_RENDERED.values()] + [""]
    rest = [n for n in ked.__all__ if n not in listed and n not in NOT_RENDERED]
    if rest:  # every public name has its place in a section
        raise SystemExit(f"gen_api.py: public names without a section: {rest}")
    for modname, title in MODULES:
        module = sys.modules.get(modname) or __import__(modname, fromlist=["_"])
        if modname == "keras_embdim.methods":
            lines += [f"## {title} (`{modname}`)", "", _doc(module), ""]
            continue
        names = getattr(module, "__all__", None) or [
            n for n, v in vars(module).items()
            if not n.startswith("_") and (inspect.isfunction(v) or inspect.isclass(v))
            and getattr(v, "__module__", "").startswith(modname)
        ]
        lines += [f"## {title} (`{modname}`)", "", _doc(module), ""]
        for n in sorted(names):
            lines += _entry(f"{modname}.{n}", getattr(module, n))
    text = "\n".join(lines).rstrip() + "\n"
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        current = open(OUT).read() if os.path.exists(OUT) else ""
        if current != text:
            print("docs/reference/api.md is out of date: run python docs/reference/gen_api.py", file=sys.stderr)
            return 1
        return 0
    with open(OUT, "w") as fh:
        fh.write(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
