"""``svdlora experiment``: random-init LoRA, teacher, SVD factors, SVD-init LoRA and their comparison, in one command.

The options are the fields of :class:`svdlora_pl.experiment.config.ExperimentConfig` and ``--force``; the steps are
:func:`svdlora_pl.experiment.runner.run_experiment`'s. At the end the deliverables are listed with a five-line summary;
a failed fit exits with its code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from jsonargparse import ArgumentParser

from svdlora_pl.cli.tool import parse_tool_args, tool_parser
from svdlora_pl.experiment.config import ExperimentConfig

if TYPE_CHECKING:
    from svdlora_pl.experiment.runner import Layout


def parser() -> ArgumentParser:
    """The parser of ``svdlora experiment``: every :class:`ExperimentConfig` field at the root, and ``--force``."""
    parser = tool_parser("experiment", ExperimentConfig)
    parser.add_argument(
        "--force", type=bool, default=False, help="Redo every step, even those whose output is complete."
    )
    return parser


def parse(argv: Sequence[str] | None) -> tuple[ExperimentConfig, bool]:
    """The experiment configured by ``argv``, and ``--force``."""
    options = parse_tool_args(parser(), argv)
    force = options.pop("force")
    return ExperimentConfig(**options), force


def summary(comparison: dict[str, Any]) -> list[str]:
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


def print_deliverables(layout: Layout) -> None:
    """List the deliverables, then the five-line summary of the comparison."""
    comparison = json.loads(layout.comparison.read_text(encoding="utf-8"))
    print(f"\ndeliverables in {layout.root}:")
    for what, path in layout.deliverables():
        print(f"  {what:<34} {path}")
    print("\n" + "\n".join(summary(comparison)))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``svdlora experiment``: parse, run (or resume) the experiment, print the deliverables."""
    from svdlora_pl.experiment.runner import StepFailed, run_experiment

    config, force = parse(argv)
    try:
        layout = run_experiment(config, force=force)
    except StepFailed as error:
        print(f"svdlora experiment: {error}; rerun the same command to resume")
        return error.code or 1
    print_deliverables(layout)
    return 0
