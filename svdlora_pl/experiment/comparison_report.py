"""Rendering of a run comparison (:func:`svdlora_pl.experiment.comparison.build_comparison`): text table, figure, CSV logs.

Usage::

    from svdlora_pl.experiment.comparison_report import write_comparison

    write_comparison(staging_dir, comparison, runs)  # comparison.json, comparison_report.txt, the figure, CSVs

Files: ``comparison.json``; ``comparison_report.txt`` (Metric | run … | Improvement % table, the target loss, the
definitions and each run's provenance); ``comparison_random_vs_svd.png`` (train and validation loss curves of all
runs overlaid, and a bar chart of initial and final losses); ``training_log_<label>.csv`` per run, wide: a ``step``
column and one column per scalar tag, one row per logged step, empty cells where a tag has no value at that step.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from svdlora_pl.experiment.run_log import TRAIN_LOSS, VAL_LOSS, RunLog, Series, file_label
from svdlora_pl.io import json_text
from svdlora_pl.plots import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

JSON_NAME = "comparison.json"
REPORT_NAME = "comparison_report.txt"
FIGURE_NAME = "comparison_random_vs_svd.png"
ROWS = (
    ("initial_train_loss", "Initial train loss (first point)"),
    ("initial_val_loss", "Initial val loss (step 0)"),
    ("steps_to_target", "Convergence steps to target"),
    ("final_train_loss", "Final train loss (last point)"),
    ("final_train_loss_tail_mean", "Final train loss (mean last 10%)"),
    ("final_val_loss", "Final val loss (last point)"),
    ("train_loss_auc", "Area under train-loss curve"),
)
BARS = (
    ("initial_train_loss", "initial train"),
    ("initial_val_loss", "initial val (step 0)"),
    ("final_train_loss", "final train"),
    ("final_val_loss", "final val"),
)


def csv_name(label: str) -> str:
    """File name of a run's training log CSV."""
    return f"training_log_{file_label(label)}.csv"


def format_cell(name: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if name == "steps_to_target":
        return str(int(value))
    return f"{value:.4f}"


def text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        return " | ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )

    return [fmt(header), "-|-".join("-" * w for w in widths), *map(fmt, rows)]


def format_report(comparison: dict[str, Any]) -> str:
    """The text report: table of metrics with improvement % against the first run, target, notes, provenance."""
    runs = comparison["runs"]
    first = comparison["reference_run"]
    target = comparison["target_loss"]
    header = ["Metric", *(r["label"] for r in runs), *(f"Improvement % ({r['label']} vs {first})" for r in runs[1:])]
    rows = []
    for name, title in ROWS:
        if name == "steps_to_target":
            title = f"{title} (<= {target['value']:.4f})"
        values = [format_cell(name, r["metrics"][name]) for r in runs]
        gains = [comparison["improvement_pct"][r["label"]][name] for r in runs[1:]]
        rows.append([title, *values, *("n/a" if g is None else f"{g:+.2f}%" for g in gains)])
    lines = ["Training run comparison", "=" * 23, "", *text_table(header, rows), ""]
    lines += [f"Target loss: {target['value']:.6g} ({target['source']})."]
    lines += [f"- {key}: {text}" for key, text in comparison["definitions"].items()]
    lines += ["", "Logged points:"]
    for r in runs:
        m = r["metrics"]
        lines.append(
            f"- {r['label']}: {TRAIN_LOSS} {m['train_points']} points (steps {m['first_step']}..{m['last_step']}), "
            f"{VAL_LOSS} {m['val_points']} point{'s' * (m['val_points'] != 1)}; {r['event_dir']}"
        )
    only_start = [
        r["label"] for r in runs if r["metrics"]["val_points"] == 1 and r["metrics"]["initial_val_loss"] is not None
    ]
    if only_start:
        lines.append(f"- final val loss of {', '.join(only_start)} is its step-0 value: no validation after step 0")
    if len({(r["metrics"]["first_step"], r["metrics"]["last_step"]) for r in runs}) > 1:
        lines.append("- the runs cover different step ranges: their areas under the curve are not comparable")
    missing = [r["label"] for r in runs if r["metrics"]["initial_val_loss"] is None]
    if missing:
        lines.append(
            f"- initial val loss (step 0) is n/a for {', '.join(missing)}: no {VAL_LOSS} at step 0 in the logs "
            "(the run did not validate before training, e.g. an older run)"
        )
    lines += ["", "Provenance (initializer / teacher):"]
    lines += [f"- {r['label']}: {r['provenance']['summary']}" for r in runs]
    for r in runs:
        circular = r["provenance"]["circular_with"]
        if circular:
            lines.append(
                f"Note: {r['label']}'s teacher contains the update of run {circular!r}, so its lower initial loss is "
                "expected by construction, not evidence for SVD initialization; a full fine-tune teacher is the "
                "non-circular test."
            )
        elif r["provenance"]["teacher_kind"] == "full_finetune":
            lines.append(
                f"Note: {r['label']}'s teacher is a full fine-tune whose own training steps are not on this step "
                "axis; compare with a random-init run given those steps too before crediting the initialization."
            )
    return "\n".join(lines) + "\n"


def _values(series: Series | None) -> tuple[np.ndarray, np.ndarray]:
    points = series or []
    return np.array([s for s, _ in points], dtype=np.float64), np.array([v for _, v in points], dtype=np.float64)


def comparison_figure(comparison: dict[str, Any], runs: Sequence[RunLog]) -> Figure:
    """Train and validation loss curves of every run overlaid, and a bar chart of initial and final losses."""
    fig, (train_ax, val_ax, bar_ax) = new_figure((16, 4.6), 1, 3)
    for run in runs:
        train_ax.plot(*_values(run.scalars[TRAIN_LOSS]), label=run.label, linewidth=1.2)
        steps, values = _values(run.scalars.get(VAL_LOSS))
        if len(steps):
            val_ax.plot(steps, values, marker="o", markersize=3, label=run.label)
    target = comparison["target_loss"]["value"]
    train_ax.axhline(target, color="grey", linestyle="--", linewidth=0.8, label=f"target {target:.4g}")
    train_ax.set(title="train/loss", xlabel="step", ylabel="loss")
    train_ax.legend(fontsize="small")
    val_ax.set(title="val/loss", xlabel="step", ylabel="loss")
    if val_ax.lines:
        val_ax.legend(fontsize="small")
    else:
        val_ax.text(0.5, 0.5, "no val/loss logged", ha="center", va="center", transform=val_ax.transAxes)
    width = 0.8 / len(runs)
    x = np.arange(len(BARS))
    for i, run in enumerate(comparison["runs"]):
        heights = [np.nan if run["metrics"][key] is None else run["metrics"][key] for key, _ in BARS]
        bars = bar_ax.bar(x + (i - (len(runs) - 1) / 2) * width, heights, width, label=run["label"])
        bar_ax.bar_label(bars, fmt="%.3f", fontsize="x-small")
    bar_ax.set_xticks(x, [title for _, title in BARS])
    bar_ax.set(title="initial and final loss", ylabel="loss")
    bar_ax.legend(fontsize="small")
    return fig


def training_log_csv(scalars: dict[str, Series]) -> str:
    """Wide CSV: ``step`` then one column per tag (sorted), one row per step, empty where a tag has no value."""
    tags = sorted(scalars)
    table: dict[int, dict[str, float]] = {}
    for tag in tags:
        for step, value in scalars[tag]:
            table.setdefault(step, {})[tag] = value
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["step", *tags])
    for step in sorted(table):
        writer.writerow([step, *(repr(table[step][t]) if t in table[step] else "" for t in tags)])
    return out.getvalue()


def write_comparison(directory: Path, comparison: dict[str, Any], runs: Sequence[RunLog]) -> None:
    """Write every output file into ``directory`` (a staging directory: the caller makes it atomic)."""
    (directory / JSON_NAME).write_text(json_text(comparison), encoding="utf-8")
    (directory / REPORT_NAME).write_text(format_report(comparison), encoding="utf-8")
    for run in runs:
        (directory / csv_name(run.label)).write_text(training_log_csv(run.scalars), encoding="utf-8")
    comparison_figure(comparison, runs).savefig(directory / FIGURE_NAME, dpi=110)
