"""Comparing training runs (e.g. random-init vs SVD-init LoRA) from their TensorBoard logs, into one directory.

Usage::

    from svdlora_pl.experiment.compare import compare

    comparison = compare([Path("runs/random"), Path("runs/svd")], Path("training_results"), labels=["random", "svd"])

The runs are read by :mod:`svdlora_pl.experiment.run_log`, the metrics and provenance computed by
:mod:`svdlora_pl.experiment.comparison`, the files written by :mod:`svdlora_pl.experiment.comparison_report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def compare(
    run_dirs: list[Path],
    output_dir: Path,
    labels: list[str] | None = None,
    target_loss: float | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Compare training runs from their TensorBoard logs.

    Initial loss, step-0 validation loss, steps to a target loss, final train/val loss and area under the
    train-loss curve, with the improvement % of every run against the first, and each run's initializer/teacher
    provenance from its ``config.yaml``.

    Steps to target: the first step whose raw (unsmoothed) train/loss is <= the target. Area: trapezoid rule over
    the logged steps. Improvement: (first - other) / first x 100. Writes ``comparison.json``,
    ``comparison_report.txt``, ``comparison_random_vs_svd.png`` and ``training_log_<label>.csv`` per run into
    ``output_dir``, atomically: bad input (a directory without event files or with several runs, a run without
    train/loss, wrong labels, a non-empty output directory) raises an InputError and writes nothing.

    Args:
        run_dirs: Runs to compare, the first being the reference: each a Lightning log dir (event files directly
            inside) or a directory holding exactly one such run below it; several event files in one directory (a
            resumed run) are merged by step, the later wall time winning.
        output_dir: Directory to write (replaced whole, atomically).
        labels: One name per run, unique (default: the directories' names, extended by parent names until unique).
        target_loss: Loss for "steps to target" (default: the highest final train loss x 1.05, reached by every run).
        overwrite: Replace a non-empty ``output_dir``.

    Returns:
        The comparison (JSON-ready dict, as written to ``comparison.json``).
    """
    from svdlora_pl.experiment.comparison import build_comparison
    from svdlora_pl.experiment.comparison_report import write_comparison
    from svdlora_pl.experiment.run_log import load_runs
    from svdlora_pl.io import atomic_directory, check_output_dir

    check_output_dir(Path(output_dir), run_dirs, overwrite)
    runs = load_runs(run_dirs, labels)
    comparison = build_comparison(runs, target_loss)
    with atomic_directory(output_dir) as staging:
        write_comparison(staging, comparison, runs)
    return comparison


def print_summary(comparison: dict[str, Any], where: object) -> None:
    """Print where the comparison went and each run's improvement over the first run (percent; negative: worse)."""
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
        print(f"{label} vs {first}, improvement (negative: worse): " + ", ".join(parts))
