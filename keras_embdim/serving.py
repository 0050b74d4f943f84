"""Checking an export in a fresh process that cannot import keras_embdim."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

SERVE_CHECK = os.path.join(os.path.dirname(__file__), "tools", "serve_check.py")


def check_in_fresh_process(export_dir: str, inputs: dict, expected: dict, atol: float = 1e-5, timeout: int = 300) -> dict:
    """Run `tools/serve_check.py` in a new Python process and return its report.

    Args:
        export_dir: a SavedModel folder.
        inputs: signature input name -> array.
        expected: signature output name -> array the model predicted.

    Raises:
        AssertionError: if the served predictions differ by more than `atol`
            (the report is in the message) or the process failed.
    """
    with tempfile.TemporaryDirectory() as d:
        fin, fexp = os.path.join(d, "inputs.npz"), os.path.join(d, "expected.npz")
        np.savez(fin, **{k: np.asarray(v) for k, v in inputs.items()})
        # float outputs as float64: a bfloat16 array (a mixed-precision model's) has no .npz form
        np.savez(fexp, **{k: _as_saveable(v) for k, v in expected.items()})
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        proc = subprocess.run(
            [sys.executable, SERVE_CHECK, export_dir, fin, fexp, "--atol", str(atol)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=d,
            env=env,
        )
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise AssertionError(f"serve_check failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    report = json.loads(lines[-1])
    if proc.returncode != 0:
        raise AssertionError(f"served predictions differ: {report}")
    return report


def _as_saveable(value) -> np.ndarray:
    """Float arrays as float64 (bfloat16 has no .npz form; float16 loses nothing); others as they are."""
    value = np.asarray(value)
    return value.astype(np.float64) if value.dtype.kind == "f" or value.dtype.name == "bfloat16" else value
