"""Atomic output: files and directories are replaced whole, and failures leave the old content and no debris."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from svdlora_pl import io
from svdlora_pl.io import atomic_directory, atomic_write_bytes, atomic_write_text


def test_atomic_write_text_creates_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.txt"
    assert atomic_write_text(target, "first\n") == target
    atomic_write_text(str(target), "zweite Zeile \u2713\n")
    assert target.read_bytes() == "zweite Zeile \u2713\n".encode()
    assert os.listdir(target.parent) == ["out.txt"]


def test_atomic_write_text_failed_rename_keeps_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old", encoding="utf-8")

    def fail(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_text(encoding="utf-8") == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "text is not bytes")  # type: ignore[arg-type]  # fails inside write()
    assert os.listdir(tmp_path) == []


def test_atomic_directory_replaces_whole(tmp_path: Path) -> None:
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "stale.bin").write_text("old")
    (target / "keep.json").write_text("old")
    with atomic_directory(target) as staging:
        assert staging.parent == tmp_path and staging != target
        (staging / "keep.json").write_text("new")
    assert sorted(os.listdir(target)) == ["keep.json"]
    assert (target / "keep.json").read_text() == "new"
    assert os.listdir(tmp_path) == ["adapter"]


def test_atomic_directory_error_keeps_old_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "weights.bin").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_directory(target) as staging:
            (staging / "weights.bin").write_text("half")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == ["adapter"]
    assert os.listdir(target) == ["weights.bin"]
    assert (target / "weights.bin").read_text() == "old"


def test_atomic_directory_error_without_old_dir_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        with atomic_directory(tmp_path / "new"):
            raise KeyError("x")
    assert os.listdir(tmp_path) == []


def test_outputs_get_the_usual_permissions(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        written = atomic_write_text(tmp_path / "f.txt", "x")
        with atomic_directory(tmp_path / "d") as staging:
            (staging / "inner").write_text("y")
    finally:
        os.umask(mask)
    assert written.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
