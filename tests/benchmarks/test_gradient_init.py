"""benchmarks/gradient_init.py runs and prints its three figures (a short run; the numbers are README's)."""

from __future__ import annotations

import subprocess
import sys

from helpers import ROOT


def test_prints_the_three_figures():
    result = subprocess.run(
        [sys.executable, "benchmarks/gradient_init.py", "--batches", "2", "--batch-size", "2", "--repeats", "1"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "1. tiny model, 2 batches of 2" in out and "x (target <= 1.3x)" in out
    assert "21.5x less" in out and "43.1x less" in out  # one 7B decoder layer: deterministic shapes, exact bytes
    assert "initialization, sketch: 21.40 GB (fits" in out and "initialization, exact: 49.44 GB (does NOT fit" in out
