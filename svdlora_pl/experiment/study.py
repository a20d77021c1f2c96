"""A study's results, read from its fits' TensorBoard logs: the learning rate selected per arm, mean ± std over seeds
of every metric there, each arm's initialization budget, and its paired differences from the reference arm.

Usage::

    from svdlora_pl.experiment.study import build_study

    study, runs = build_study(layout, outcome)  # JSON-ready dict, and the selected fits' RunLogs by arm

Learning-rate selection: per arm, the learning rate of its grid with the lowest mean final ``val/loss`` over the seeds
that finished (the mean of the last 10 % of ``train/loss`` when a fit has no validation). Selecting and reporting on
the same validation set favours every arm by its best draw of the grid (the winner's curse); with the same grid
size for every arm the bias is alike across arms, yet a reported value is optimistic by it.

The metrics of a fit are :func:`~svdlora_pl.experiment.comparison.run_metrics`'s, against one target loss for the
whole study (the highest final train loss of the selected fits × 1.05), plus ``final_exact_match`` (the last
``val/exact_match``, with ``eval_generate``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from svdlora_pl.experiment.comparison import DEFINITIONS, METRICS, TARGET_MARGIN, run_metrics, tail_mean
from svdlora_pl.experiment.plan import Fit, Layout, arm_fits, teacher_fits
from svdlora_pl.experiment.provenance import run_provenance
from svdlora_pl.experiment.run_log import TRAIN_LOSS, VAL_LOSS, RunLog, load_run
from svdlora_pl.experiment.scheduler import FIT_RECORD
from svdlora_pl.experiment.statistics import CONFIDENCE, METHOD, paired_difference, summary, verdict
from svdlora_pl.io import finite_or_none

EXACT_MATCH = "val/exact_match"
TEACHER_COST = "teacher_cost.json"
STUDY_METRICS = (*METRICS, "final_exact_match")
HIGHER_IS_BETTER = frozenset({"final_exact_match"})
STUDY_DEFINITIONS = {
    **{key: text for key, text in DEFINITIONS.items() if key != "improvement_pct"},
    "final_exact_match": "last val/exact_match point (answers matched by math-verify or the rounding rule)",
    "selection": "per arm, the lr with the lowest mean final val/loss over seeds (train tail mean without val)",
    "paired_difference": METHOD,
}


def selection_value(scalars: Mapping[str, list[tuple[int, float]]]) -> float:
    """What selects a learning rate: the final ``val/loss`` (the train tail mean without validation); inf if not
    finite, so a diverged fit is never selected."""
    val = scalars.get(VAL_LOSS)
    value = val[-1][1] if val else tail_mean(scalars[TRAIN_LOSS])
    return value if math.isfinite(value) else math.inf


def optimizer_steps(scalars: Mapping[str, list[tuple[int, float]]]) -> int:
    """Optimizer steps of a fit: ``train/loss`` is logged at steps 0..N-1 (step k: the loss before update k+1)."""
    return scalars[TRAIN_LOSS][-1][0] + 1


def read_json(path: Path) -> dict[str, Any]:
    """A JSON record, or {} when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def accumulation(run: RunLog) -> int:
    """``trainer.accumulate_grad_batches`` of a fit, from its saved config.yaml (1 when unknown)."""
    import yaml

    try:
        config = yaml.safe_load((run.event_dir / "config.yaml").read_text(encoding="utf-8"))
        return int(config["trainer"].get("accumulate_grad_batches") or 1)
    except (OSError, KeyError, TypeError, ValueError, AttributeError, yaml.YAMLError):
        return 1


def init_cost(scalars: Mapping[str, list[tuple[int, float]]]) -> dict[str, float | None]:
    """What a fit's initializer logged it cost (``weights/init/*``)."""
    return {
        key: (scalars.get(f"weights/init/{key}") or [(0, None)])[0][1] for key in ("forward_backward_passes", "seconds")
    }


def teacher_budget(layout: Layout, kind: str, source: Fit, runs: dict[str, RunLog]) -> dict[str, Any]:
    """What a teacher cost: its fit's optimizer steps, forward+backward passes and seconds, and the seconds of
    synthesizing and factorizing it."""
    run = runs.get(source.key)
    steps = optimizer_steps(run.scalars) if run else None
    build = read_json(layout.svd_dir(kind) / TEACHER_COST)
    return {
        "kind": kind,
        "fit": source.key,
        "fit_steps": steps,
        "fit_passes": steps * accumulation(run) if run and steps is not None else None,
        "fit_seconds": read_json(source.root / FIT_RECORD).get("seconds"),
        "synthesize_seconds": build.get("synthesize_seconds"),
        "factorize_seconds": build.get("factorize_seconds"),
    }


def load_complete(fits: list[Fit]) -> dict[str, RunLog]:
    """The RunLogs of the fits that finished, by key."""
    return {fit.key: load_run(fit.log_dir(), fit.key) for fit in fits if fit.complete()}


def lr_sweep(layout: Layout, runs: dict[str, RunLog]) -> dict[str, dict[str, Any]]:
    """Per arm: the selection value per learning rate and seed, their means, and the selected learning rate."""
    config = layout.config
    sweeps: dict[str, dict[str, Any]] = {}
    fits = arm_fits(layout)
    for arm in config.study_arms():
        rows = []
        for lr in config.arm_grid(arm):
            values = {
                fit.seed: selection_value(runs[fit.key].scalars) if fit.key in runs else None
                for fit in fits
                if fit.arm == arm.name and fit.lr == lr
            }
            finished = [v for v in values.values() if v is not None]
            mean = sum(finished) / len(finished) if finished else None
            rows.append({"lr": lr, "by_seed": values, "mean": mean, "finished": len(finished)})
        candidates = [row for row in rows if row["mean"] is not None]
        best = min(candidates, key=lambda row: row["mean"]) if candidates else None
        grid = sorted(row["lr"] for row in rows)
        edge = None if best is None or len(grid) < 2 else {grid[0]: "smallest", grid[-1]: "largest"}.get(best["lr"])
        sweeps[arm.name] = {"rows": rows, "selected_lr": best["lr"] if best else None, "selected_at_edge": edge}
    return sweeps


def build_study(layout: Layout, outcome: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, list[RunLog]]]:
    """The study (JSON-ready) and the selected fits' RunLogs per arm; see the module docstring."""
    config = layout.config
    fits = arm_fits(layout)
    teachers = teacher_fits(layout)
    own = [fit for fit in teachers.values() if fit.key not in {f.key for f in fits}]  # not an arm's fit
    runs = load_complete([*fits, *own])
    sweeps = lr_sweep(layout, runs)
    selected = {
        arm.name: [f for f in fits if f.arm == arm.name and f.lr == sweeps[arm.name]["selected_lr"] and f.key in runs]
        for arm in config.study_arms()
    }
    finals = [runs[f.key].scalars[TRAIN_LOSS][-1][1] for group in selected.values() for f in group]
    finite = [v for v in finals if math.isfinite(v)]
    target = max(finite) * TARGET_MARGIN if finite else math.inf
    per_fit: dict[str, dict[str, Any]] = {}
    for group in selected.values():
        for fit in group:
            scalars = runs[fit.key].scalars
            metrics = run_metrics(scalars, target)
            exact = scalars.get(EXACT_MATCH)
            metrics["final_exact_match"] = exact[-1][1] if exact else None
            metrics["train_steps"] = optimizer_steps(scalars)
            metrics["init"] = init_cost(scalars)
            per_fit[fit.key] = metrics
    budgets = {kind: teacher_budget(layout, kind, fit, runs) for kind, fit in teachers.items()}
    all_runs = list(runs.values())
    reference = config.study_arms()[0].name
    arms = []
    for arm in config.study_arms():
        group = selected[arm.name]
        by_seed = {name: {f.seed: per_fit[f.key][name] for f in group} for name in STUDY_METRICS}
        ref_by_seed = {name: {f.seed: per_fit[f.key][name] for f in selected[reference]} for name in STUDY_METRICS}
        differences = {}
        lengths = {per_fit[f.key]["train_steps"] for f in [*group, *selected[reference]]}
        if arm.name != reference:
            for name in STUDY_METRICS:
                diff = paired_difference(by_seed[name], ref_by_seed[name])
                diff["verdict"] = verdict(diff["ci95"], lower_is_better=name not in HIGHER_IS_BETTER)
                if name == "train_loss_auc" and len(lengths) > 1:
                    diff["verdict"] = "not comparable (different numbers of steps)"
                differences[name] = diff
        budget: dict[str, Any] = {
            "teacher": budgets.get(arm.teacher),
            "init_forward_backward_passes": summary([per_fit[f.key]["init"]["forward_backward_passes"] for f in group]),
            "init_seconds": summary([per_fit[f.key]["init"]["seconds"] for f in group]),
            "train_steps": summary([per_fit[f.key]["train_steps"] for f in group]),
        }
        if arm.budget_of is not None:
            matched = budgets[config.arm(arm.budget_of).teacher]
            budget["matched"] = {"arm": arm.budget_of, "extra_epochs": config.teacher_epochs(matched["kind"]),
                                 "extra_steps": matched["fit_steps"]}  # fmt: skip
        arms.append({
            "name": arm.name,
            "initializer": arm.class_path,
            "init_args": arm.init_args,
            "teacher": None if arm.teacher == "none" else arm.teacher,
            "budget_of": arm.budget_of,
            "lr_sweep": sweeps[arm.name],
            "selected_lr": sweeps[arm.name]["selected_lr"],
            "seeds": [f.seed for f in group],
            "fits": [f.key for f in group],
            "metrics": {name: summary(list(by_seed[name].values())) for name in STUDY_METRICS},
            "by_seed": by_seed,
            "vs_reference": differences,
            "budget": budget,
            "provenance": run_provenance(runs[group[0].key], all_runs) if group else None,
        })  # fmt: skip
    study = {
        "reference_arm": reference,
        "seeds": config.seed_list(),
        "confidence": CONFIDENCE,
        "method": METHOD,
        "target_loss": {"value": target, "source": f"highest final train loss of the selected fits x {TARGET_MARGIN}"},
        "arms": arms,
        "teachers": budgets,
        "fits": [
            {
                "key": f.key,
                "arm": f.arm,
                "lr": f.lr,
                "seed": f.seed,
                "outcome": outcome.get(f.key, "not run"),
                "complete": f.key in runs,
                "run_dir": str(f.root),
                "metrics": per_fit.get(f.key),
            }
            for f in [*fits, *own]
        ],  # fmt: skip
        "definitions": STUDY_DEFINITIONS,
    }
    return finite_or_none(study), {name: [runs[f.key] for f in group] for name, group in selected.items()}
