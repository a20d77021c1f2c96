"""``svdlora experiment``: random-init LoRA, teacher, SVD factors, SVD-init LoRA and their comparison, in one command.

Usage::

    svdlora experiment -c configs/experiment/tiny.yaml
    svdlora experiment -c configs/experiment/tiny.yaml --output-dir experiments/run2 --force

The configuration is described in :mod:`svdlora_pl.experiment.config`, the steps in :mod:`svdlora_pl.experiment.runner`.
Rerunning the same command resumes: finished steps are skipped, an interrupted one runs again. At the end the
deliverables are listed with a five-line summary. Bad input exits 2 with one line; a failed fit exits with its code.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from svdlora_pl.cli.tool_args import ToolParser


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="svdlora experiment",
        description="Random-init vs SVD-init LoRA in one command: fit with random init, build a teacher (synthesized "
        "from that adapter, or a full fine-tune), factorize it at the LoRA rank, fit with SVDTeacherInit, compare.",
        epilog="Each step is skipped when its output is complete, so rerunning resumes an interrupted experiment; a "
        "step that runs makes the later steps run again. Every fit is an ordinary `svdlora fit` run with its own log "
        "dir and config.yaml under <output-dir>/training_results/runs/.",
    )
    parser.add_argument("-c", "--config", required=True, type=Path, help="experiment YAML (configs/experiment/)")
    parser.add_argument("--output-dir", type=Path, help="override the config's output_dir")
    parser.add_argument("--force", action="store_true", help="redo every step")
    return parser


def _summary(comparison: dict[str, Any]) -> list[str]:
    """Five lines: initial loss, initial val loss, steps to target, final loss, teacher provenance."""
    metrics = {run["label"]: run["metrics"] for run in comparison["runs"]}
    random, svd = metrics["random"], metrics["svd"]

    def pair(key: str, fmt: str = ".4f") -> str:
        a, b = random.get(key), svd.get(key)
        return f"{'n/a' if a is None else format(a, fmt)} -> {'n/a' if b is None else format(b, fmt)}"

    target = comparison["target_loss"]["value"]
    provenance = next(run["provenance"]["summary"] for run in comparison["runs"] if run["label"] == "svd")
    rows = [
        ("initial train loss", pair("initial_train_loss")),
        ("initial val loss (step 0)", pair("initial_val_loss")),
        (f"steps to train loss {target:.4f}", pair("steps_to_target", "d")),
        ("final train / val loss", f"{pair('final_train_loss')} / {pair('final_val_loss')}"),
    ]
    return [f"{name + ' (random -> svd):':<45} {value}" for name, value in rows] + [f"teacher: {provenance}"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``svdlora experiment``; bad input raises InputError (``svdlora`` prints it and exits 2)."""
    from svdlora_pl.experiment.config import load_experiment_config
    from svdlora_pl.experiment.runner import StepFailed, run_experiment

    args = build_parser().parse_args(None if argv is None else list(argv))
    config = load_experiment_config(args.config)
    output_dir = args.output_dir if args.output_dir is not None else Path(config.output_dir)
    try:
        layout = run_experiment(config, output_dir, force=args.force)
    except StepFailed as error:
        print(f"svdlora experiment: {error}; rerun the same command to resume")
        return error.code or 1
    comparison = json.loads((layout.results / "comparison.json").read_text(encoding="utf-8"))
    print(f"\ndeliverables in {output_dir}:")
    for what, path in (
        ("random-init adapter", layout.final_model("random")),
        ("teacher and its report", layout.teacher_dir),
        ("SVD factors and analysis", layout.svd_dir),
        ("SVD-init adapter", layout.final_model("svd")),
        ("comparison report", layout.report),
        ("training logs (CSV, TensorBoard)", layout.results),
    ):
        print(f"  {what:<34} {path}")
    print("\n" + "\n".join(_summary(comparison)))
    return 0
