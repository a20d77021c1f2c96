"""Comparison of training runs read from their TensorBoard logs: the metrics and the comparison dict.

Usage::

    from svdlora_pl.experiment.comparison import build_comparison
    from svdlora_pl.experiment.run_log import load_runs

    runs = load_runs(["runs/random", "runs/svd"], labels=["random", "svd"])
    comparison = build_comparison(runs)  # JSON-ready dict; rendered by svdlora_pl.experiment.comparison_report

Reading the runs: :mod:`svdlora_pl.experiment.run_log`.

Metrics of one run (``train/loss`` is required; every other tag is optional):

- ``initial_train_loss``: the first logged ``train/loss`` point (and its step);
- ``initial_val_loss``: ``val/loss`` logged at step 0, i.e. before any update (also ``val/token_accuracy`` and
  ``val/perplexity`` there); null for runs that did not validate at step 0;
- ``final_train_loss``: the last ``train/loss`` point; ``final_train_loss_tail_mean``: the mean of the last
  ⌈10 %⌉ of the ``train/loss`` points (at least one), less noisy; ``final_val_loss``: the last ``val/loss`` point;
- ``steps_to_target``: the step of the first raw (unsmoothed) ``train/loss`` point ≤ the target loss, null if
  never; the default target is the highest final train loss among the runs × 1.05, so every run reaches it.
  Steps are the logged global steps: :class:`~svdlora_pl.model.QwenLoRAModule` logs its first ``train/loss`` at
  step 0, the loss of the first batch before any update, so a run starting below the target reports 0;
- ``train_loss_auc``: area under the ``train/loss`` curve over the logged steps (trapezoid rule; runs of
  different lengths are not comparable by it).

Provenance: see :mod:`svdlora_pl.experiment.provenance`.

Improvement of each other run relative to the first: (first − other) / first · 100, for losses, steps and area
alike (positive: the other run is lower); null when a value is missing or the first is 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from svdlora_pl.errors import InputError
from svdlora_pl.experiment.provenance import run_provenance
from svdlora_pl.experiment.run_log import TRAIN_LOSS, VAL_LOSS, RunLog, Series
from svdlora_pl.io import finite_or_none

VAL_AT_START = ("val/loss", "val/token_accuracy", "val/perplexity")
TARGET_MARGIN = 1.05
TAIL_FRACTION = 0.1
METRICS = (
    "initial_train_loss",
    "initial_val_loss",
    "steps_to_target",
    "final_train_loss",
    "final_train_loss_tail_mean",
    "final_val_loss",
    "train_loss_auc",
)
"""Metrics compared between runs, in report order."""

DEFINITIONS = {
    "initial_train_loss": "first logged train/loss point",
    "initial_val_loss": "val/loss logged at step 0, before any update (null: the run did not validate at step 0)",
    "steps_to_target": "step of the first raw (unsmoothed) train/loss point <= target loss (null: never reached)",
    "final_train_loss": "last train/loss point",
    "final_train_loss_tail_mean": f"mean of the last ceil({TAIL_FRACTION:g} x n) train/loss points (at least one)",
    "final_val_loss": "last val/loss point",
    "train_loss_auc": "area under the train/loss curve over the logged steps (trapezoid rule)",
    "improvement_pct": "(first - other) / first x 100 against the first run; positive: the other run is lower",
}


def trapezoid_area(series: Series) -> float:
    """Area under the curve of ``series`` over its steps (trapezoid rule; 0 for a single point)."""
    steps = np.array([s for s, _ in series], dtype=np.float64)
    values = np.array([v for _, v in series], dtype=np.float64)
    return float(np.sum((steps[1:] - steps[:-1]) * (values[1:] + values[:-1]) / 2.0))


def steps_to_target(series: Series, target: float) -> int | None:
    """Step of the first point whose raw value is <= ``target``; None if no point reaches it."""
    return next((step for step, value in series if value <= target), None)


def tail_mean(series: Series, fraction: float = TAIL_FRACTION) -> float:
    """Mean of the last ⌈fraction·n⌉ values (at least one)."""
    count = max(1, math.ceil(fraction * len(series)))
    return float(np.mean([v for _, v in series[-count:]], dtype=np.float64))


def value_at(series: Series | None, step: int) -> float | None:
    """The value logged at ``step``, or None."""
    return next((v for s, v in series or [] if s == step), None)


def run_metrics(scalars: dict[str, Series], target: float) -> dict[str, Any]:
    """The metrics of one run (see the module docstring) against the target loss ``target``."""
    train = scalars[TRAIN_LOSS]
    val = scalars.get(VAL_LOSS) or []
    at_start = {tag.removeprefix("val/"): value_at(scalars.get(tag), 0) for tag in VAL_AT_START}
    return {
        "initial_train_loss": train[0][1],
        "initial_train_step": train[0][0],
        "initial_val_loss": at_start["loss"],
        "initial_val": at_start,
        "steps_to_target": steps_to_target(train, target),
        "final_train_loss": train[-1][1],
        "final_train_loss_tail_mean": tail_mean(train),
        "final_val_loss": val[-1][1] if val else None,
        "train_loss_auc": trapezoid_area(train),
        "train_points": len(train),
        "first_step": train[0][0],
        "last_step": train[-1][0],
        "val_points": len(val),
    }


def default_target(final_losses: Sequence[float]) -> float:
    """The highest final train loss × 1.05: a loss that every run reaches."""
    return max(final_losses) * TARGET_MARGIN


def improvement(first: float | None, other: float | None) -> float | None:
    """(first − other) / first · 100; None when a value is missing or not finite, or ``first`` is 0."""
    if first is None or other is None or first == 0 or not (math.isfinite(first) and math.isfinite(other)):
        return None
    return (first - other) / first * 100.0


def build_comparison(runs: Sequence[RunLog], target_loss: float | None = None) -> dict[str, Any]:
    """The comparison of ``runs`` (JSON-ready): per run metrics and provenance, target, improvements vs the first."""
    if target_loss is not None and not math.isfinite(target_loss):
        raise InputError(f"target_loss: must be a finite number, got {target_loss}")
    finals = [run.scalars[TRAIN_LOSS][-1][1] for run in runs]
    if target_loss is None:
        if not any(math.isfinite(f) for f in finals):
            raise InputError(f"{runs[0].event_dir}: no finite final {TRAIN_LOSS} to derive a target; set target_loss")
        worst = max((i for i, f in enumerate(finals) if math.isfinite(f)), key=finals.__getitem__)
        target = {
            "value": default_target([finals[worst]]),
            "source": f"default: highest final train loss ({runs[worst].label}, {finals[worst]:.6g}) x {TARGET_MARGIN}",
        }
    else:
        target = {"value": float(target_loss), "source": "target_loss"}
    metrics = [run_metrics(run.scalars, target["value"]) for run in runs]
    first = runs[0].label
    improvements = {
        run.label: {name: improvement(metrics[0][name], m[name]) for name in METRICS}
        for run, m in zip(runs[1:], metrics[1:], strict=True)
    }
    return finite_or_none(
        {
            "reference_run": first,
            "target_loss": target,
            "runs": [
                {
                    "label": run.label,
                    "run_dir": str(run.run_dir),
                    "event_dir": str(run.event_dir),
                    "event_files": [str(p) for p in run.event_files],
                    "tags": sorted(run.scalars),
                    "metrics": m,
                    "provenance": run_provenance(run, runs),
                }
                for run, m in zip(runs, metrics, strict=True)
            ],
            "improvement_pct": improvements,
            "definitions": DEFINITIONS,
        }
    )
