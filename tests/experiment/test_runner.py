"""The experiment runner: a shortened tiny experiment yields every deliverable and resumes (through the library,
then the command line); the resume rules (skip what is complete, redo what follows a step that ran, ``force``) on
stand-in steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

from svdlora_pl.cli import main
from svdlora_pl.experiment import runner
from svdlora_pl.experiment.config import ExperimentConfig, load_experiment_config
from svdlora_pl.experiment.runner import Layout, Step, run_experiment

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
    layout = run_experiment(config)
    assert layout.root == out
    for name in DELIVERABLES:
        assert (out / name).is_file(), name
    assert {path for _, path in layout.deliverables()} >= {layout.teacher_dir, layout.svd_dir, layout.report}
    printed = capsys.readouterr().out
    assert f"wrote {out / 'training_results'} (2 runs" in printed and "staging" not in printed
    assert f"[experiment] teacher: svdlora synthesize --adapter {layout.run_root('random')}" in printed
    assert f"[experiment] factorize: svdlora factorize --delta {layout.teacher_file} --rank 8" in printed
    comparison = json.loads((out / "training_results/comparison.json").read_text())
    svd = next(run for run in comparison["runs"] if run["label"] == "svd")
    assert svd["provenance"]["circular_with"] == "random"
    svd_config = yaml.safe_load(next((out / "training_results/runs/svd").rglob("config.yaml")).read_text())
    assert svd_config["model"]["initializer"]["class_path"] == "svdlora_pl.initializers.SVDTeacherInit"
    callbacks = [c["class_path"] for c in svd_config["trainer"]["callbacks"]]
    assert callbacks == ["svdlora_pl.callbacks.LoRASpectrumMonitor", "svdlora_pl.callbacks.TeacherAlignmentMonitor"]

    random_adapter = out / DELIVERABLES[0]
    before = random_adapter.stat().st_mtime_ns
    (out / "svd_results/svd_factors_rank8.safetensors").unlink()  # step 3 lost: steps 3-5 run again
    report = out / "training_results/comparison_report.txt"
    report_before = report.stat().st_mtime_ns
    assert main(["experiment", "-c", str(quick_config(tmp_path)), "--output_dir", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "fit_random: done already" in summary and "teacher: done already" in summary
    assert "circular" in summary and "initial train loss (random -> svd)" in summary
    assert f"deliverables in {out}:" in summary
    assert random_adapter.stat().st_mtime_ns == before
    assert (out / "svd_results/svd_factors_rank8.safetensors").is_file()
    assert report.stat().st_mtime_ns > report_before
    assert len(list((out / "training_results/runs/svd").glob("lightning_logs/version_*"))) == 1


def stand_in_steps(ran: list[str]) -> tuple[Step, ...]:
    """Three steps that each write one file under the output directory and record that they ran."""

    def step(name: str) -> Step:
        def run(layout: Layout) -> None:
            ran.append(name)
            (layout.root / name).write_text(name)

        return Step(name, lambda layout: layout.root / name, run)

    return tuple(step(name) for name in ("first", "second", "third"))


def test_resume_skips_complete_steps_and_redoes_what_follows(tmp_path: Path, monkeypatch, capsys) -> None:
    ran: list[str] = []
    monkeypatch.setattr(runner, "STEPS", stand_in_steps(ran))
    config = ExperimentConfig(output_dir=tmp_path / "out", fit_config=ROOT / "configs/tiny.yaml")
    run_experiment(config)
    assert ran == ["first", "second", "third"]
    run_experiment(config)
    assert ran == ["first", "second", "third"]  # everything complete: nothing runs
    assert capsys.readouterr().out.count("done already") == 3
    (tmp_path / "out" / "second").unlink()
    ran.clear()
    run_experiment(config)
    assert ran == ["second", "third"]  # the third is complete but follows a step that ran
    ran.clear()
    run_experiment(config, force=True)
    assert ran == ["first", "second", "third"]


def test_a_failed_fit_stops_the_experiment(tmp_path: Path, monkeypatch) -> None:
    ran: list[str] = []
    steps = stand_in_steps(ran)

    def fail(layout: Layout) -> None:
        raise runner.StepFailed("second", 3)

    monkeypatch.setattr(runner, "STEPS", (steps[0], Step("second", steps[1].done, fail), steps[2]))
    config = ExperimentConfig(output_dir=tmp_path / "out", fit_config=ROOT / "configs/tiny.yaml")
    with pytest.raises(runner.StepFailed, match=r"step second failed \(exit code 3\)") as failed:
        run_experiment(config)
    assert failed.value.code == 3 and ran == ["first"]
