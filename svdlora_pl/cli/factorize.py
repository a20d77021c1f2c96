"""``svdlora factorize``: rank-r SVD factors of per-module updates ΔW with the SVD analysis of their spectra, the
command line of :func:`svdlora_pl.teacher.factorize.factorize` (``svdlora factorize --help`` lists its options)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from svdlora_pl.cli.tool import run_tool
from svdlora_pl.teacher.factorize import factorize


def print_summary(analysis: dict[str, Any], options: dict[str, Any]) -> None:
    """Where the files went, the mean energy and error, and the low-rank verdict."""
    s = analysis["summary"]
    print(
        f"wrote {options['output_dir']} (rank {analysis['rank']}, {s['modules']} modules, "
        f"mean energy {s['energy_ratio']['mean']:.4f}, mean relative error {s['relative_error']['mean']:.4f})"
    )
    print(s["low_rank_hypothesis"]["reason"])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``svdlora factorize``: parse, factorize, print the summary."""
    return run_tool("factorize", factorize, argv, summary=print_summary)
