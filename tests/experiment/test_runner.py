"""The experiment runner: a shortened tiny two-run experiment yields every deliverable and resumes (through the
library, then the command line); the scheduling rules are tested on stand-in tasks in test_scheduler.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

from svdlora_pl.cli import main
from svdlora_pl.experiment.config import load_experiment_config
from svdlora_pl.experiment.runner import run_experiment

QUICK_ARGS = [
    "--trainer.limit_train_batches=3",
    "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def quick_config(tmp_path: Path, **changes: object) -> Path:
    config = yaml.safe_load((ROOT / "configs/experiment/tiny.yaml").read_text())
    config.update(fit_config=str(ROOT / "configs/tiny.yaml"), fit_args=QUICK_ARGS, epochs=1, monitor_every_n_steps=1)
    config.update(changes)
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


DELIVERABLES = [
    "training_results/final_model_random/adapter_model.safetensors",
    "training_results/final_model_svd/adapter_model.safetensors",
    "synthesized_teacher/synthesized_delta_rank32.safetensors",
    "synthesized_teacher/synthesis_report.txt",
    "synthesized_teacher/synthesis_report.json",
    "synthesized_teacher/synthesis_plots.png",
    "svd_results/svd_factors_rank8.safetensors",
    "svd_results/svd_analysis_rank8.json",
    "svd_results/svd_report_rank8.txt",
    "svd_results/svd_analysis_rank8.png",
    "training_results/comparison.json",
    "training_results/comparison_report.txt",
    "training_results/comparison_random_vs_svd.png",
    "training_results/training_log_random.csv",
    "training_results/training_log_svd.csv",
]


def test_quick_experiment_writes_every_deliverable_and_resumes(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    config = load_experiment_config(quick_config(tmp_path), f"--output_dir={out}")
    result = run_experiment(config)
    layout = result.layout
    assert layout.root == out and result.failed == []
    for name in DELIVERABLES:
        assert (out / name).is_file(), name
    assert {path for _, path in layout.deliverables()} >= {
        layout.teacher_dir("synthesized"), layout.svd_dir("synthesized"), layout.report,
    }  # fmt: skip
    printed = capsys.readouterr().out
    random_run = layout.run_root("random/lr0.003-seed0")
    assert f"[experiment] report: wrote {layout.report}" in printed and "staging" not in printed
    assert "teacher_lora" not in printed  # the synthesized teacher comes from the random arm's own fit
    assert f"[experiment] teacher_synthesized: svdlora synthesize --adapter {random_run}" in printed
    factors = layout.factors("synthesized")
    teacher = layout.teacher_file("synthesized")
    assert f"[experiment] teacher_synthesized: svdlora factorize --delta {teacher} --rank 8" in printed
    study = json.loads((out / "training_results/comparison.json").read_text())
    svd = next(arm for arm in study["arms"] if arm["name"] == "svd")
    assert svd["provenance"]["circular_with"] == "random/lr0.003-seed0"
    assert svd["metrics"]["final_val_loss"]["n"] == 1 and svd["vs_reference"]["final_val_loss"]["ci95"] is None
    svd_config = yaml.safe_load(next((out / "training_results/runs/svd").rglob("config.yaml")).read_text())
    assert svd_config["model"]["initializer"]["class_path"] == "svdlora_pl.initializers.SVDTeacherInit"
    callbacks = [c["class_path"] for c in svd_config["trainer"]["callbacks"]]
    assert callbacks == ["svdlora_pl.callbacks.LoRASpectrumMonitor", "svdlora_pl.callbacks.TeacherAlignmentMonitor"]
    assert "circular" in (out / "training_results/comparison_report.txt").read_text()

    random_adapter = out / DELIVERABLES[0]
    random_log = next(random_run.rglob("events.out.tfevents.*")).stat().st_mtime_ns
    factors.unlink()  # the teacher's factors lost: the teacher and the fits from it run again
    report = out / "training_results/comparison_report.txt"
    report_before = report.stat().st_mtime_ns
    assert main(["experiment", "-c", str(quick_config(tmp_path)), "--output_dir", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "random/lr0.003-seed0: done already" in summary and "teacher_synthesized: done" in summary
    assert "svd/lr0.003-seed0: done" in summary and "Mean ± std over seeds" in summary
    assert f"deliverables in {out}:" in summary
    assert next(random_run.rglob("events.out.tfevents.*")).stat().st_mtime_ns == random_log
    assert random_adapter.is_file() and factors.is_file()
    assert report.stat().st_mtime_ns > report_before
    assert len(list((out / "training_results/runs/svd").rglob("lightning_logs/version_*"))) == 1


@pytest.mark.slow
def test_quick_study_runs_two_jobs_reports_a_failed_fit_and_resumes(tmp_path: Path, capsys) -> None:
    """Arms from both teachers and a budget-matched control, two seeds, two fits at once; one arm's fits fail."""
    broken = {"class_path": "svdlora_pl.initializers.GradientSVDInit", "init_args": {"num_batches": 0}}
    path = quick_config(
        tmp_path, seeds=2, lr_grid=[0.003], arms=[
            {"name": "random"},
            {"name": "svd", "initializer": "svdlora_pl.initializers.SVDTeacherInit", "teacher": "synthesized"},
            {"name": "full", "initializer": "svdlora_pl.initializers.SVDTeacherInit", "teacher": "full_finetune"},
            {"name": "budget", "budget_of": "full"},
            {"name": "broken", "initializer": broken},
        ], full_finetune={"epochs": 1},
    )  # fmt: skip
    out = tmp_path / "out"
    args = ["experiment", "-c", str(path), "--output_dir", str(out)]
    assert main([*args, "--dry_run", "true"]) == 0
    script = capsys.readouterr().out
    assert script.count("\nsvdlora fit ") == 11 and "# stage 3: 4 tasks" in script and not out.exists()
    assert main([*args, "--jobs", "2"]) == 1  # the broken arm's fits failed; the rest is reported
    printed = capsys.readouterr().out
    assert "broken/lr0.003-seed0: failed: exit code 2: svdlora: error: model.initializer" in printed
    study = json.loads((out / "training_results/comparison.json").read_text())
    arms = {arm["name"]: arm for arm in study["arms"]}
    assert arms["svd"]["metrics"]["final_val_loss"]["n"] == 2 and arms["broken"]["fits"] == []
    assert arms["svd"]["vs_reference"]["final_val_loss"]["ci95"] is not None
    assert arms["full"]["provenance"]["teacher_kind"] == "full_finetune"
    assert arms["budget"]["budget"]["matched"]["extra_steps"] == arms["full"]["budget"]["teacher"]["fit_steps"] == 3
    assert (out / "svd_results/full_finetune/svd_factors_rank8.safetensors").is_file()
    assert arms["budget"]["budget"]["train_steps"]["mean"] == 6
    record = json.loads((out / "training_results/runs/svd/lr0.003-seed1/fit.json").read_text())
    assert record["env"]["OMP_NUM_THREADS"] == "1" and record["exit_code"] == 0
    report = (out / "training_results/comparison_report.txt").read_text()
    assert "Fits not in the report (2):" in report and "budget is budget-matched to full" in report
    for name in ("training_log_random_seed0.csv", "training_log_svd_seed1.csv", "comparison_random_vs_svd.png"):
        assert (out / "training_results" / name).is_file()
    assert main([*args, "--report_only", "true"]) == 0
    assert "random/lr0.003-seed1: done already" not in capsys.readouterr().out  # report_only runs nothing
