"""The study's scheduler on stand-in tasks: complete tasks are skipped unless a task they need ran, ``force`` runs
everything, a failure blocks only what needs it, ``jobs`` run at once with the threads divided, and the dry run
prints every command in stages."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from svdlora_pl.errors import InputError
from svdlora_pl.experiment.scheduler import Slot, Task, dry_run, run_tasks, slots, stages


def stand_ins(root: Path, ran: list[str], needs: dict[str, tuple[str, ...]], fail: str = "") -> list[Task]:
    """One task per key of ``needs`` that writes ``root/<key>`` (or fails, for ``fail``) and records that it ran."""

    def task(key: str) -> Task:
        def run(slot: Slot) -> str | None:
            ran.append(key)
            if key == fail:
                return "exit code 3"
            (root / key).write_text(key)
            return None

        return Task(key, [f"make {key}"], (root / key).is_file, run, needs[key])

    return [task(key) for key in needs]


CHAIN = {"teacher_fit": (), "other_fit": (), "teacher": ("teacher_fit",), "svd_fit": ("teacher",)}


def test_complete_tasks_are_skipped_unless_what_they_need_ran(tmp_path: Path, capsys) -> None:
    ran: list[str] = []
    tasks = stand_ins(tmp_path, ran, CHAIN)
    assert set(run_tasks(tasks).values()) == {"done"} and sorted(ran) == sorted(CHAIN)
    ran.clear()
    assert set(run_tasks(tasks).values()) == {"skipped"} and ran == []
    assert capsys.readouterr().out.count("done already") == 4
    (tmp_path / "teacher").unlink()
    outcome = run_tasks(tasks)
    assert ran == ["teacher", "svd_fit"]  # svd_fit is complete but needs the teacher, which ran again
    assert outcome == {"teacher_fit": "skipped", "other_fit": "skipped", "teacher": "done", "svd_fit": "done"}
    ran.clear()
    run_tasks(tasks, force=True)
    assert sorted(ran) == sorted(CHAIN)


def test_a_failure_blocks_only_what_needs_it(tmp_path: Path) -> None:
    ran: list[str] = []
    outcome = run_tasks(stand_ins(tmp_path, ran, CHAIN, fail="teacher_fit"), jobs=2)
    assert outcome == {
        "teacher_fit": "failed: exit code 3", "other_fit": "done",
        "teacher": "blocked by teacher_fit", "svd_fit": "blocked by teacher",
    }  # fmt: skip
    assert sorted(ran) == ["other_fit", "teacher_fit"]


def test_an_input_error_of_an_in_process_task_is_a_failure(tmp_path: Path) -> None:
    def refuse(slot: Slot) -> str | None:
        raise InputError("delta: not a teacher file")

    outcome = run_tasks([Task("teacher", [], lambda: False, refuse)])
    assert outcome == {"teacher": "failed: delta: not a teacher file"}


def test_jobs_run_at_once_in_slots_of_their_own(tmp_path: Path) -> None:
    active, peak, envs = [0], [0], []
    lock = threading.Lock()

    def run(slot: Slot) -> str | None:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            envs.append(slot.env)
        time.sleep(0.2)
        with lock:
            active[0] -= 1
        return None

    tasks = [Task(f"fit{i}", [], lambda: False, run) for i in range(4)]
    assert set(run_tasks(tasks, jobs=2).values()) == {"done"}
    assert peak[0] == 2 and all(env.get("OMP_NUM_THREADS") for env in envs)
    assert slots(1) == [Slot()]
    assert len(slots(3)) == 3 and not any(slot.console for slot in slots(3))
    with pytest.raises(InputError, match="jobs: must be at least 1, got 0"):
        run_tasks(tasks, jobs=0)


def test_a_task_must_come_after_what_it_needs(tmp_path: Path) -> None:
    tasks = stand_ins(tmp_path, [], {"svd_fit": ("teacher",), "teacher": ()})
    with pytest.raises(ValueError, match=r"task svd_fit needs \['teacher'\]"):
        run_tasks(tasks)


def test_dry_run_prints_every_command_in_stages(tmp_path: Path) -> None:
    tasks = stand_ins(tmp_path, [], CHAIN)
    assert [[t.key for t in stage] for stage in stages(tasks)] == [
        ["teacher_fit", "other_fit"],
        ["teacher"],
        ["svd_fit"],
    ]
    script = dry_run(tasks)
    assert "# stage 1: 2 tasks\nmake teacher_fit\nmake other_fit\n# stage 2: 1 task\nmake teacher\n" in script
    assert script.endswith("# stage 3: 1 task\nmake svd_fit\n") and not list(tmp_path.iterdir())
