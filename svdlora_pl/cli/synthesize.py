"""``svdlora synthesize``: a rank-R teacher update from a PEFT LoRA adapter or a full fine-tune, the command line of
:func:`svdlora_pl.teacher.synthesize.synthesize` (``svdlora synthesize --help`` lists its options)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from svdlora_pl.cli.tool import run_tool
from svdlora_pl.teacher.synthesize import PLOT_NAME, REPORT_NAME, delta_name, full_delta_name, synthesize


def print_summary(report: dict[str, Any], options: dict[str, Any]) -> None:
    """The energy split in one line, then one line per written file."""
    s, rank = report["summary"], report["provenance"]["target_rank"]
    if "base" in report["provenance"]:
        print(
            f"kept the rank-{rank} truncation of the full fine-tune's ΔW for {s['modules']} modules "
            f"(energy kept {s['overall_kept_fraction']:.3f} overall, {s['mean_kept_fraction']:.3f} per module on "
            f"average, least {s['min_kept_fraction']['kept_fraction']:.3f})"
        )
        teacher = full_delta_name(rank)
    else:
        print(
            f"synthesized rank-{rank} teacher for {s['modules']} modules (LoRA ranks {s['lora_ranks']}; "
            f"energy kept {s['overall_kept_fraction']:.3f}, added {s['overall_added_fraction']:.3f}, "
            f"noise {s['overall_noise_fraction']:.3f})"
        )
        teacher = delta_name(rank)
    for name in (teacher, f"{REPORT_NAME}.json", f"{REPORT_NAME}.txt", PLOT_NAME):
        print(f"wrote {Path(options['output_dir']) / name}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``svdlora synthesize``: parse, synthesize, print the summary."""
    return run_tool("synthesize", synthesize, argv, summary=print_summary)
