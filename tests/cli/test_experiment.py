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
from svdlora_pl.experiment.config import ExperimentConfig
from svdlora_pl.experiment.runner import Layout, StepFailed, fit_command

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
    assert len(fields) == 26 and "full_finetune.svd" in fields and "gradient.oversample" in fields
    for name, doc in {**fields, "force": "Redo every step, even those whose output is complete."}.items():
        assert f"--{name} " in text and flat(doc) in text, name
    assert "rerunning resumes an interrupted experiment" in text


def test_shipped_configs_are_three():
    assert {p.name for p in SHIPPED} == {
        "tiny.yaml", "tiny_full_finetune.yaml", "tiny_gradient.yaml", "qwen2.5-math-7b-32gb.yaml",
    }  # fmt: skip


@pytest.mark.parametrize("shipped", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_parses_and_print_config_round_trips(shipped, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # their fit_config paths are relative to the repository root
    args = ["-c", str(shipped), "--output_dir", str(tmp_path / "out")]
    config, force = parse(args)
    assert force is False and config.output_dir == tmp_path / "out"
    assert config.fit_config.is_file() and config.teacher_rank() >= config.lora.r
    assert config == dataclasses.replace(parse(["-c", str(shipped)])[0], output_dir=tmp_path / "out")
    with pytest.raises(SystemExit) as exit_:
        main(["experiment", *args, "--print_config"])
    assert exit_.value.code == 0
    saved = tmp_path / "experiment.yaml"
    saved.write_text(capsys.readouterr().out, encoding="utf-8")
    assert parse(["-c", str(saved)]) == (config, False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("shipped", SHIPPED, ids=lambda p: p.name)
def test_every_fit_of_a_shipped_config_parses_as_svdlora_fit(shipped, tmp_path, capsys, monkeypatch):
    """The fits the experiment launches: its fit_config with the experiment's arguments, through `svdlora fit`."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr("sys.argv", ["svdlora"])  # LightningCLI warns when given args beside pytest's argv
    config, _ = parse(["-c", str(shipped), "--output_dir", str(tmp_path)])
    layout = Layout(config)
    fits = ["random", "svd", "full_finetune"] if config.teacher == "full_finetune" else ["random", "svd"]
    for name in fits:
        command = fit_command(layout, name)
        assert command[3] == "fit"
        with pytest.raises(SystemExit) as exit_:
            main([*command[3:], "--print_config"])
        assert exit_.value.code == 0, name
        fit = yaml.safe_load(capsys.readouterr().out)
        assert fit["trainer"]["default_root_dir"] == str(layout.run_root(name))
        assert fit["trainer"]["max_epochs"] == (
            config.full_finetune.epochs if name == "full_finetune" else config.epochs
        )
        callbacks = [c["class_path"] for c in fit["trainer"].get("callbacks") or []]
        if name == "full_finetune":
            assert fit["model"]["lora"] is None
            assert fit["model"]["optimizer"]["init_args"]["lr"] == config.full_finetune.lr
            continue
        assert (fit["model"]["lora"]["r"], fit["model"]["lora"]["alpha"]) == (config.lora.r, config.lora.alpha)
        assert fit["model"]["optimizer"]["init_args"]["lr"] == config.lr
        if name == "random":
            assert callbacks[-1:] == ["svdlora_pl.callbacks.LoRASpectrumMonitor"]
        elif config.teacher == "gradient":  # the fit takes its own teacher: no factor file, no alignment monitor
            initializer = fit["model"]["initializer"]
            assert initializer["class_path"].endswith("GradientSVDInit")
            assert initializer["init_args"] == {**dataclasses.asdict(config.gradient), "seed": 0}
            assert callbacks[-1:] == ["svdlora_pl.callbacks.LoRASpectrumMonitor"]
        else:
            initializer = fit["model"]["initializer"]
            assert initializer["class_path"] == "svdlora_pl.initializers.SVDTeacherInit"
            assert initializer["init_args"]["factors"] == str(layout.factors)
            assert initializer["init_args"]["mode"] == config.svd_init.mode
            assert callbacks[-2:] == [
                "svdlora_pl.callbacks.LoRASpectrumMonitor",
                "svdlora_pl.callbacks.TeacherAlignmentMonitor",
            ]
            alignment = fit["trainer"]["callbacks"][-1]["init_args"]
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


def test_force_reaches_the_runner(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_run(config: ExperimentConfig, force: bool = False) -> Layout:
        calls.append((config.output_dir, force))
        raise StepFailed("fit_random", 3)

    monkeypatch.setattr("svdlora_pl.experiment.runner.run_experiment", fake_run)
    base = ["--fit_config", str(ROOT / "configs/tiny.yaml"), "--output_dir", str(tmp_path / "out")]
    assert main(["experiment", *base, "--force", "true"]) == 3
    assert main(["experiment", *base]) == 3
    assert calls == [(tmp_path / "out", True), (tmp_path / "out", False)]
    assert "step fit_random failed (exit code 3); rerun the same command to resume" in capsys.readouterr().out
