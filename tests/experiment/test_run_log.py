"""Reading runs from TensorBoard logs: resumed-run merging, run directory discovery, labels, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from builders import LOSS_A, LOSS_B, make_run, write_events

from svdlora_pl.errors import InputError
from svdlora_pl.experiment.run_log import default_labels, find_event_dir, load_run, load_runs, read_event_scalars


def test_resumed_run_merged_by_step_later_wall_time_wins(tmp_path):
    run = tmp_path / "version_0"
    write_events(run, {"train/loss": [(1, 4.0), (2, 3.0), (3, 2.5)], "train/lr": [(1, 0.1)]}, wall0=100.0)
    write_events(run, {"train/loss": [(3, 2.0), (4, 1.5)]}, wall0=200.0)  # resumed from step 2's checkpoint
    assert len(list(run.glob("events.out.tfevents.*"))) == 2
    log = load_run(run, "r")
    assert log.scalars["train/loss"] == [(1, 4.0), (2, 3.0), (3, 2.0), (4, 1.5)]
    assert log.scalars["train/lr"] == [(1, pytest.approx(0.1))]
    older = tmp_path / "older_wins"  # order of files does not matter, wall time does
    write_events(older, {"train/loss": [(3, 9.0)]}, wall0=500.0)
    write_events(older, {"train/loss": [(3, 1.0)]}, wall0=50.0)
    assert read_event_scalars(sorted(older.glob("events.out.tfevents.*")))["train/loss"] == [(3, 9.0)]


def test_event_dir_discovery(tmp_path):
    run = make_run(tmp_path / "exp" / "lightning_logs" / "version_3", LOSS_A)
    assert find_event_dir(tmp_path / "exp") == run
    assert find_event_dir(run) == run
    make_run(tmp_path / "exp" / "lightning_logs" / "version_4", LOSS_B)
    with pytest.raises(InputError, match=r"exp: holds 2 runs \(lightning_logs/version_3, lightning_logs/version_4\)"):
        find_event_dir(tmp_path / "exp")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: no TensorBoard event files"):
        find_event_dir(tmp_path / "empty")
    with pytest.raises(InputError, match="missing: not a directory"):
        find_event_dir(tmp_path / "missing")


def test_default_labels_made_unique():
    assert default_labels([Path("/x/random"), Path("/x/svd")]) == ["random", "svd"]
    assert default_labels([Path("/r/a/version_0"), Path("/r/b/version_0")]) == ["a-version_0", "b-version_0"]
    assert default_labels([Path("/r/a"), Path("/r/a")]) == ["a-1", "a-2"]


def test_bad_input(tmp_path):
    a, b = make_run(tmp_path / "a", LOSS_A), make_run(tmp_path / "b", LOSS_B)
    no_loss = write_events(tmp_path / "no_loss", {"val/loss": [(0, 1.0)]})
    with pytest.raises(InputError, match=r"no_loss: no train/loss scalar .*tags: val/loss"):
        load_runs([a, no_loss])
    with pytest.raises(InputError, match="labels: 1 labels for 2 run directories"):
        load_runs([a, b], ["x"])
    with pytest.raises(InputError, match="labels: duplicate label 'x'"):
        load_runs([a, b], ["x", "x"])
    with pytest.raises(InputError, match="same file names"):
        load_runs([a, b], ["x/y", "x y"])


def test_no_run_directory():
    with pytest.raises(InputError, match="run_dirs: at least one run directory is needed"):
        load_runs([])
