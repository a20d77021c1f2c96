"""Rendering a study (:func:`svdlora_pl.experiment.study.build_study`): text report, figure, training-log CSVs.

Usage::

    from svdlora_pl.experiment.study_report import write_study

    write_study(layout.results, study, runs)

Files in ``training_results/``: ``comparison.json`` (the study), ``comparison_report.txt`` (mean ± std per arm,
paired differences with their 95 % intervals and verdicts, the learning-rate sweep, the budget, failed fits,
provenance), ``comparison_random_vs_svd.png`` (loss curves with ±1 std bands per arm, the paired differences of the
final losses with their intervals, the learning-rate sweep) and ``training_log_<arm>[_seed<s>].csv`` for each
selected fit. The report is written last: its presence marks a complete report.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from svdlora_pl.experiment.comparison_report import (
    FIGURE_NAME,
    JSON_NAME,
    REPORT_NAME,
    ROWS,
    csv_name,
    format_cell,
    text_table,
    training_log_csv,
)  # fmt: skip
from svdlora_pl.experiment.run_log import TRAIN_LOSS, VAL_LOSS, RunLog
from svdlora_pl.io import json_text
from svdlora_pl.plots import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STUDY_ROWS = (*ROWS, ("final_exact_match", "Final val exact match"))


def mean_std(stats: dict[str, Any], name: str, seeds: int) -> str:
    """``mean ± std`` (``mean`` alone for one value, n/a for none), with ``(n=k)`` when fewer than ``seeds``."""
    if stats["mean"] is None:
        return "n/a"
    text = format_cell(name, stats["mean"]) if name != "steps_to_target" else f"{stats['mean']:.1f}"
    if stats["std"] is not None:
        text += f" ± {stats['std']:.1f}" if name == "steps_to_target" else f" ± {stats['std']:.4f}"
    return text + ("" if stats["n"] == seeds else f" (n={stats['n']})")


def difference_cell(diff: dict[str, Any]) -> str:
    """``mean [low, high] verdict`` of a paired difference."""
    if diff["mean"] is None:
        return "n/a"
    if diff["ci95"] is None:
        return f"{diff['mean']:+.4f} (n={diff['n']}: no interval)"
    low, high = diff["ci95"]
    return f"{diff['mean']:+.4f} [{low:+.4f}, {high:+.4f}] {diff['verdict']}"


def seconds(*values: float | None) -> str:
    known = [v for v in values if v is not None]
    return f"{sum(known):.1f}" if known else "n/a"


def budget_rows(study: dict[str, Any]) -> list[list[str]]:
    rows = []
    for arm in study["arms"]:
        budget, teacher = arm["budget"], arm["budget"]["teacher"]
        passes = budget["init_forward_backward_passes"]["mean"]
        build = (
            (teacher["fit_seconds"], teacher["synthesize_seconds"], teacher["factorize_seconds"]) if teacher else (0.0,)
        )
        rows.append([
            arm["name"],
            str(teacher["fit_steps"] if teacher else 0),
            str(teacher["fit_passes"] if teacher else 0),
            seconds(*build),
            "n/a" if passes is None else f"{passes:.0f}",
            seconds(budget["init_seconds"]["mean"]),
            f"{budget['train_steps']['mean']:.0f}" if budget["train_steps"]["mean"] is not None else "n/a",
        ])  # fmt: skip
    return rows


def format_study(study: dict[str, Any]) -> str:
    """The text report (see the module docstring)."""
    arms = study["arms"]
    reference = study["reference_arm"]
    seeds = ", ".join(map(str, study["seeds"]))
    lines = ["Initializer study", "=" * 17, ""]
    lines.append(f"Reference arm: {reference}. Seeds: {seeds}. Per arm the learning rate is selected by the lowest "
                 "mean final val loss over seeds, and every number below is at that learning rate.")  # fmt: skip
    lines += ["", "Mean ± std over seeds"]
    header = ["Metric", *(f"{a['name']} (lr {a['selected_lr']:g})" if a["selected_lr"] else a["name"] for a in arms)]
    target = study["target_loss"]["value"]
    rows = []
    for name, title in STUDY_ROWS:
        if all(a["metrics"][name]["mean"] is None for a in arms):
            continue
        title = f"{title} (<= {target:.4f})" if name == "steps_to_target" else title
        rows.append([title, *(mean_std(a["metrics"][name], name, len(study["seeds"])) for a in arms)])
    lines += text_table(header, rows)
    others = [a for a in arms if a["name"] != reference]
    if others:
        n = sorted({d["n"] for a in others for d in a["vs_reference"].values() if d["n"]})
        lines += ["", f"Paired difference from {reference} (arm − {reference}): mean [95% CI] verdict; "
                      f"n = {', '.join(map(str, n))} paired seeds; {study['method']}.",
                  "Lower is better for losses, steps and area; higher for exact match."]  # fmt: skip
        header = ["Metric", *(a["name"] for a in others)]
        rows = [
            [title, *(difference_cell(a["vs_reference"][name]) for a in others)]
            for name, title in STUDY_ROWS
            if any(a["vs_reference"][name]["mean"] is not None for a in others)
        ]
        lines += text_table(header, rows)
    lines += ["", "Learning-rate sweep: mean final val loss over seeds (* selected; (k) seeds finished if fewer)"]
    grid = sorted({row["lr"] for a in arms for row in a["lr_sweep"]["rows"]})
    rows = []
    for arm in arms:
        cells = {row["lr"]: row for row in arm["lr_sweep"]["rows"]}
        rows.append([arm["name"], *(sweep_cell(cells.get(lr), arm["selected_lr"], len(study["seeds"])) for lr in grid)])
    lines += text_table(["Arm", *(f"lr {lr:g}" for lr in grid)], rows)
    lines += ["", "Initialization budget (means over seeds; a teacher is built once and shared by its arm's fits)"]
    header = ["Arm", "teacher fit steps", "teacher f+b passes", "teacher seconds", "init f+b passes", "init seconds",
              "train steps"]  # fmt: skip
    lines += text_table(header, budget_rows(study))
    lines += budget_notes(study)
    lines += ["", "Notes:"]
    lines += [
        f"- target loss {target:.6g} ({study['target_loss']['source']})",
        "- the learning rate is selected and reported on the same validation set: each arm's reported val loss is "
        "its best of the grid, optimistic by that choice (alike for arms with grids of the same size)",
    ]
    for arm in arms:
        if arm["lr_sweep"]["selected_at_edge"]:
            edge = arm["lr_sweep"]["selected_at_edge"]
            lines.append(f"- {arm['name']}: the selected lr is the {edge} of its grid; one beyond it may be better")
    if len({arm["budget"]["train_steps"]["mean"] for arm in arms}) > 1:
        lines.append("- the arms train for different numbers of steps: their areas under the curve are not comparable")
    lines += [f"- {key}: {text}" for key, text in study["definitions"].items()]
    failed = [f for f in study["fits"] if not f["complete"]]
    if failed:
        lines += ["", f"Fits not in the report ({len(failed)}):"]
        lines += [f"- {f['key']}: {f['outcome']}" for f in failed]
    lines += ["", "Provenance (initializer / teacher):"]
    for arm in arms:
        provenance = arm["provenance"]
        lines.append(f"- {arm['name']}: {provenance['summary'] if provenance else 'no finished fit'}")
        if provenance and provenance.get("teacher_kind") == "synthesized":
            lines.append(f"  Note: {arm['name']}'s teacher is synthesized from a random-init LoRA fit on the same data "
                         "(circular): it starts where that fit ended, so a lower initial loss is expected by "
                         "construction, not evidence for SVD initialization.")  # fmt: skip
    return "\n".join(lines) + "\n"


def sweep_cell(row: dict[str, Any] | None, selected: float | None, seeds: int) -> str:
    if row is None:
        return ""
    if row["mean"] is None:
        return "failed"
    star = "*" if row["lr"] == selected else ""
    return f"{row['mean']:.4f}{star}" + ("" if row["finished"] == seeds else f" ({row['finished']})")


def budget_notes(study: dict[str, Any]) -> list[str]:
    notes = []
    for arm in study["arms"]:
        matched = arm["budget"].get("matched")
        if matched:
            notes.append(f"- {arm['name']} is budget-matched to {matched['arm']}: {matched['extra_epochs']} more epochs "
                         f"({matched['extra_steps']} optimizer steps, its teacher's fit) on its own step axis")  # fmt: skip
    return notes


def bands(runs: Sequence[RunLog], tag: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps logged by every run, and the mean and std of ``tag`` over the runs there."""
    series = [dict(run.scalars.get(tag) or []) for run in runs]
    steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
    values = np.array([[s[step] for step in steps] for s in series], dtype=np.float64)
    if not steps:
        return np.array([]), np.array([]), np.array([])
    return np.array(steps), values.mean(axis=0), values.std(axis=0, ddof=1) if len(runs) > 1 else values[0] * 0


def study_figure(study: dict[str, Any], runs: dict[str, list[RunLog]]) -> Figure:
    """Loss curves with ±1 std bands, paired differences of the final losses with 95 % intervals, the lr sweep."""
    fig, axes = new_figure((15, 10), 2, 2)
    (train_ax, val_ax), (diff_ax, sweep_ax) = axes
    for arm in study["arms"]:
        for ax, tag in ((train_ax, TRAIN_LOSS), (val_ax, VAL_LOSS)):
            steps, mean, std = bands(runs.get(arm["name"], []), tag)
            if len(steps):
                (line,) = ax.plot(steps, mean, label=f"{arm['name']} (lr {arm['selected_lr']:g})", linewidth=1.2)
                ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    n = len(study["seeds"])
    for ax, tag in ((train_ax, TRAIN_LOSS), (val_ax, VAL_LOSS)):
        ax.set(title=f"{tag}: mean ± std over {n} seed{'s' * (n != 1)}", xlabel="step", ylabel="loss")
        if ax.lines:
            ax.legend(fontsize="small")
    others = [a for a in study["arms"] if a["name"] != study["reference_arm"]]
    keys = (("final_val_loss", "final val"), ("final_train_loss_tail_mean", "final train (tail)"))
    for j, (key, title) in enumerate(keys):
        for i, arm in enumerate(others):
            diff = arm["vs_reference"][key]
            if diff["mean"] is None:
                continue
            y = i + (j - 0.5) * 0.25
            err = None if diff["ci95"] is None else [[diff["mean"] - diff["ci95"][0]], [diff["ci95"][1] - diff["mean"]]]
            diff_ax.errorbar(diff["mean"], y, xerr=err, fmt="o", capsize=3, color=f"C{j}",
                             label=title if i == 0 else None)  # fmt: skip
    diff_ax.axvline(0.0, color="grey", linewidth=0.8)
    diff_ax.set_yticks(range(len(others)), [a["name"] for a in others])
    diff_ax.set_ylim(-0.6, len(others) - 0.4)  # one row per arm, however few
    diff_ax.set(
        title=f"final losses, arm − {study['reference_arm']}: mean and 95% CI (paired over seeds)",
        xlabel="loss difference (initial losses: see the report)",
    )
    if diff_ax.lines or diff_ax.collections:
        diff_ax.legend(fontsize="small")
    for arm in study["arms"]:
        rows = [row for row in arm["lr_sweep"]["rows"] if row["mean"] is not None]
        if rows:
            (line,) = sweep_ax.plot([r["lr"] for r in rows], [r["mean"] for r in rows], marker="o", label=arm["name"])
            if arm["selected_lr"] is not None:
                best = next(r for r in rows if r["lr"] == arm["selected_lr"])
                sweep_ax.plot([best["lr"]], [best["mean"]], marker="*", markersize=14, color=line.get_color())
    sweep_ax.set_xscale("log")
    sweep_ax.set(title="lr sweep: mean final val loss over seeds (* selected)", xlabel="learning rate", ylabel="loss")
    if sweep_ax.lines:
        sweep_ax.legend(fontsize="small")
    if all(len(arm["lr_sweep"]["rows"]) < 2 for arm in study["arms"]):
        sweep_ax.text(0.5, 0.9, "one learning rate per arm: no sweep", ha="center", transform=sweep_ax.transAxes)
    return fig


def log_name(arm: str, seed: int, seeds: int) -> str:
    """``training_log_<arm>.csv`` with one seed, ``training_log_<arm>_seed<s>.csv`` with several."""
    return csv_name(arm if seeds == 1 else f"{arm}_seed{seed}")


def write_study(results: Path, study: dict[str, Any], runs: dict[str, list[RunLog]]) -> None:
    """Write every file into ``results`` through a staging directory; the report goes last."""
    staging = results / ".comparison-staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    names = [JSON_NAME, FIGURE_NAME]
    (staging / JSON_NAME).write_text(json_text(study), encoding="utf-8")
    study_figure(study, runs).savefig(staging / FIGURE_NAME, dpi=100)
    for arm in study["arms"]:
        for seed, run in zip(arm["seeds"], runs.get(arm["name"], []), strict=True):
            name = log_name(arm["name"], seed, len(study["seeds"]))
            (staging / name).write_text(training_log_csv(run.scalars), encoding="utf-8")
            names.append(name)
    (staging / REPORT_NAME).write_text(format_study(study), encoding="utf-8")
    for name in [*names, REPORT_NAME]:
        (staging / name).replace(results / name)
    shutil.rmtree(staging, ignore_errors=True)
