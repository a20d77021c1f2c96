"""``compare``: the files written, their exact content (JSON round trip, report table, wide CSV), the PNG, labels,
an explicit target, overwriting, a single run, and bad input raising one InputError with nothing written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from builders import LOSS_A, LOSS_B, f32, make_run, svd_init, write_config, write_events

from svdlora_pl.errors import InputError
from svdlora_pl.experiment.compare import compare

FILES = {
    "comparison.json",
    "comparison_report.txt",
    "comparison_random_vs_svd.png",
    "training_log_random.csv",
    "training_log_svd.csv",
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    random = make_run(root / "random" / "lightning_logs" / "version_0", LOSS_A, val=[(0, 4.5), (5, 1.4)])
    svd = make_run(root / "svd" / "lightning_logs" / "version_0", LOSS_B, val=[(5, 1.3)])
    write_config(random, "    class_path: svdlora_pl.initializers.RandomInit\n")
    write_config(svd, svd_init(root / "missing_factors.safetensors"))
    return random, svd


def test_outputs_and_content(runs, tmp_path):
    random, svd = runs
    out = tmp_path / "out"
    # parent directories holding one run each: default labels are their names
    returned = compare([random.parents[1], svd.parents[1]], out)
    assert {p.name for p in out.iterdir()} == FILES

    result = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    assert result == returned
    A = f32(LOSS_A)
    assert result["target_loss"]["value"] == pytest.approx(A[-1] * 1.05, rel=1e-12)
    assert [r["label"] for r in result["runs"]] == ["random", "svd"]
    assert [r["metrics"]["steps_to_target"] for r in result["runs"]] == [5, 4]
    assert [r["metrics"]["train_loss_auc"] for r in result["runs"]] == pytest.approx([9.1, 6.5], rel=1e-6)
    gains = result["improvement_pct"]["svd"]
    assert gains["train_loss_auc"] == pytest.approx((9.1 - 6.5) / 9.1 * 100, rel=1e-6)
    assert gains["final_train_loss"] == pytest.approx((1.2 - 1.0) / 1.2 * 100, rel=1e-6)
    assert result["runs"][1]["provenance"]["initializer"] == "svdlora_pl.initializers.SVDTeacherInit"

    report = (out / "comparison_report.txt").read_text(encoding="utf-8")
    header = report.splitlines()[3]
    assert [c.strip() for c in header.split("|")] == ["Metric", "random", "svd", "Improvement % (svd vs random)"]
    rows = {line.split("|")[0].strip(): [c.strip() for c in line.split("|")[1:]] for line in report.splitlines()[5:12]}
    assert rows["Initial train loss (first point)"] == ["4.0000", "3.0000", "+25.00%"]
    assert rows["Initial val loss (step 0)"] == ["4.5000", "n/a", "n/a"]
    assert rows["Convergence steps to target (<= 1.2600)"] == ["5", "4", "+20.00%"]
    assert rows["Final train loss (last point)"] == ["1.2000", "1.0000", "+16.67%"]
    assert rows["Final val loss (last point)"] == ["1.4000", "1.3000", "+7.14%"]
    assert rows["Area under train-loss curve"] == ["9.1000", "6.5000", "+28.57%"]
    assert "initial val loss (step 0) is n/a for svd" in report
    assert "- random: svdlora_pl.initializers.RandomInit (no teacher)" in report
    assert "file not found: teacher unknown" in report

    with (out / "training_log_random.csv").open(newline="", encoding="utf-8") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["step", "train/loss", "val/loss"]
    assert [row[0] for row in table[1:]] == ["0", "1", "2", "3", "4", "5"]
    assert table[1] == ["0", "", "4.5"]  # step-0 validation only: empty train cell
    assert [float(row[1]) for row in table[2:]] == A  # exact float32 values
    assert table[2][2] == "" and float(table[6][2]) == pytest.approx(1.4)
    assert (out / "comparison_random_vs_svd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_labels_target_and_overwrite(runs, tmp_path):
    random, svd = runs
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("x")
    compare([random, svd], out, labels=["Random-init", "SVD init"], target_loss=1.05, overwrite=True)
    assert {p.name for p in out.iterdir()} == {
        "comparison.json",
        "comparison_report.txt",
        "comparison_random_vs_svd.png",
        "training_log_Random-init.csv",
        "training_log_SVD_init.csv",
    }
    result = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    assert result["target_loss"] == {"value": 1.05, "source": "target_loss"}
    assert [r["metrics"]["steps_to_target"] for r in result["runs"]] == [None, 5]
    assert result["improvement_pct"]["SVD init"]["steps_to_target"] is None


def test_single_run_has_no_improvement_column(runs, tmp_path):
    out = tmp_path / "one"
    compare([runs[0]], out, labels=["random"])
    result = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    assert result["improvement_pct"] == {}
    assert result["target_loss"]["value"] == pytest.approx(float(np.float32(1.2)) * 1.05)
    assert "Improvement" not in (out / "comparison_report.txt").read_text(encoding="utf-8").splitlines()[3]


def bad_cases(runs: tuple[Path, Path], tmp: Path) -> dict[str, tuple[dict, str]]:
    """Keyword arguments of ``compare`` (``output_dir`` defaults to ``tmp/out``) and the error they raise."""
    random, svd = runs
    (tmp / "empty").mkdir()
    no_loss = write_events(tmp / "no_loss", {"val/loss": [(0, 1.0)]})
    full = tmp / "full"
    full.mkdir()
    (full / "keep.txt").write_text("keep")
    return {
        "no events": ({"run_dirs": [random, tmp / "empty"]}, "empty: no TensorBoard event files"),
        "no train/loss": ({"run_dirs": [random, no_loss]}, "no_loss: no train/loss scalar"),
        "label count": ({"run_dirs": [random, svd], "labels": ["a"]}, "labels: 1 labels for 2 run directories"),
        "duplicate labels": ({"run_dirs": [random, svd], "labels": ["a", "a"]}, "labels: duplicate label 'a'"),
        "non-empty output": ({"run_dirs": [random, svd], "output_dir": full}, "output_dir: .* exists and is not empty"),
        "output replaces input": ({"run_dirs": [random, svd], "output_dir": random.parent}, "would replace the input"),
        "missing dir": ({"run_dirs": [tmp / "nope"]}, "nope: not a directory"),
        "no run dirs": ({"run_dirs": []}, "run_dirs: at least one run directory is needed"),
        "infinite target": ({"run_dirs": [random], "target_loss": float("inf")}, "target_loss: must be a finite"),
    }


CASES = [
    "no events",
    "no train/loss",
    "label count",
    "duplicate labels",
    "non-empty output",
    "output replaces input",
    "missing dir",
    "no run dirs",
    "infinite target",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_raises_and_writes_nothing(runs, tmp_path, case):
    options, message = bad_cases(runs, tmp_path)[case]
    out = tmp_path / "out"
    options.setdefault("output_dir", out)
    with pytest.raises(InputError, match=message):
        compare(**options)
    assert not out.exists()
    assert (tmp_path / "full" / "keep.txt").read_text() == "keep"
    assert {p.name for p in runs[0].parent.iterdir()} == {"version_0"}
    assert not list(tmp_path.glob(".out.*"))  # no staging directory left behind
