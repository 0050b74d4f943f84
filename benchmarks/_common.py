"""Shared setup of the benchmark scripts: import the checkout, find ../shared/data."""

import os
import statistics
import sys
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
DOCS = os.path.join(ROOT, "docs")
sys.path.insert(0, ROOT)
_SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))
if "KERAS_EMBDIM_DATA" not in os.environ and os.path.isdir(_SHARED):
    os.environ["KERAS_EMBDIM_DATA"] = _SHARED


def write_table(path: str, title: str, generated_by: str, header: list, rows: list, footer: tuple = ()) -> str:
    """Write a results page: title, how it was generated, one markdown table, notes."""
    lines = [f"# {title}", "", generated_by, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header), *rows]
    if footer:
        lines += ["", *footer]
    text = "\n".join(lines) + "\n"
    with open(path, "w") as fh:
        fh.write(text)
    return text


def timed(fn, reps: int) -> float:
    """Median wall time of `reps` calls of `fn`."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
