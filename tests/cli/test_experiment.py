"""``svdlora experiment`` on the command line: the help documents every config field, ``--print_config``
round-trips, every shipped config parses and so does every fit it would launch, and bad input exits 2 with one line
and nothing written."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml
from docstring_parser import parse as parse_doc
from helpers import ROOT

from svdlora_pl.cli import main
from svdlora_pl.cli.experiment import parse
from svdlora_pl.experiment.config import RUN_OPTIONS, ExperimentConfig
from svdlora_pl.experiment.plan import Fit, Layout, arm_fits, teacher_fits
from svdlora_pl.experiment.runner import StudyRun

SHIPPED = sorted((ROOT / "configs/experiment").glob("*.yaml"))


def flat(text: str) -> str:
    return " ".join(text.split())


def documented_fields(cls: type, prefix: str = "") -> dict[str, str]:
    """Every (dotted) field of a config dataclass -> its ``Args:`` text."""
    docs = {param.arg_name: param.description for param in parse_doc(inspect.getdoc(cls)).params}
    fields: dict[str, str] = {}
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(field.default_factory):
            fields.update(documented_fields(field.default_factory, f"{prefix}{field.name}."))
        else:
            fields[prefix + field.name] = docs[field.name]
    return fields


def test_help_lists_every_field_with_its_doc(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["experiment", "--help"])
    assert exit_.value.code == 0
    text = flat(capsys.readouterr().out)
    fields = documented_fields(ExperimentConfig)
    assert len(fields) == 29 and "full_finetune.svd" in fields and "gradient.oversample" in fields
    assert {"arms", "seeds", "lr_grid"} <= set(fields)
    for name, doc in {**fields, **{name: help_ for name, (_, _, help_) in RUN_OPTIONS.items()}}.items():
        assert f"--{name} " in text and flat(doc) in text, name
    assert "rerunning resumes an interrupted study" in text


def test_shipped_configs_are_five():
    assert {p.name for p in SHIPPED} == {
        "tiny.yaml", "tiny_full_finetune.yaml", "tiny_gradient.yaml", "tiny_study.yaml", "qwen2.5-math-7b-32gb.yaml",
    }  # fmt: skip


@pytest.mark.parametrize("shipped", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_parses_and_print_config_round_trips(shipped, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # their fit_config paths are relative to the repository root
    args = ["-c", str(shipped), "--output_dir", str(tmp_path / "out")]
    config, run = parse(args)
    assert run == {name: default for name, (_, default, _) in RUN_OPTIONS.items()}
    assert config.output_dir == tmp_path / "out"
    assert config.fit_config.is_file() and config.teacher_rank() >= config.lora.r
    assert config == dataclasses.replace(parse(["-c", str(shipped)])[0], output_dir=tmp_path / "out")
    with pytest.raises(SystemExit) as exit_:
        main(["experiment", *args, "--print_config"])
    assert exit_.value.code == 0
    saved = tmp_path / "experiment.yaml"
    saved.write_text(capsys.readouterr().out, encoding="utf-8")
    assert parse(["-c", str(saved)]) == (config, run)
    assert not (tmp_path / "out").exists()


def one_fit_per_kind(layout: Layout) -> list[Fit]:
    """The teachers' fits and each arm's first fit (the others differ from it only in lr and seed)."""
    firsts = {fit.arm: fit for fit in reversed(arm_fits(layout))}
    return list({fit.key: fit for fit in [*teacher_fits(layout).values(), *firsts.values()]}.values())


@pytest.mark.parametrize("shipped", SHIPPED, ids=lambda p: p.name)
def test_every_fit_of_a_shipped_config_parses_as_svdlora_fit(shipped, tmp_path, capsys, monkeypatch):
    """The fits the study launches: its fit_config with the study's arguments, through `svdlora fit`."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr("sys.argv", ["svdlora"])  # LightningCLI warns when given args beside pytest's argv
    config, _ = parse(["-c", str(shipped), "--output_dir", str(tmp_path)])
    layout = Layout(config)
    fits = arm_fits(layout)
    assert len(fits) == sum(len(config.arm_grid(arm)) for arm in config.study_arms()) * len(config.seed_list())
    for fit in fits:
        assert f"--model.optimizer.init_args.lr={fit.lr}" in fit.args and f"--data.seed={fit.seed}" in fit.args
    for fit in one_fit_per_kind(layout):
        command = fit.command()
        assert command[3] == "fit"
        with pytest.raises(SystemExit) as exit_:
            main([*command[3:], "--print_config"])
        assert exit_.value.code == 0, fit.key
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["trainer"]["default_root_dir"] == str(layout.run_root(fit.key)) == str(fit.root)
        assert printed["seed_everything"] == printed["data"]["seed"] == fit.seed
        callbacks = [c["class_path"] for c in printed["trainer"].get("callbacks") or []]
        if fit.key == "teacher_full_finetune":
            assert printed["model"]["lora"] is None and printed["trainer"]["max_epochs"] == config.full_finetune.epochs
            assert printed["model"]["optimizer"]["init_args"]["lr"] == config.full_finetune.lr
            continue
        arm = config.arm(fit.arm) if fit.arm else None
        budget = config.teacher_epochs(config.arm(arm.budget_of).teacher) if arm and arm.budget_of else 0
        assert printed["trainer"]["max_epochs"] == config.epochs + budget
        lora = printed["model"]["lora"]
        assert (lora["r"], lora["alpha"]) == (config.lora.r, config.lora.alpha)
        assert printed["model"]["optimizer"]["init_args"]["lr"] == fit.lr
        initializer = printed["model"]["initializer"]
        if arm is not None:
            assert initializer["class_path"] == arm.class_path
            assert arm.init_args.items() <= initializer["init_args"].items()
        if fit.teacher is None:
            assert callbacks[-1:] == ["svdlora_pl.callbacks.LoRASpectrumMonitor"]
            continue
        assert initializer["init_args"]["factors"] == str(layout.factors(fit.teacher))
        assert callbacks[-2:] == [
            "svdlora_pl.callbacks.LoRASpectrumMonitor",
            "svdlora_pl.callbacks.TeacherAlignmentMonitor",
        ]
        alignment = printed["trainer"]["callbacks"][-1]["init_args"]
        assert alignment["every_n_steps"] == config.monitor_every_n_steps


def bad_cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    def config_file(name: str, text: str) -> str:
        path = tmp / f"{name}.yaml"
        path.write_text(f"fit_config: {ROOT / 'configs/tiny.yaml'}\n{text}")
        return str(path)

    return {
        "not valid YAML": (["-c", config_file("broken", "lora: [unclosed\n")], "Problems parsing config"),
        "unknown teacher": (["-c", config_file("oracle", "teacher: oracle\n")], "Got value: oracle"),
        "lora.r 0": (["-c", config_file("r0", "lora: {r: 0}\n")], "lora.r: must be positive, got 0"),
        "unknown field": (["-c", config_file("rank", "lora: {rank: 8}\n")], "'lora' does not accept option 'rank'"),
        "teacher rank": (["--synthesis.target_rank", "4"], "synthesis.target_rank: teacher rank 4 is below lora.r = 8"),
        "missing fit_config": (["--fit_config", "missing.yaml"], "fit_config: missing.yaml not found"),
        "epochs not an integer": (["--epochs", "four"], '"epochs"'),
        "fit_args not a list": (["-c", config_file("fit_args", "fit_args: --x\n")], '"fit_args"'),
        "missing config file": (["-c", str(tmp / "nowhere.yaml")], "nowhere.yaml"),
        "old spelling": (["--output-dir", str(tmp / "out")], "unrecognized arguments: --output-dir"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "not valid YAML",
        "unknown teacher",
        "lora.r 0",
        "unknown field",
        "teacher rank",
        "missing fit_config",
        "epochs not an integer",
        "fit_args not a list",
        "missing config file",
        "old spelling",
    ],
)
def test_bad_input_exits_2_one_line_nothing_written(case, tmp_path, capsys):
    args, message = bad_cases(tmp_path)[case]
    out = tmp_path / "out"
    assert main(["experiment", *args, "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    first, *rest = err.splitlines()
    assert first.startswith("svdlora: error: ") and message in first and "Traceback" not in err
    assert rest in ([], ["see 'svdlora experiment --help'"])  # a command-line error adds where to look
    assert not out.exists()


def test_run_options_reach_the_runner_and_a_failed_fit_exits_1(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_run(config: ExperimentConfig, **options: object) -> StudyRun:
        calls.append((config.output_dir, options))
        return StudyRun(Layout(config), {"random/lr0.003-seed0": "failed: exit code 3", "svd/lr0.003-seed0": "done"})

    monkeypatch.setattr("svdlora_pl.experiment.runner.run_experiment", fake_run)
    base = ["--fit_config", str(ROOT / "configs/tiny.yaml"), "--output_dir", str(tmp_path / "out")]
    assert main(["experiment", *base, "--force", "true", "--jobs", "3"]) == 1
    assert main(["experiment", *base, "--dry_run", "true"]) == 0
    assert calls == [
        (tmp_path / "out", {"force": True, "jobs": 3, "dry_run_only": False, "report_only": False}),
        (tmp_path / "out", {"force": False, "jobs": 1, "dry_run_only": True, "report_only": False}),
    ]
    printed = capsys.readouterr().out
    assert "random/lr0.003-seed0 failed: exit code 3; rerun the same command to retry it" in printed
