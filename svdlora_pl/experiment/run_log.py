"""Training runs read from their TensorBoard logs: :class:`RunLog`, finding a run's event files, labels.

Usage::

    from svdlora_pl.experiment.run_log import load_runs

    runs = load_runs(["runs/random", "runs/svd"], labels=["random", "svd"])  # list[RunLog]

A run directory is a Lightning log dir (``lightning_logs/version_N``, event files directly inside) or a directory
holding exactly one such run below it. Event files are read with TensorBoard's ``EventAccumulator`` (every scalar
point kept); several event files in one directory (a resumed run) are merged by step, the later wall time winning.
Labels default to the directories' names, extended by parent names until unique.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from svdlora_pl.errors import InputError

EVENT_GLOB = "events.out.tfevents.*"
TRAIN_LOSS = "train/loss"
VAL_LOSS = "val/loss"

Series = list[tuple[int, float]]


@dataclass
class RunLog:
    """The scalars of one run.

    Args:
        label: Name of the run in reports and file names.
        run_dir: The directory given by the user.
        event_dir: The directory holding the event files (the Lightning log dir).
        event_files: The event files read, in name order.
        scalars: Every scalar tag -> [(step, value)], sorted by step, one point per step.
    """

    label: str
    run_dir: Path
    event_dir: Path
    event_files: list[Path]
    scalars: dict[str, Series]


def find_event_dir(run_dir: Path) -> Path:
    """The directory holding ``run_dir``'s event files: itself, or the one run directory found below it."""
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: not a directory")
    if any(p.is_file() for p in run_dir.glob(EVENT_GLOB)):
        return run_dir
    dirs = sorted({p.parent for p in run_dir.rglob(EVENT_GLOB) if p.is_file()})
    if not dirs:
        raise InputError(f"{run_dir}: no TensorBoard event files ({EVENT_GLOB}) in it or below it")
    if len(dirs) > 1:
        shown = ", ".join(str(d.relative_to(run_dir)) for d in dirs[:3])
        raise InputError(f"{run_dir}: holds {len(dirs)} runs ({shown}{', ...' if len(dirs) > 3 else ''}); pass one")
    return dirs[0]


def read_event_scalars(event_files: Sequence[Path]) -> dict[str, Series]:
    """Every scalar series of ``event_files``, merged by step: at a step logged more than once, the later wall
    time wins (a resumed run re-logs the steps after its checkpoint)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    merged: dict[str, dict[int, tuple[float, float]]] = {}
    for path in event_files:
        accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            points = merged.setdefault(tag, {})
            for event in accumulator.Scalars(tag):
                step = int(event.step)
                if step not in points or event.wall_time >= points[step][0]:
                    points[step] = (float(event.wall_time), float(event.value))
    return {tag: [(step, points[step][1]) for step in sorted(points)] for tag, points in sorted(merged.items())}


def default_labels(run_dirs: Sequence[Path]) -> list[str]:
    """The run directories' names, extended by parent names (``svd-version_0``) until unique, then numbered."""
    parts = [Path(os.path.abspath(d)).parts[1:] or ("run",) for d in run_dirs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["-".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{p[-1]}-{i + 1}" for i, p in enumerate(parts)]


def check_labels(labels: Sequence[str], run_count: int) -> None:
    """Refuse a label count that differs from the run count, empty labels and duplicates."""
    if len(labels) != run_count:
        raise InputError(f"labels: {len(labels)} labels for {run_count} run directories")
    for label in labels:
        if not label.strip():
            raise InputError("labels: empty label")
    seen = [label for i, label in enumerate(labels) if label in labels[:i]]
    if seen:
        raise InputError(f"labels: duplicate label {seen[0]!r}")
    files = [file_label(label) for label in labels]
    if len(set(files)) != len(files):
        raise InputError(f"labels: {', '.join(labels)} give the same file names ({', '.join(files)})")


def file_label(label: str) -> str:
    """``label`` made safe for a file name (characters other than letters, digits, ``.``, ``_``, ``-`` -> ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", label)


def load_run(run_dir: Path, label: str) -> RunLog:
    """Read one run; it must have logged ``train/loss``."""
    event_dir = find_event_dir(run_dir)
    files = sorted(p for p in event_dir.glob(EVENT_GLOB) if p.is_file())
    scalars = read_event_scalars(files)
    if not scalars.get(TRAIN_LOSS):
        raise InputError(
            f"{event_dir}: no {TRAIN_LOSS} scalar in its event files (tags: {', '.join(scalars) or 'none'})"
        )
    return RunLog(label, run_dir, event_dir, files, scalars)


def load_runs(run_dirs: Sequence[str | os.PathLike[str]], labels: Sequence[str] | None = None) -> list[RunLog]:
    """Read every run; ``labels`` default to :func:`default_labels`."""
    paths = [Path(d) for d in run_dirs]
    if not paths:
        raise InputError("run_dirs: at least one run directory is needed")
    labels = list(labels) if labels is not None else default_labels(paths)
    check_labels(labels, len(paths))
    return [load_run(path, label) for path, label in zip(paths, labels, strict=True)]
