"""``svdlora experiment``: a shortened tiny experiment yields every deliverable and resumes; bad configs exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

from svdlora_pl.cli import main
from svdlora_pl.errors import InputError
from svdlora_pl.experiment.config import load_experiment_config

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
    assert main(["experiment", "-c", str(quick_config(tmp_path)), "--output-dir", str(out)]) == 0
    for name in DELIVERABLES:
        assert (out / name).is_file(), name
    summary = capsys.readouterr().out
    assert "circular" in summary and "initial train loss (random -> svd)" in summary
    assert f"wrote {out / 'training_results'} (2 runs" in summary and "staging" not in summary
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
    assert main(["experiment", "-c", str(quick_config(tmp_path)), "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fit_random: done already" in printed and "teacher: done already" in printed
    assert random_adapter.stat().st_mtime_ns == before
    assert (out / "svd_results/svd_factors_rank8.safetensors").is_file()
    assert report.stat().st_mtime_ns > report_before
    assert len(list((out / "training_results/runs/svd").glob("lightning_logs/version_*"))) == 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"teacher": "oracle"}, "teacher: must be one of synthesized, full_finetune"),
        ({"lora": {"r": 0}}, "lora.r: must be positive"),
        ({"lora": {"rank": 8}}, "lora.rank: unknown field"),
        ({"synthesis": {"target_rank": 4}}, "teacher rank 4 is below lora.r = 8"),
        ({"fit_config": "missing.yaml"}, "fit_config: missing.yaml not found"),
        ({"epochs": "four"}, "epochs: expected an integer"),
        ({"fit_args": "--x"}, "fit_args: expected a list of strings"),
    ],
)
def test_bad_configs_name_the_field(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_experiment_config(quick_config(tmp_path, **changes))


def test_cli_exits_2_on_bad_config(tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("lora: [unclosed\n")
    assert main(["experiment", "-c", str(broken), "--output-dir", str(tmp_path / "out")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_shipped_experiment_configs_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # their fit_config paths are relative to the repository root
    paths = sorted((ROOT / "configs/experiment").glob("*.yaml"))
    assert len(paths) == 3
    for path in paths:
        config = load_experiment_config(path)
        assert config.teacher_rank() >= config.lora.r
