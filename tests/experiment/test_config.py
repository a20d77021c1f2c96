"""The experiment config: values checked when it is built (each error names the field), and YAML read through the
``svdlora experiment`` parser (types and choices checked by it, unknown fields refused)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

from svdlora_pl.errors import InputError
from svdlora_pl.experiment.config import (
    ArmConfig,
    ExperimentConfig,
    FullFinetuneConfig,
    LoRAConfig,
    SynthesisConfig,
    load_experiment_config,
)

FIT_CONFIG = ROOT / "configs/tiny.yaml"


def config(**changes: object) -> ExperimentConfig:
    return ExperimentConfig(**{"fit_config": FIT_CONFIG, **changes})


def test_defaults_and_teacher_rank():
    default = config()
    assert (default.lora, default.teacher, default.teacher_rank()) == (LoRAConfig(8, 16.0), "synthesized", 32)
    full = config(teacher="full_finetune", full_finetune=FullFinetuneConfig(target_rank=16))
    assert full.teacher_rank() == 16
    with pytest.raises(dataclasses.FrozenInstanceError):
        default.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lora": LoRAConfig(r=0)}, "lora.r: must be positive, got 0"),
        ({"lora": LoRAConfig(alpha=-1.0)}, "lora.alpha: must be positive, got -1.0"),
        ({"lr": float("nan")}, "lr: must be positive, got nan"),
        ({"epochs": 0}, "epochs: must be positive, got 0"),
        ({"full_finetune": FullFinetuneConfig(lr=0.0)}, "full_finetune.lr: must be positive"),
        ({"monitor_every_n_steps": 0}, "monitor_every_n_steps: must be positive"),
        ({"synthesis": SynthesisConfig(target_rank=4)}, "synthesis.target_rank: teacher rank 4 is below lora.r = 8"),
        (
            {"teacher": "full_finetune", "full_finetune": FullFinetuneConfig(target_rank=4)},
            "full_finetune.target_rank: teacher rank 4 is below lora.r = 8",
        ),
        ({"fit_config": Path("missing.yaml")}, "fit_config: missing.yaml not found"),
    ],
)
def test_bad_values_name_the_field(changes: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        config(**changes)


def write(tmp_path: Path, **fields: object) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump({"fit_config": str(FIT_CONFIG), **fields}))
    return path


def test_load_reads_every_field_and_takes_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        lora={"r": 4, "alpha": 8},
        lr=0.01,
        teacher="full_finetune",
        full_finetune={"target_rank": 16, "svd": "randomized", "fit_args": ["--trainer.max_steps=2"]},
        svd_init={"mode": "residual"},
    )
    loaded = load_experiment_config(path, f"--output_dir={tmp_path / 'out'}", "--lora.r=2")
    assert loaded == config(
        output_dir=tmp_path / "out",
        lora=LoRAConfig(2, 8.0),
        lr=0.01,
        teacher="full_finetune",
        full_finetune=FullFinetuneConfig(target_rank=16, svd="randomized", fit_args=["--trainer.max_steps=2"]),
        svd_init=dataclasses.replace(config().svd_init, mode="residual"),
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"teacher": "oracle"}, r'"teacher".*Got value: oracle'),
        ({"lora": {"r": 0}}, "lora.r: must be positive"),
        ({"lora": {"rank": 8}}, "'lora' does not accept option 'rank'"),
        ({"synthesis": {"target_rank": 4}}, "teacher rank 4 is below lora.r = 8"),
        ({"fit_config": "missing.yaml"}, "fit_config: missing.yaml not found"),
        ({"epochs": "four"}, r'"epochs".*Got value: four'),
        ({"fit_args": "--x"}, r'"fit_args".*Expected a <class .list.>'),
        ({"svd_init": {"split": "A"}}, r'"svd_init.split".*Got value: A'),
    ],
)
def test_bad_configs_name_the_field(tmp_path: Path, fields: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_experiment_config(write(tmp_path, **fields))


def test_bad_files_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("lora: [unclosed\n")
    with pytest.raises(InputError, match=f"{broken}: Problems parsing config"):
        load_experiment_config(broken)
    with pytest.raises(InputError, match="nowhere.yaml: file not found"):
        load_experiment_config(tmp_path / "nowhere.yaml")


def test_without_arms_the_study_is_the_two_run_experiment() -> None:
    legacy = config()
    assert [arm.name for arm in legacy.study_arms()] == ["random", "svd"]
    assert legacy.seed_list() == [0] and legacy.arm_grid(legacy.study_arms()[0]) == [legacy.lr]
    svd = legacy.study_arms()[1]
    assert (svd.class_path, svd.init_args, svd.teacher) == (
        "svdlora_pl.initializers.SVDTeacherInit", {"mode": "warm_start"}, "synthesized",
    )  # fmt: skip
    gradient = config(teacher="gradient").study_arms()[1]
    assert gradient.class_path.endswith("GradientSVDInit") and gradient.init_args["num_batches"] == 8
    assert config(teacher="gradient").teacher_kinds() == []


def test_arms_seeds_and_grids() -> None:
    arms = [
        ArmConfig("random"),
        ArmConfig("svd", "svdlora_pl.initializers.SVDTeacherInit", teacher="full_finetune", lr_grid=[0.01]),
        ArmConfig("budget", budget_of="svd"),
    ]
    study = config(arms=arms, lr_grid=[0.001, 0.003])
    assert study.seed_list() == [0, 1, 2]
    assert [study.arm_grid(arm) for arm in arms] == [[0.001, 0.003], [0.01], [0.001, 0.003]]
    assert study.teacher_kinds() == ["full_finetune"] and study.teacher_epochs("full_finetune") == 4
    assert config(arms=arms, seeds=2).seed_list() == [0, 1] and config(arms=arms, seeds=[7, 3]).seed_list() == [7, 3]


@pytest.mark.parametrize(
    ("arms", "extra", "message"),
    [
        ([], {}, "arms: needs at least one arm"),
        ([ArmConfig("a b")], {}, r"arms\[0\].name: 'a b' must be letters"),
        ([ArmConfig("a"), ArmConfig("a")], {}, r"arms\[1\].name: duplicate arm name 'a'"),
        ([ArmConfig("a", teacher="synthesized")], {}, r"arms\[0\].teacher: synthesized with .*RandomInit"),
        ([ArmConfig("a", "svdlora_pl.initializers.SVDTeacherInit")], {}, r"arms\[0\].teacher: none with"),
        ([ArmConfig("a", {"init_args": {}})], {}, r"arms\[0\].initializer: needs class_path"),
        ([ArmConfig("a"), ArmConfig("b", budget_of="a")], {}, r"arms\[1\].budget_of: arm 'a' has no teacher"),
        ([ArmConfig("a", budget_of="zz")], {}, "arms: no arm named 'zz'"),
        ([ArmConfig("a", lr_grid=[])], {}, r"arms\[0\].lr_grid: needs positive learning rates"),
        ([ArmConfig("a")], {"lr_grid": [0.1, -1.0]}, r"arms\[0\].lr_grid: needs positive"),
        ([ArmConfig("a")], {"seeds": 0}, "seeds: needs a count >= 1 or distinct seeds"),
        ([ArmConfig("a")], {"seeds": [1, 1]}, "seeds: needs a count >= 1 or distinct seeds"),
    ],
)
def test_bad_arms_name_the_field(arms: list, extra: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        config(arms=arms, **extra)


def test_arms_load_from_yaml_in_both_initializer_forms(tmp_path: Path) -> None:
    gradient = {"class_path": "svdlora_pl.initializers.GradientSVDInit", "init_args": {"num_batches": 2}}
    path = write(tmp_path, seeds=2, arms=[{"name": "random"}, {"name": "grad", "initializer": gradient}])
    loaded = load_experiment_config(path)
    assert loaded.study_arms() == [ArmConfig("random"), ArmConfig("grad", gradient)]
    assert loaded.study_arms()[1].init_args == {"num_batches": 2}
