"""The one-command study of LoRA initializers: every fit of every arm, the teachers, and the report, resumable, in
one output directory.

Usage::

    from svdlora_pl.experiment.config import ExperimentConfig
    from svdlora_pl.experiment.runner import run_experiment

    result = run_experiment(ExperimentConfig(output_dir=Path("experiments/tiny")), jobs=2)
    result.layout.report, result.failed  # where the report is; the fits that failed

Tasks (:mod:`svdlora_pl.experiment.scheduler` runs them, ``jobs`` at a time, each after the tasks it needs):

1. the teachers' fits: a random-init LoRA fit at ``lr`` for a synthesized teacher (an arm's identical fit when there
   is one), a full fine-tune for the other (``training_results/runs/teacher_*``);
2. every arm's fits that need no teacher: each learning rate of its grid at each seed, ``svdlora fit`` processes
   (``training_results/runs/<arm>/lr<lr>-seed<seed>/``);
3. per teacher, in this process: :func:`~svdlora_pl.teacher.synthesize.synthesize` (from the adapter, or the dense
   ΔW of the full fine-tune kept at rank R) -> ``synthesized_teacher/`` or ``full_teacher/``, and
   :func:`~svdlora_pl.teacher.factorize.factorize` at the LoRA rank -> ``svd_results/``;
4. the fits of the arms that start from a teacher's factors (``SVDTeacherInit``);
5. the report, from every fit that finished: :func:`~svdlora_pl.experiment.study.build_study` and
   :func:`~svdlora_pl.experiment.study_report.write_study` -> ``training_results/comparison_*``; each arm's adapter
   at its selected learning rate and first seed -> ``training_results/final_model_<arm>/``.

A complete task is skipped unless a task it needs ran again; a failed fit is reported and blocks only what needs
it. Every fit has ``LoRASpectrumMonitor``, and a fit from a teacher also ``TeacherAlignmentMonitor``.
"""

from __future__ import annotations

import dataclasses
import shlex
import shutil
import time
from dataclasses import dataclass
from typing import Any

from svdlora_pl.errors import InputError
from svdlora_pl.experiment.config import ExperimentConfig
from svdlora_pl.experiment.plan import Fit, Layout, arm_fits, log_dir, teacher_fits, teacher_steps
from svdlora_pl.experiment.scheduler import Slot, Task, dry_run, fit_task, run_tasks
from svdlora_pl.io import atomic_directory, atomic_write_text, check_writable, json_text


@dataclass(frozen=True)
class StudyRun:
    """What ``run_experiment`` did.

    Args:
        layout: Where every deliverable is.
        outcome: Each task's outcome (``done``, ``skipped``, ``failed: ...``, ``blocked by ...``).
    """

    layout: Layout
    outcome: dict[str, str]

    @property
    def failed(self) -> list[str]:
        """The tasks that failed or could not run."""
        return [key for key, result in self.outcome.items() if result.startswith(("failed", "blocked"))]


def tool_line(tool: str, options: dict[str, Any]) -> str:
    """The ``svdlora TOOL`` command line equivalent to an in-process step."""
    words = ["svdlora", tool]
    for key, value in options.items():
        if dataclasses.is_dataclass(value):
            words += [
                word for name, item in dataclasses.asdict(value).items() for word in (f"--{key}.{name}", str(item))
            ]
        elif isinstance(value, list | tuple):
            words += [f"--{key}", f"[{', '.join(map(str, value))}]"]
        elif value is not None:
            words += [f"--{key}", str(value)]
    return shlex.join(words)


def build_teacher(layout: Layout, kind: str, source: Fit, slot: Slot) -> None:
    """Synthesize the teacher from its fit and factorize it at the LoRA rank (timed: ``teacher_cost.json``)."""
    from svdlora_pl.spectral.threads import cpu_threads
    from svdlora_pl.teacher.factorize import factorize
    from svdlora_pl.teacher.synthesize import synthesize

    tools = {"synthesize": synthesize, "factorize": factorize}
    cost: dict[str, float] = {}
    threads = slot.env.get("OMP_NUM_THREADS")
    with cpu_threads(int(threads) if threads else None):
        for tool, options in teacher_steps(layout, kind, source):
            start = time.perf_counter()
            tools[tool](**options)
            cost[f"{tool}_seconds"] = time.perf_counter() - start
    from svdlora_pl.experiment.study import TEACHER_COST

    atomic_write_text(layout.svd_dir(kind) / TEACHER_COST, json_text(cost))


def teacher_task(layout: Layout, kind: str, source: Fit) -> Task:
    """The in-process task that builds one teacher's factors from its fit."""

    def run(slot: Slot) -> str | None:
        build_teacher(layout, kind, source, slot)
        return None

    lines = [tool_line(tool, options) for tool, options in teacher_steps(layout, kind, source)]
    return Task(f"teacher_{kind}", lines, layout.factors(kind).is_file, run, (source.key,))


def study_tasks(layout: Layout) -> list[Task]:
    """Every task of the study, each after the tasks it needs; teachers' fits first, so they start first."""
    fits = arm_fits(layout)
    teachers = teacher_fits(layout)
    first = list({fit.key: fit for fit in teachers.values()}.values())
    independent = [fit for fit in fits if fit.teacher is None and fit.key not in {f.key for f in first}]
    tasks = [fit_task(fit) for fit in [*first, *independent]]
    tasks += [teacher_task(layout, kind, fit) for kind, fit in teachers.items()]
    tasks += [fit_task(fit, [f"teacher_{fit.teacher}"]) for fit in fits if fit.teacher is not None]
    return tasks


def keep_adapters(layout: Layout, study: dict[str, Any]) -> None:
    """Copy each arm's adapter (selected learning rate, first seed) to ``final_model_<arm>/``, atomically."""
    for arm in study["arms"]:
        if arm["fits"]:
            adapter = log_dir(layout.run_root(arm["fits"][0])) / "adapter"
            with atomic_directory(layout.final_model(arm["name"])) as staging:
                shutil.copytree(adapter, staging, dirs_exist_ok=True)


def run_experiment(
    config: ExperimentConfig, force: bool = False, jobs: int = 1, dry_run_only: bool = False, report_only: bool = False
) -> StudyRun:
    """Run (or resume) the study into ``config.output_dir`` and write its report from the fits that finished.

    Args:
        config: The study (checked when built).
        force: Redo every task, even those whose output is complete.
        jobs: Tasks run at once (CPU threads divided between them; one GPU each where there are GPUs).
        dry_run_only: Print every task's command line, stage by stage, and run nothing.
        report_only: Run nothing; write the report from the fits that finished.

    Raises:
        InputError: The output directory cannot be written, or a step refused its input.
    """
    layout = Layout(config)
    tasks = study_tasks(layout)
    if dry_run_only:
        print(dry_run(tasks), end="", flush=True)
        return StudyRun(layout, {})
    if layout.root.exists() and not layout.root.is_dir():
        raise InputError(f"output_dir: {layout.root} exists and is not a directory")
    check_writable(layout.root, "output_dir")
    layout.root.mkdir(parents=True, exist_ok=True)
    if report_only:
        outcome = {task.key: "done" if task.complete() else "not run" for task in tasks}
    else:
        outcome = run_tasks(tasks, jobs=jobs, force=force)
    write_report(layout, outcome)
    return StudyRun(layout, outcome)


def write_report(layout: Layout, outcome: dict[str, str]) -> None:
    """Build the study from the finished fits, write its files and keep each arm's adapter."""
    from svdlora_pl.experiment.study import build_study
    from svdlora_pl.experiment.study_report import write_study

    study, runs = build_study(layout, outcome)
    if not any(arm["fits"] for arm in study["arms"]):
        print("[experiment] report: no fit finished; nothing to report", flush=True)
        return
    layout.results.mkdir(parents=True, exist_ok=True)
    write_study(layout.results, study, runs)
    keep_adapters(layout, study)
    print(f"[experiment] report: wrote {layout.report}", flush=True)
