"""``svdlora aggregate``: merge PEFT LoRA adapters of different ranks into one adapter, the command line of
:func:`svdlora_pl.aggregation.merge.aggregate` (``svdlora aggregate --help`` lists its options)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from svdlora_pl.aggregation.merge import REPORT_NAME, aggregate
from svdlora_pl.aggregation.report import format_metric
from svdlora_pl.cli.tool import run_tool

log = logging.getLogger(__name__)


def print_summary(report: dict[str, Any], options: dict[str, Any]) -> None:
    """One line per written adapter (rank, worst relative error), and a warning after an inexact zeropad."""
    output_dir = options["output_dir"]
    for name, entry in report["adapters"].items():
        summary = entry["summary"]
        error = f"max relative error {format_metric(summary['max_relative_error'])}"
        if name == ".":
            print(f"wrote {output_dir} ({report['method']}, ranks {summary['ranks']}, {error})")
        else:
            print(f"wrote {os.path.join(output_dir, name)} ({error})")
    if report["method"] == "zeropad":
        log.warning(
            "zeropad is inexact: see %s for the per-module error", os.path.join(output_dir, f"{REPORT_NAME}.txt")
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``svdlora aggregate``."""
    return run_tool("aggregate", aggregate, argv, summary=print_summary)
