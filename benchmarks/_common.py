"""Shared helpers of the benchmark scripts: find ../shared/data, results caches, timing, memory.

Run the scripts from a checkout with the package installed (`pip install -e .`):
`python benchmarks/<script>.py` puts this folder on `sys.path`, nothing else is patched.
"""

import ctypes
import gc
import os
import statistics
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
DOCS = os.path.join(ROOT, "docs", "results")  # generated pages and plots
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


def add_results_arguments(p, cache: str, page: str, plot: str | None = None) -> None:
    """The options of a script that caches its measurements and writes a results page (and a plot)
    under docs/results/ from them: --cache, --out, --plot, --report-only, --redo."""
    p.add_argument("--cache", default=cache)
    p.add_argument("--out", default=os.path.join(DOCS, page))
    if plot is not None:
        p.add_argument("--plot", default=os.path.join(DOCS, plot))
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--redo", action="store_true", help="measure again what the cache holds")


def targets_table(targets) -> list[str]:
    """The markdown lines of a page's targets: `(target, met, measured)` rows under one header."""
    return ["| target | met | measured |", "|---|---|---|",
            *[f"| {t} | {'yes' if ok else '**no**'} | {m} |" for t, ok, m in targets]]


def keras_export(model, path: str) -> None:
    """`model.export(path)` (the baselines' SavedModel): `keras_embdim._compat.keras_export`."""
    from keras_embdim import _compat

    _compat.keras_export(model, path)


def timed(fn, reps: int) -> float:
    """Median wall time of `reps` calls of `fn`."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def git_commit() -> str:
    """The checkout's short commit, stored with every cached result."""
    import subprocess

    try:
        out = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip() or "?"
    except OSError:
        return "?"


def load_jsonl(path: str) -> list:
    """The records of a results cache (one JSON object per line); [] if there is none yet."""
    import json

    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def save_jsonl(path: str, records: list) -> None:
    """Rewrite a results cache (a temporary file moved into place: a crash keeps the old one)."""
    import json

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def rss_bytes() -> int:
    """This process' resident memory now."""
    return _status("VmRSS")


def peak_rss_bytes() -> int:
    """This process' resident high-water mark (since start or the last `reset_peak_rss`)."""
    return _status("VmHWM")


def settle_heap() -> None:
    """Collect garbage and give the allocator's free memory back to the system (glibc's
    `malloc_trim`, where there is one), so that a peak measured from here counts the pages the next
    step needs, not how much of its memory a previous step happened to leave free for reuse (the
    same export repeated in one process moves by more than a table without this: the commit
    message of 170cc2e)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset the high-water mark to the current RSS (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False
