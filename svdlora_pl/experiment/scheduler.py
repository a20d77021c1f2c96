"""Running a study's tasks: ``svdlora fit`` processes, ``jobs`` at a time, and the in-process steps that build
teachers, each after the tasks it needs.

Usage::

    from svdlora_pl.experiment.scheduler import Task, run_tasks

    outcome = run_tasks(tasks, jobs=2)  # {key: "done" | "skipped" | "failed: ..." | "blocked by ..."}

A task is skipped when its output is complete and none of the tasks it needs ran in this call; a task that fails
(a fit's non-zero exit, a step's refused input) is recorded and blocks only the tasks that need it. With ``jobs`` > 1
each fit writes its output to ``<run dir>/fit.log``, gets ``cpus // jobs`` CPU threads (``OMP_NUM_THREADS``) and, on a
machine with GPUs, one device of its own (``CUDA_VISIBLE_DEVICES``). Every fit leaves ``fit.json`` (command, exit
code, seconds) in its run directory.
"""

from __future__ import annotations

import os
import queue
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from svdlora_pl.errors import InputError
from svdlora_pl.experiment.plan import Fit
from svdlora_pl.io import atomic_write_text, json_text

FIT_LOG = "fit.log"
FIT_RECORD = "fit.json"


@dataclass(frozen=True)
class Task:
    """One unit of a study.

    Args:
        key: Its name in messages and outcomes.
        lines: Its equivalent command lines (printed before it runs, and by ``--dry-run``).
        complete: Whether its output is complete.
        run: Runs it in a slot (``Slot``); returns an error message, or None on success.
        needs: Keys of the tasks that must succeed first.
    """

    key: str
    lines: list[str]
    complete: Callable[[], bool]
    run: Callable[[Slot], str | None]
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Slot:
    """Where a task runs: its environment changes (threads, device) and whether it owns the console."""

    env: dict[str, str] = field(default_factory=dict)
    console: bool = True


def slots(jobs: int) -> list[Slot]:
    """``jobs`` slots: the CPU threads divided between them, and one GPU each where there are GPUs."""
    if jobs == 1:
        return [Slot()]
    threads = str(max(1, len(os.sched_getaffinity(0)) // jobs))
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [
        Slot({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
             | ({"CUDA_VISIBLE_DEVICES": str(index % gpus)} if gpus else {}), console=False)
        for index in range(jobs)
    ]  # fmt: skip


def fit_line(fit: Fit) -> str:
    """The fit's command as a user types it."""
    return shlex.join(["svdlora", *fit.command()[3:]])


def run_fit(fit: Fit, slot: Slot) -> str | None:
    """Run one fit from scratch (a leftover of an interrupted attempt is removed first)."""
    shutil.rmtree(fit.root, ignore_errors=True)
    fit.root.mkdir(parents=True)
    start = time.perf_counter()
    env = {**os.environ, **slot.env}
    if slot.console:
        code = subprocess.run(fit.command(), check=False, env=env).returncode
    else:
        with (fit.root / FIT_LOG).open("w", encoding="utf-8") as log:
            code = subprocess.run(fit.command(), check=False, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    record = {"command": fit.command(), "exit_code": code, "seconds": time.perf_counter() - start, "env": slot.env}
    atomic_write_text(fit.root / FIT_RECORD, json_text(record))
    if code == 0 and fit.complete():
        return None
    return f"exit code {code}{last_error(fit)}" if code else "finished without saving its adapter"


def last_error(fit: Fit) -> str:
    """``: <the last svdlora error line of its log>``, or nothing."""
    log = fit.root / FIT_LOG
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines() if log.is_file() else []
    errors = [line for line in lines if line.startswith("svdlora: ")] or lines[-1:]
    return f": {errors[-1].strip()} (log: {log})" if errors else ""


def fit_task(fit: Fit, needs: Sequence[str] = ()) -> Task:
    """The task of one fit."""
    return Task(fit.key, [fit_line(fit)], fit.complete, lambda slot: run_fit(fit, slot), tuple(needs))


def stages(tasks: Sequence[Task]) -> list[list[Task]]:
    """The tasks in stages: each stage needs only tasks of earlier stages (the order a scheduler can run them)."""
    depth: dict[str, int] = {}
    for task in tasks:  # tasks come after the tasks they need
        depth[task.key] = 1 + max((depth[need] for need in task.needs), default=-1)
    return [[t for t in tasks if depth[t.key] == level] for level in range(max(depth.values(), default=-1) + 1)]


def dry_run(tasks: Sequence[Task]) -> str:
    """Every task's command lines, stage by stage, as a shell script for a cluster scheduler."""
    lines = [
        "# The study's commands, stage by stage: the lines of a stage can run in any order or at once (a SLURM "
        "array, for example);",
        "# a stage needs the stages above it. Then run the same `svdlora experiment` command with --report_only true.",
    ]
    for number, stage in enumerate(stages(tasks), start=1):
        lines.append(f"# stage {number}: {len(stage)} task{'s' * (len(stage) != 1)}")
        lines += [line for task in stage for line in task.lines]
    return "\n".join(lines) + "\n"


def run_tasks(tasks: Sequence[Task], jobs: int = 1, force: bool = False) -> dict[str, str]:
    """Run every task that is not complete, ``jobs`` at a time; returns each task's outcome.

    Args:
        tasks: The tasks, each after the tasks it needs.
        jobs: How many run at once.
        force: Run every task, even those whose output is complete.
    """
    if jobs < 1:
        raise InputError(f"jobs: must be at least 1, got {jobs}")
    for index, task in enumerate(tasks):
        unknown = set(task.needs) - {earlier.key for earlier in tasks[:index]}
        if unknown:
            raise ValueError(f"task {task.key} needs {sorted(unknown)}, which are not earlier tasks")
    outcome: dict[str, str] = {}
    ran: set[str] = set()
    free: queue.SimpleQueue[Slot] = queue.SimpleQueue()
    for slot in slots(jobs):
        free.put(slot)

    def execute(task: Task) -> str | None:
        slot = free.get()
        try:
            return task.run(slot)
        except InputError as error:
            return str(error)
        finally:
            free.put(slot)

    pending = list(tasks)
    running: dict[Future[str | None], Task] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            for task in list(pending):
                failed = [need for need in task.needs if outcome.get(need, "done") not in ("done", "skipped")]
                if failed:
                    outcome[task.key] = f"blocked by {failed[0]}"
                    pending.remove(task)
                elif all(need in outcome for need in task.needs) and len(running) < jobs:
                    pending.remove(task)
                    if not force and not ran.intersection(task.needs) and task.complete():
                        outcome[task.key] = "skipped"
                        print(f"[experiment] {task.key}: done already", flush=True)
                        continue
                    for line in task.lines:
                        print(f"[experiment] {task.key}: {line}", flush=True)
                    running[pool.submit(execute, task)] = task
            if not running:
                continue
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                task = running.pop(future)
                error = future.result()
                ran.add(task.key)
                outcome[task.key] = "done" if error is None else f"failed: {error}"
                print(f"[experiment] {task.key}: {outcome[task.key]}", flush=True)
    return outcome
