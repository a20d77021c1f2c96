"""``svdlora federate``: federated LoRA with clients of different ranks on Flower's simulation engine, the command line
of :func:`svdlora_pl.federated.run.federate` (``svdlora federate --help`` lists its options; needs the ``flower``
extra)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from svdlora_pl.cli.tool import run_tool
from svdlora_pl.federated.run import federate


def print_summary(report: dict[str, Any], options: dict[str, Any]) -> None:
    """Where the run went, and its validation loss before and after."""
    output_dir = options["output_dir"]
    last = report["rounds"][-1]
    before, after = report["initial"].get("val_loss"), last.get("val_loss")
    loss = "n/a" if before is None or after is None else f"{before:.4f} -> {after:.4f}"
    print(
        f"wrote {output_dir}: {len(report['rounds'])} rounds of {report['method']}, val loss {loss}, final adapter "
        f"{report['final_adapter']}, report {os.path.join(output_dir, 'report.txt')}, "
        f"TensorBoard {os.path.join(output_dir, 'tensorboard')} ({report['wall_seconds']:.1f} s)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``svdlora federate``."""
    return run_tool("federate", federate, argv, summary=print_summary)
