"""``svdlora experiment``: a study of LoRA initializers (arms x seeds x learning rates, teachers, report) in one
command.

The options are the fields of :class:`svdlora_pl.experiment.config.ExperimentConfig` and the run options below;
the tasks are :func:`svdlora_pl.experiment.runner.run_experiment`'s. At the end the deliverables are listed with the
report's main table; the exit code is 1 when a fit failed (the report holds what finished).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from jsonargparse import ArgumentParser

from svdlora_pl.cli.tool import parse_tool_args, tool_parser
from svdlora_pl.experiment.config import RUN_OPTIONS, ExperimentConfig

if TYPE_CHECKING:
    from svdlora_pl.experiment.runner import StudyRun


def parser() -> ArgumentParser:
    """The parser of ``svdlora experiment``: every :class:`ExperimentConfig` field at the root, and the run options."""
    parser = tool_parser("experiment", ExperimentConfig)
    for name, (kind, default, help_) in RUN_OPTIONS.items():
        parser.add_argument(f"--{name}", type=kind, default=default, help=help_)
    return parser


def parse(argv: Sequence[str] | None) -> tuple[ExperimentConfig, dict[str, Any]]:
    """The study configured by ``argv``, and the run options."""
    options = parse_tool_args(parser(), argv)
    run = {name: options.pop(name) for name in RUN_OPTIONS}
    return ExperimentConfig(**options), run


def print_deliverables(result: StudyRun) -> None:
    """List the deliverables, then the report's table of means and its paired differences."""
    layout = result.layout
    print(f"\ndeliverables in {layout.root}:")
    for what, path in layout.deliverables():
        print(f"  {what:<34} {path}")
    if layout.report.is_file():
        text = layout.report.read_text(encoding="utf-8")
        print("\n" + text.split("\nLearning-rate sweep")[0].rstrip())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``svdlora experiment``: parse, run (or resume) the study, print the deliverables."""
    from svdlora_pl.experiment.runner import run_experiment

    config, run = parse(argv)
    result = run_experiment(
        config, force=run["force"], jobs=run["jobs"], dry_run_only=run["dry_run"], report_only=run["report_only"]
    )
    if run["dry_run"]:
        return 0
    print_deliverables(result)
    for key in result.failed:
        print(f"svdlora experiment: {key} {result.outcome[key]}; rerun the same command to retry it")
    return 1 if result.failed else 0
