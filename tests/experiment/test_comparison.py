"""Run comparison metrics and reading: hand-computed values on synthetic TensorBoard logs, resumed-run merging,
run directory discovery, labels, provenance from a fake ``config.yaml`` and factor files, and bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from builders import LOSS_A, LOSS_B, curve, f32, make_run, svd_init, write_config, write_events
from safetensors.torch import save_file

from svdlora_pl.errors import InputError
from svdlora_pl.experiment.comparison import (
    build_comparison,
    default_labels,
    find_event_dir,
    improvement,
    load_run,
    load_runs,
    read_event_scalars,
    run_metrics,
    steps_to_target,
    tail_mean,
    trapezoid_area,
)
from svdlora_pl.experiment.comparison_report import format_report


def test_trapezoid_steps_target_tail_by_hand():
    a = curve(LOSS_A)
    assert trapezoid_area(a) == pytest.approx((4 + 3) / 2 + (3 + 2) / 2 + (2 + 1.5) / 2 + (1.5 + 1.2) / 2)  # 9.1
    assert trapezoid_area([(0, 1.0), (10, 3.0)]) == pytest.approx(20.0)  # uneven step spacing counts
    assert trapezoid_area([(3, 2.0)]) == 0.0
    assert steps_to_target(a, 2.0) == 3  # <= is a crossing
    assert steps_to_target(a, 1.0) is None
    assert steps_to_target([(1, 1.0), (2, 5.0), (3, 0.5)], 1.0) == 1  # raw first crossing, no smoothing
    twenty = [(s, float(s)) for s in range(1, 21)]
    assert tail_mean(twenty) == pytest.approx((19 + 20) / 2)  # ceil(10% of 20) = 2 points
    assert tail_mean(twenty[:11]) == pytest.approx((10 + 11) / 2)  # ceil(1.1) = 2
    assert tail_mean(twenty[:3]) == 3.0


def test_improvement_edge_cases():
    assert improvement(4.0, 3.0) == pytest.approx(25.0)
    assert improvement(2.0, 3.0) == pytest.approx(-50.0)
    assert improvement(0.0, 1.0) is None
    assert improvement(None, 1.0) is None
    assert improvement(1.0, None) is None
    assert improvement(1.0, math.nan) is None


# ------------------------------------------------------------------------------------------- reading, comparing
def test_two_runs_hand_computed(tmp_path):
    make_run(tmp_path / "random", LOSS_A, val=[(0, 4.5), (5, 1.4)])
    make_run(tmp_path / "svd", LOSS_B, val=[(5, 1.3)])
    runs = load_runs([tmp_path / "random", tmp_path / "svd"])
    assert [r.label for r in runs] == ["random", "svd"]
    result = build_comparison(runs)
    a, b = (r["metrics"] for r in result["runs"])
    A, B = f32(LOSS_A), f32(LOSS_B)
    target = A[-1] * 1.05  # worst final train loss is random's 1.2
    assert result["target_loss"]["value"] == pytest.approx(target, rel=1e-12)
    assert "random" in result["target_loss"]["source"] and "1.05" in result["target_loss"]["source"]
    assert (a["initial_train_loss"], b["initial_train_loss"]) == (A[0], B[0])
    assert (a["initial_train_step"], a["first_step"], a["last_step"]) == (1, 1, 5)
    assert a["initial_val_loss"] == pytest.approx(4.5) and b["initial_val_loss"] is None
    assert a["initial_val"] == {"loss": pytest.approx(4.5), "token_accuracy": None, "perplexity": None}
    assert (a["final_train_loss"], b["final_train_loss"]) == (A[-1], B[-1])
    assert (a["final_val_loss"], b["final_val_loss"]) == (pytest.approx(1.4), pytest.approx(1.3))
    assert (a["steps_to_target"], b["steps_to_target"]) == (5, 4)  # 1.2 <= 1.26 at step 5; 1.1 <= 1.26 at step 4
    auc_a = sum((A[i] + A[i + 1]) / 2 for i in range(4))
    auc_b = sum((B[i] + B[i + 1]) / 2 for i in range(4))
    assert a["train_loss_auc"] == pytest.approx(auc_a, rel=1e-12) and auc_a == pytest.approx(9.1)
    assert b["train_loss_auc"] == pytest.approx(auc_b, rel=1e-12) and auc_b == pytest.approx(6.5)
    gains = result["improvement_pct"]["svd"]
    assert list(result["improvement_pct"]) == ["svd"] and result["reference_run"] == "random"
    assert gains["initial_train_loss"] == pytest.approx((4 - 3) / 4 * 100)  # 25 %
    assert gains["steps_to_target"] == pytest.approx((5 - 4) / 5 * 100)  # 20 %
    assert gains["final_train_loss"] == pytest.approx((A[-1] - B[-1]) / A[-1] * 100)  # 16.67 %
    assert gains["final_val_loss"] == pytest.approx((1.4 - 1.3) / 1.4 * 100, rel=1e-6)
    assert gains["train_loss_auc"] == pytest.approx((auc_a - auc_b) / auc_a * 100)  # 28.57 %
    assert gains["initial_val_loss"] is None  # svd has no step-0 validation


def test_explicit_target_never_reached(tmp_path):
    runs = [load_run(make_run(tmp_path / n, losses), n) for n, losses in (("a", LOSS_A), ("b", LOSS_B))]
    result = build_comparison(runs, target_loss=1.05)
    assert result["target_loss"] == {"value": 1.05, "source": "--target-loss"}
    assert [r["metrics"]["steps_to_target"] for r in result["runs"]] == [None, 5]
    assert result["improvement_pct"]["b"]["steps_to_target"] is None
    with pytest.raises(InputError, match="--target-loss"):
        build_comparison(runs, target_loss=math.inf)


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
    with pytest.raises(InputError, match="--labels: 1 labels for 2 run directories"):
        load_runs([a, b], ["x"])
    with pytest.raises(InputError, match="--labels: duplicate label 'x'"):
        load_runs([a, b], ["x", "x"])
    with pytest.raises(InputError, match="same file names"):
        load_runs([a, b], ["x/y", "x y"])


# ------------------------------------------------------------------------------------------------------ provenance
def factor_file(path: Path, metadata: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"m.lora_A": torch.zeros(1, 2), "m.lora_B": torch.zeros(2, 1)}, str(path), metadata=metadata)
    return path


@pytest.fixture
def two_runs(tmp_path) -> tuple[Path, Path]:
    random = make_run(tmp_path / "random" / "lightning_logs" / "version_0", LOSS_A)
    svd = make_run(tmp_path / "svd" / "lightning_logs" / "version_0", LOSS_B)
    write_config(random, "    class_path: svdlora_pl.initializers.RandomInit\n")
    return random, svd


def provenance(paths: list[Path], labels: list[str]) -> list[dict]:
    return [r["provenance"] for r in build_comparison(load_runs(paths, labels))["runs"]]


def test_provenance_synthesized_teacher_is_circular(tmp_path, two_runs):
    random, svd = two_runs
    teacher = factor_file(
        tmp_path / "teacher" / "synthesized_delta_rank8.safetensors",
        {"source_adapter": str(random / "adapter"), "format": "svdlora-synthesized-usv"},
    )
    factors = factor_file(
        tmp_path / "svd_results" / "svd_factors_rank4.safetensors", {"source": str(teacher), "source_kind": "delta"}
    )
    write_config(svd, svd_init(factors))
    first, second = provenance([random, svd], ["random", "svd"])
    assert first["initializer"] == "svdlora_pl.initializers.RandomInit" and first["teacher_kind"] is None
    assert first["summary"] == "svdlora_pl.initializers.RandomInit (no teacher)"
    assert second["initializer"] == "svdlora_pl.initializers.SVDTeacherInit"
    assert second["factors_file"] == str(factors)
    assert second["factors_metadata"] == {"source": str(teacher), "source_kind": "delta"}
    assert second["teacher_file"] == str(teacher) and second["teacher_metadata"]["source_adapter"] == str(
        random / "adapter"
    )
    assert (second["teacher_kind"], second["circular_with"]) == ("synthesized", "random")
    assert "teacher synthesized from the adapter of run 'random'" in second["summary"]
    assert "circular: the SVD run starts where that run ended" in second["summary"]
    write_config(svd, svd_init(teacher))  # the synthesized teacher used as factors directly
    direct = provenance([random, svd], ["random", "svd"])[1]
    assert (direct["teacher_kind"], direct["circular_with"], direct["teacher_file"]) == (
        "synthesized",
        "random",
        str(teacher),
    )


def test_provenance_full_finetune_relative_paths_and_direct_adapter(tmp_path, two_runs, monkeypatch):
    random, svd = two_runs
    monkeypatch.chdir(tmp_path)
    factor_file(tmp_path / "ft" / "delta.safetensors", {"method": "full fine-tune diff", "finetuned": "ft/model"})
    factor_file(tmp_path / "svd_results" / "f.safetensors", {"source": "ft/delta.safetensors", "source_kind": "delta"})
    write_config(svd, svd_init("svd_results/f.safetensors"))  # relative to the working directory
    info = provenance([random, svd], ["random", "svd"])[1]
    assert (info["teacher_kind"], info["circular_with"]) == ("full_finetune", None)
    assert info["teacher"] == "ft/delta.safetensors"
    assert info["teacher_file"] == str(tmp_path / "ft" / "delta.safetensors")
    assert "teacher from a full fine-tune" in info["summary"] and "not circular" in info["summary"]
    report = format_report(build_comparison(load_runs([random, svd], ["random", "svd"])))
    assert "Note: svd's teacher is a full fine-tune whose own training steps are not on this step axis" in report
    assert "expected by construction" not in report

    factor_file(
        tmp_path / "svd_results" / "g.safetensors", {"source": str(random / "adapter"), "source_kind": "adapter"}
    )
    write_config(svd, svd_init("svd_results/g.safetensors"))
    info = provenance([random, svd], ["random", "svd"])[1]
    assert (info["teacher_kind"], info["circular_with"]) == ("adapter", "random")
    assert "= SVD of the adapter of run 'random'" in info["summary"]


def test_provenance_best_effort_unknowns(tmp_path, two_runs):
    random, svd = two_runs
    assert provenance([svd], ["svd"])[0]["summary"].startswith("unknown (no config.yaml")
    write_config(svd, svd_init(tmp_path / "nowhere.safetensors"))
    info = provenance([svd], ["svd"])[0]
    assert info["factors_file"] is None and "file not found: teacher unknown" in info["summary"]
    (svd / "config.yaml").write_text("model: [unclosed", encoding="utf-8")
    assert provenance([svd], ["svd"])[0]["initializer"] == "unknown (config.yaml unreadable)"
    (svd / "config.yaml").write_text("trainer: {}\n", encoding="utf-8")
    assert provenance([svd], ["svd"])[0]["initializer"].startswith("unknown (no model.initializer")
    not_safetensors = tmp_path / "pickle.pt"
    not_safetensors.write_bytes(b"\x80\x04not a safetensors file")
    write_config(svd, svd_init(not_safetensors))
    info = provenance([svd], ["svd"])[0]
    assert info["factors_metadata"] is None and "no readable safetensors metadata" in info["summary"]
    teacher_gone = factor_file(tmp_path / "f.safetensors", {"source": str(tmp_path / "gone"), "source_kind": "delta"})
    write_config(svd, svd_init(teacher_gone))
    info = provenance([svd], ["svd"])[0]
    assert (info["teacher"], info["teacher_file"], info["teacher_kind"]) == (str(tmp_path / "gone"), None, "unknown")
    assert "(file not found: origin unknown)" in info["summary"]
    anonymous = factor_file(tmp_path / "t.safetensors", {"rank": "4"})
    write_config(
        svd, svd_init(factor_file(tmp_path / "g.safetensors", {"source": str(anonymous), "source_kind": "delta"}))
    )
    info = provenance([svd], ["svd"])[0]
    assert info["teacher_file"] == str(anonymous) and "of unknown origin (no source_adapter)" in info["summary"]


def test_run_metrics_step_zero_validation():
    scalars = {
        "train/loss": [(0, 2.0), (1, 1.0)],
        "val/loss": [(0, 2.5), (1, 1.5)],
        "val/token_accuracy": [(0, 0.25)],
        "val/perplexity": [(0, 12.0), (1, 4.0)],
    }
    m = run_metrics(scalars, target=1.5)
    assert m["initial_val"] == {"loss": 2.5, "token_accuracy": 0.25, "perplexity": 12.0}
    assert (m["initial_val_loss"], m["final_val_loss"], m["steps_to_target"], m["val_points"]) == (2.5, 1.5, 1, 2)
