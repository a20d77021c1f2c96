"""The ``svdlora`` command: every shipped config parses and instantiates; user errors exit 2 in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import ROOT

from svdlora_pl.cli.lightning import SvdloraCLI
from svdlora_pl.cli.main import main
from svdlora_pl.embedded.tiny import TINY_MODEL
from svdlora_pl.training.datamodule import QADataModule
from svdlora_pl.training.module import QwenLoRAModule

CONFIG_ROOT = ROOT / "configs"
ALL_CONFIGS = sorted(CONFIG_ROOT.rglob("*.yaml"))
CONFIGS = [p for p in ALL_CONFIGS if p.parent.name not in ("experiment", "federated")]  # `svdlora fit` configs
# Runs every config on this machine: the tiny model instead of a hub name, CPU and fp32 instead of GPU/bf16.
CPU_TINY = [
    f"--model.model_name_or_path={TINY_MODEL}",
    "--model.dtype=float32",
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.precision=32-true",
]


def test_configs_exist():
    assert {p.name for p in CONFIGS} >= {"tiny.yaml", "qwen2.5-math-7b-32gb.yaml"}


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_ROOT)))
def test_config_starts_with_the_command_that_runs_it(config):
    first = config.read_text().splitlines()[0]
    assert first.startswith("# svdlora ") and f"-c configs/{config.relative_to(CONFIG_ROOT)}" in first


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_ROOT)))
def test_config_parses_and_instantiates(config, tmp_path):
    if "FSDPStrategy" in config.read_text():  # parses (wrap policies included); Lightning's FSDP needs CUDA
        with pytest.raises(ValueError, match="requires a GPU accelerator"):
            SvdloraCLI(
                QwenLoRAModule, QADataModule, args=["-c", str(config), *CPU_TINY], run=False,
                auto_configure_optimizers=False,
            )  # fmt: skip
        return
    cli = SvdloraCLI(
        QwenLoRAModule,
        QADataModule,
        args=["-c", str(config), *CPU_TINY, f"--trainer.default_root_dir={tmp_path}"],
        run=False,
        auto_configure_optimizers=False,
    )
    assert isinstance(cli.model, QwenLoRAModule) and isinstance(cli.datamodule, QADataModule)
    assert cli.datamodule.tokenizer_name == TINY_MODEL  # linked from the model
    assert cli.trainer.default_root_dir == str(tmp_path)


def test_print_config_of_the_reference_run(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", "configs/qwen2.5-math-7b-32gb.yaml", "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    for expected in (
        "Qwen/Qwen2.5-Math-7B-Instruct",
        "r: 16",
        "accumulate_grad_batches: 4",
        "bf16-mixed",
        "gradient_checkpointing: true",
        "class_path: torch.optim.AdamW",
        "lr: 0.0002",
    ):
        assert expected in printed


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data.train_file=missing.jsonl"], "missing.jsonl: file not found (data.train_file)"),
        (["--model.lora.r=0"], "model.lora.r: must be a positive integer"),
        (["--model.lora.target_modules=[qkv]"], "model.lora.target_modules: 'qkv'"),
        (["--data.val_fraction=1.5"], "data.val_fraction"),
    ],
)
def test_user_errors_exit_2_with_one_line(args, message, tmp_path, capsys):
    assert main(["fit", f"--trainer.default_root_dir={tmp_path}", *args]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("svdlora: error:")]
    assert len(lines) == 1 and message in lines[0]


def test_malformed_data_file_exits_2_from_the_console_script(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"question": "q", "answer": "a"}\n{"question": \n')
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "svdlora_pl.cli",
            "fit",
            f"--data.train_file={data}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.max_steps=1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert f"svdlora: error: {data}:2: invalid JSON" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("adapter"))


@pytest.mark.parametrize("preset", sorted((ROOT / "callbacks").glob("*.yaml")), ids=lambda p: p.name)
def test_callback_presets_add_their_callback(preset, tmp_path):
    from svdlora_pl.lora.factor_files import save_factors
    from svdlora_pl.lora.layers import find_lora_layers

    first = preset.read_text().splitlines()[0]
    assert first.startswith(f"# svdlora fit -c configs/tiny.yaml -c callbacks/{preset.name}")
    factors = tmp_path / "teacher.safetensors"
    module = QwenLoRAModule()
    module.configure_model()
    refs = find_lora_layers(module)
    save_factors(factors, {ref.name: (ref.B.detach() + 1.0, ref.A.detach()) for ref in refs})
    extra = [f"--trainer.callbacks.factors={factors}"] if "factors" in preset.read_text() else []
    cli = SvdloraCLI(
        QwenLoRAModule,
        QADataModule,
        args=["-c", "configs/tiny.yaml", "-c", str(preset), *extra, f"--trainer.default_root_dir={tmp_path}"],
        run=False,
        auto_configure_optimizers=False,
    )
    class_path = preset.read_text().split("class_path: ")[1].split()[0]
    assert any(
        f"{type(c).__module__.rsplit('.', 1)[0]}.{type(c).__name__}" == class_path for c in cli.trainer.callbacks
    )
