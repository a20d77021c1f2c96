"""Every user error of every command: one ``svdlora: error:`` line (plus at most one hint), exit code 2, no traceback,
and nothing new under the output root; pickles are never executed."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from builders import make_adapter, make_run
from helpers import ROOT

from svdlora_pl.cli.main import main
from svdlora_pl.embedded.tiny import TINY_MODEL, resolve_model_path

FIT = ["fit", "-c", "configs/tiny.yaml", "--trainer.max_steps=1", "--trainer.limit_val_batches=1"]
QA = {"question": "What is P(heads)?", "answer": "1/2"}


class Evil:
    """A pickle that would write a file if it were ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "executed"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Inputs shared by the cases: a real checkpoint (r=8), data files, adapters, a factor file, a run, a file."""
    from svdlora_pl.lora.factor_files import save_factors

    root = tmp_path_factory.mktemp("inputs")
    os.chdir(ROOT)
    assert main([*FIT, f"--trainer.default_root_dir={root / 'fit'}", "--trainer.enable_progress_bar=false"]) == 0
    (checkpoint,) = (root / "fit").rglob("*.ckpt")
    data = root / "data"
    data.mkdir()
    lines = {
        "empty.jsonl": "",
        "malformed.jsonl": json.dumps(QA) + '\n{"question": \n',
        "no_answer.jsonl": json.dumps({"question": "q"}) + "\n",
        "wrong_type.jsonl": json.dumps({"question": 3, "answer": "a"}) + "\n",
        "long.jsonl": json.dumps({"question": "word " * 400, "answer": "a"}) + "\n",
        "no_assistant.jsonl": json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n",
    }
    for name, text in lines.items():
        (data / name).write_text(text, encoding="utf-8")
    (data / "latin1.jsonl").write_bytes(json.dumps(QA).replace("heads", "t\u00eate").encode("latin-1") + b"\n")
    raw = checkpoint.read_bytes()
    (root / "truncated.ckpt").write_bytes(raw[: len(raw) // 3])
    (root / "random.ckpt").write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    (root / "evil.ckpt").write_bytes(pickle.dumps({"state_dict": {}, "x": Evil(root / "executed")}))
    (root / "a_file").write_text("not a directory")
    make_adapter(root / "adapter_a", 4, 8.0, seed=0)
    make_adapter(root / "adapter_b", 8, 16.0, seed=1)
    generator = torch.Generator().manual_seed(0)
    save_factors(root / "factors.safetensors", {"m": (torch.randn(6, 2, generator=generator), torch.randn(2, 5))})
    make_run(root / "run", [3.0, 2.0, 1.5, 1.2, 1.0])
    model = resolve_model_path(TINY_MODEL)
    (root / "bin_only").mkdir()
    for item in Path(model).iterdir():
        if item.suffix != ".safetensors":
            shutil.copy(item, root / "bin_only" / item.name)
    torch.save({"w": torch.zeros(1)}, root / "bin_only" / "pytorch_model.bin")
    shutil.copytree(model, root / "custom_code")
    config = json.loads((root / "custom_code" / "config.json").read_text())
    auto_map = {"AutoConfig": "modeling_custom.MyConfig", "AutoModelForCausalLM": "modeling_custom.MyModel"}
    config.update(model_type="my_custom", auto_map=auto_map)
    (root / "custom_code" / "config.json").write_text(json.dumps(config))
    shutil.copytree(model, root / "unknown_arch")
    config["auto_map"] = {}
    (root / "unknown_arch" / "config.json").write_text(json.dumps(config))
    (root / "custom_code" / "modeling_custom.py").write_text(f"open({str(root / 'executed')!r}, 'w').write('x')\n")
    return {"root": root, "checkpoint": checkpoint, "data": data}


def fit(root: Path, *args: str) -> list[str]:
    return [*FIT, f"--trainer.default_root_dir={root}", *args]


Case = Callable[[dict[str, Path], Path], list[str]]
CASES: dict[str, tuple[Case, str]] = {
    # 1. data errors found at setup: no version dir, no config.yaml, no event file
    "empty data": (lambda i, o: fit(o, f"--data.train_file={i['data']}/empty.jsonl"), "no records (data.train_file)"),
    "malformed JSON": (lambda i, o: fit(o, f"--data.train_file={i['data']}/malformed.jsonl"), "invalid JSON"),
    "missing answer": (lambda i, o: fit(o, f"--data.train_file={i['data']}/no_answer.jsonl"), "answer"),
    "wrong type": (lambda i, o: fit(o, f"--data.train_file={i['data']}/wrong_type.jsonl"), "got an int"),
    "all too long": (
        lambda i, o: fit(o, f"--data.train_file={i['data']}/long.jsonl", "--data.max_length=16"),
        "dropped by the length policy",
    ),
    "not UTF-8": (lambda i, o: fit(o, f"--data.train_file={i['data']}/latin1.jsonl"), "UTF-8"),
    "no assistant turn": (
        lambda i, o: fit(o, f"--data.train_file={i['data']}/no_assistant.jsonl"),
        "assistant",
    ),
    "directory as data file": (lambda i, o: fit(o, f"--data.train_file={i['data']}"), "is a directory"),
    # 2. optimizer arguments
    "negative lr": (lambda i, o: fit(o, "--model.optimizer.init_args.lr=-0.1"), "model.optimizer.init_args.lr:"),
    "negative weight decay": (
        lambda i, o: fit(o, "--model.optimizer.init_args.weight_decay=-1"),
        "model.optimizer.init_args.weight_decay:",
    ),
    # 3. bad checkpoints (a pickle is refused, never run)
    "missing ckpt": (lambda i, o: fit(o, f"--ckpt_path={o}/missing.ckpt"), "ckpt_path:"),
    "truncated ckpt": (lambda i, o: fit(o, f"--ckpt_path={i['root']}/truncated.ckpt"), "not a readable checkpoint"),
    "random bytes ckpt": (lambda i, o: fit(o, f"--ckpt_path={i['root']}/random.ckpt"), "ckpt_path:"),
    "pickle ckpt": (lambda i, o: fit(o, f"--ckpt_path={i['root']}/evil.ckpt"), "not a weights-only checkpoint"),
    # 6. a checkpoint whose trained tensors do not fit the configured model
    "ckpt of another rank": (
        lambda i, o: fit(o, f"--ckpt_path={i['checkpoint']}", "--model.lora.r=4"),
        "model.lora.r: 4 in the config, 8 in the checkpoint",
    ),
    "ckpt of LoRA, full config": (
        lambda i, o: [
            "validate",
            "-c",
            "configs/tiny.yaml",
            f"--trainer.default_root_dir={o}",
            "--model.lora=null",
            f"--ckpt_path={i['checkpoint']}",
        ],
        "model.lora:",
    ),  # fmt: skip
    # 4. output paths under a regular file
    "fit root under a file": (lambda i, o: fit(Path(i["root"]) / "a_file" / "sub"), "is a file, not a directory"),
    "factorize under a file": (
        lambda i, o: [
            "factorize",
            "--delta",
            f"{i['root']}/factors.safetensors",
            "--rank",
            "1",
            "--output_dir",
            f"{i['root']}/a_file/sub",
        ],
        "output_dir:",
    ),  # fmt: skip
    "synthesize under a file": (
        lambda i, o: [
            "synthesize",
            "--adapter",
            f"{i['root']}/adapter_a",
            "--target_rank",
            "8",
            "--output_dir",
            f"{i['root']}/a_file/sub",
        ],
        "output_dir:",
    ),  # fmt: skip
    "aggregate under a file": (
        lambda i, o: [
            "aggregate",
            "--adapters",
            f"[{i['root']}/adapter_a, {i['root']}/adapter_b]",
            "--method",
            "stack",
            "--output_dir",
            f"{i['root']}/a_file/sub",
        ],
        "output_dir:",
    ),  # fmt: skip
    "compare under a file": (
        lambda i, o: ["compare", "--run_dirs", f"[{i['root']}/run]", "--output_dir", f"{i['root']}/a_file/sub"],
        "output_dir:",
    ),  # fmt: skip
    "estimate-memory json under a file": (
        lambda i, o: ["estimate-memory", "-c", "configs/tiny.yaml", "--json", f"{i['root']}/a_file/plan.json"],
        "json:",
    ),
    "experiment output is a file": (
        lambda i, o: ["experiment", "-c", "configs/experiment/tiny.yaml", "--output_dir", f"{i['root']}/a_file"],
        "output_dir:",
    ),
    "experiment output under a file": (
        lambda i, o: ["experiment", "-c", "configs/experiment/tiny.yaml", "--output_dir", f"{i['root']}/a_file/sub"],
        "output_dir:",
    ),
    "aggregate one adapter": (
        lambda i, o: [
            "aggregate",
            "--adapters",
            f"[{i['root']}/adapter_a]",
            "--method",
            "stack",
            "--output_dir",
            f"{o}/merged",
        ],
        "adapters: needs at least 2",
    ),  # fmt: skip
    # 8. argument errors of fit: one line and one hint
    "unknown key": (lambda i, o: fit(o, "--model.no_such_key=1"), "unrecognized arguments"),
    "invalid YAML": (lambda i, o: ["fit", "-c", f"{i['data']}/malformed.jsonl"], "svdlora: error:"),
    "missing -c file": (lambda i, o: ["fit", "-c", f"{o}/missing.yaml"], "missing.yaml"),
}


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("svdlora: error:")]
    assert len(lines) == 1, stderr[-2000:]
    after = stderr.splitlines()[stderr.splitlines().index(lines[0]) + 1 :]
    assert len([line for line in after if line.strip()]) <= 1, after  # at most the hint
    return lines[0]


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*")) if root.exists() else []


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_user_error_is_one_line_exit_2_and_nothing_written(case, inputs, tmp_path, capsys):
    build, expected = CASES[case]
    output = tmp_path / "out"
    before = files_under(inputs["root"])
    code = main(build(inputs, output))
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and expected in line
    assert files_under(output) == [] and files_under(inputs["root"]) == before
    assert not (inputs["root"] / "executed").exists()


MODEL_CASES = {
    "hub name not cached, offline": ("nonexistent-org/nonexistent-model", "download it first"),
    "pickled weights only": ("bin_only", "convert them to safetensors"),
    "custom code": ("custom_code", "set model.trust_remote_code: true"),
    "unknown architecture": ("unknown_arch", "does not recognize this architecture"),
}


@pytest.mark.parametrize("case", list(MODEL_CASES), ids=list(MODEL_CASES))
def test_model_that_cannot_be_loaded_is_one_line_from_the_console_script(case, inputs, tmp_path):
    name, expected = MODEL_CASES[case]
    model = name if "/" in name else str(inputs["root"] / name)
    result = subprocess.run(
        [sys.executable, "-m", "svdlora_pl.cli", *fit(tmp_path / "out", f"--model.model_name_or_path={model}")],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    line = one_error_line(result.stderr)
    assert result.returncode == 2 and "model.model_name_or_path:" in line and expected in line
    assert files_under(tmp_path / "out") == [] and not (inputs["root"] / "executed").exists()


def test_hints_name_the_subcommand(capsys):
    assert main(["factorize", "--rank", "x"]) == 2
    stderr = capsys.readouterr().err.strip().splitlines()
    assert stderr[-1] == "see 'svdlora factorize --help'" and stderr[-2].startswith("svdlora: error:")
