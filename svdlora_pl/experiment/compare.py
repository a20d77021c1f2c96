"""``svdlora compare``: compare training runs (e.g. random-init vs SVD-init LoRA) from their TensorBoard logs.

Usage::

    svdlora compare runs/random/lightning_logs/version_0 runs/svd/lightning_logs/version_0 \\
        --labels random svd --output-dir training_results
    svdlora compare runs/random runs/svd --target-loss 1.2 --output-dir training_results --overwrite

Each RUN_DIR is a Lightning log dir (event files directly inside) or a directory holding exactly one such run below
it; several event files in one directory (a resumed run) are merged by step, the later wall time winning. Labels
default to the directories' names (extended by parent names until unique). The metrics (initial, final and step-0
validation loss, steps to a target loss, area under the train-loss curve), their improvement % against the first
run and the provenance read from each run's ``config.yaml`` are defined in :mod:`svdlora_pl.experiment.comparison`.

Output, written atomically (all or nothing) to ``--output-dir`` (see :mod:`svdlora_pl.experiment.comparison_report`):
``comparison.json``, ``comparison_report.txt``, ``comparison_random_vs_svd.png`` and ``training_log_<label>.csv``
per run. Bad input (a directory without event files or with several runs, a run without ``train/loss``, a label
count that differs from the run count, duplicate labels, a non-empty ``--output-dir`` without ``--overwrite``) exits
2 with one line; nothing is written then.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from svdlora_pl.cli.tool_args import ToolParser, check_output_dir


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="svdlora compare",
        description="Compare training runs from their TensorBoard logs: initial loss, step-0 validation loss, steps "
        "to a target loss, final train/val loss and area under the train-loss curve, with the improvement % of "
        "every run against the first, and each run's initializer/teacher provenance from its config.yaml.",
        epilog="Steps to target: the first step whose raw (unsmoothed) train/loss is <= the target; default target: "
        "the highest final train loss x 1.05. Area: trapezoid rule over the logged steps. Improvement: (first - "
        "other) / first x 100. Writes comparison.json, comparison_report.txt, comparison_random_vs_svd.png and "
        "training_log_<label>.csv per run into --output-dir, atomically.",
    )
    parser.add_argument(
        "run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="Lightning log dir, or a dir holding one run below"
    )
    parser.add_argument("--labels", nargs="+", metavar="LABEL", help="one name per run (default: directory names)")
    parser.add_argument("--target-loss", type=float, metavar="X", help="loss for 'steps to target' (default above)")
    parser.add_argument("--output-dir", type=Path, required=True, help="directory to write (replaced atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Validate, read every run, compare and write; returns the comparison dict. Raises InputError for bad input."""
    from svdlora_pl.experiment.comparison import build_comparison, load_runs
    from svdlora_pl.experiment.comparison_report import write_comparison
    from svdlora_pl.io import atomic_directory

    check_output_dir(args.output_dir, args.run_dirs, args.overwrite)
    runs = load_runs(args.run_dirs, args.labels)
    comparison = build_comparison(runs, args.target_loss)
    with atomic_directory(args.output_dir) as staging:
        write_comparison(staging, comparison, runs)
    return comparison


def print_summary(comparison: dict[str, Any], where: object) -> None:
    """Print where the comparison went and each run's gains against the first run."""
    first = comparison["reference_run"]
    print(f"wrote {where} ({len(comparison['runs'])} runs, target loss {comparison['target_loss']['value']:.4g})")
    for label, gains in comparison["improvement_pct"].items():
        parts = [
            f"{name} {'n/a' if gains[key] is None else f'{gains[key]:+.1f}%'}"
            for key, name in (
                ("initial_train_loss", "initial loss"),
                ("steps_to_target", "steps to target"),
                ("final_train_loss", "final loss"),
            )
        ]
        print(f"{label} vs {first}: " + ", ".join(parts))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``svdlora compare``; bad input raises InputError (``svdlora`` prints it and exits 2)."""
    args = build_parser().parse_args(None if argv is None else list(argv))
    print_summary(run(args), args.output_dir)
    return 0
