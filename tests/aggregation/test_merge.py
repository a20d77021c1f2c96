"""``svdlora aggregate`` end to end on tiny-model adapters: PEFT-loadable output with the right logits, reports,
per-client adapters, and one-line exit-2 errors that leave nothing behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from builders import logits, make_adapter, one_torch_thread, tiny_base  # noqa: F401 (autouse fixture)
from safetensors.torch import load_file, save_file

from svdlora_pl.cli import main
from svdlora_pl.lora.adapters import CONFIG_NAME, WEIGHTS_NAME

SPECS = [(3, 6, {}), (5, 5, {}), (8, 4, {"use_rslora": True})]  # (r, alpha, extra config): scalings 2, 1, √2
DATA_SIZES = [100, 300, 600]


@pytest.fixture(scope="module")
def clients(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("clients")
    return [make_adapter(root / f"c{i}", r, alpha, seed=10 + i, **extra) for i, (r, alpha, extra) in enumerate(SPECS)]


def run(*args: str | Path) -> int:
    return main(["aggregate", *map(str, args)])


def dense_merged_logits(paths: list[Path], weights: list[float]) -> torch.Tensor:
    """Logits of the base with W + Σ p_k ΔW_k, each ΔW_k taken from PEFT's own merge of client k (independent)."""
    from peft import PeftModel

    base = tiny_base()
    state = {k: v.clone() for k, v in base.state_dict().items()}
    total = sum(weights)
    for path, w in zip(paths, weights, strict=True):
        merged = PeftModel.from_pretrained(tiny_base(), path).merge_and_unload().state_dict()
        for key, value in merged.items():
            state[key] += (w / total) * (value - base.state_dict()[key])
    base.load_state_dict(state)
    return logits(base)


def peft_logits(path: Path) -> torch.Tensor:
    from peft import PeftModel

    return logits(PeftModel.from_pretrained(tiny_base(), path))


def report(path: Path) -> dict:
    return json.loads((path / "aggregation_report.json").read_text())


# ---------------------------------------------------------------- success
def test_stack_round_trip_equals_dense_weighted_merge(clients, tmp_path, capsys):
    out = tmp_path / "stack"
    assert run("--adapters", *clients, "--data-sizes", *DATA_SIZES, "--method", "stack", "--output-dir", out) == 0
    assert "wrote" in capsys.readouterr().out
    config = json.loads((out / CONFIG_NAME).read_text())
    assert config["r"] == config["lora_alpha"] == 16 and not config["use_rslora"]
    torch.testing.assert_close(peft_logits(out), dense_merged_logits(clients, DATA_SIZES), rtol=1e-4, atol=1e-4)
    data = report(out)
    assert [c["weight"] for c in data["clients"]] == pytest.approx([0.1, 0.3, 0.6])
    assert data["adapters"]["."]["summary"]["max_relative_error"] < 1e-6
    assert (out / "aggregation_report.txt").read_text().startswith("svdlora aggregate — method stack")


def test_svd_at_sum_of_ranks_is_exact_and_default_rank_is_optimal(clients, tmp_path):
    full, default = tmp_path / "full", tmp_path / "default"
    assert run("--adapters", *clients, "--method", "svd", "--rank", 16, "--output-dir", full) == 0
    torch.testing.assert_close(peft_logits(full), dense_merged_logits(clients, [1, 1, 1]), rtol=1e-4, atol=1e-4)
    assert run("--adapters", *clients, "--method", "svd", "--split", "B", "--output-dir", default) == 0
    modules = report(default)["adapters"]["."]["modules"]
    assert {m["rank"] for m in modules.values()} == {8}
    for entry in modules.values():
        assert entry["relative_error"] == pytest.approx(entry["optimal_error"], abs=1e-9)
        assert 0 < entry["relative_error"] < 1


@pytest.mark.parametrize("method", ["svd", "zeropad"])
def test_per_client_ranks_write_one_loadable_adapter_per_rank(clients, tmp_path, method):
    out = tmp_path / method
    assert run("--adapters", *clients, "--method", method, "--per-client-ranks", "--output-dir", out) == 0
    data = report(out)
    assert [c["output"] for c in data["clients"]] == ["rank_3", "rank_5", "rank_8"]
    for r in (3, 5, 8):
        config = json.loads((out / f"rank_{r}" / CONFIG_NAME).read_text())
        assert config["r"] == config["lora_alpha"] == r
        assert {m["rank"] for m in data["adapters"][f"rank_{r}"]["modules"].values()} == {r}
        assert peft_logits(out / f"rank_{r}").isfinite().all()
    errors = [data["adapters"][f"rank_{r}"]["summary"]["max_relative_error"] for r in (3, 5, 8)]
    assert errors == sorted(errors, reverse=True)  # more rank, less error


def test_zeropad_reports_its_error(clients, tmp_path, caplog):
    out = tmp_path / "zp"
    assert run("--adapters", *clients, "--method", "zeropad", "--norm-weights", "--output-dir", out) == 0
    summary = report(out)["adapters"]["."]["summary"]
    assert summary["ranks"] == [8] and summary["max_relative_error"] > 0.1
    assert "zeropad is inexact" in caplog.text


def test_overwrite_replaces_existing_output(clients, tmp_path):
    out = tmp_path / "again"
    out.mkdir()
    (out / "old.txt").write_text("x")
    assert run("--adapters", *clients, "--method", "stack", "--overwrite", "--output-dir", out) == 0
    assert not (out / "old.txt").exists() and (out / WEIGHTS_NAME).is_file()


# ---------------------------------------------------------------- errors: exit 2, one line, nothing written
def _copy(clients: list[Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(clients[1], tmp_path / "edited"))


def _set_config(path: Path, **changes) -> Path:
    config = json.loads((path / CONFIG_NAME).read_text())
    config.update(changes)
    (path / CONFIG_NAME).write_text(json.dumps(config))
    return path


def _edit_tensors(path: Path, edit) -> Path:
    tensors = load_file(path / WEIGHTS_NAME)
    edit(tensors)
    save_file(tensors, path / WEIGHTS_NAME)
    return path


def _widen(tensors):
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    tensors[key] = torch.randn(tensors[key].shape[0], 129)


def _nan(tensors):
    tensors["base_model.model.model.layers.2.self_attn.k_proj.lora_B.weight"][1, 1] = float("nan")


def _other_modules(clients, tmp_path):
    return make_adapter(tmp_path / "edited", 5, 5, seed=3, targets=["q_proj", "k_proj", "v_proj"])


ERRORS = {
    "different base": (
        lambda c, t: _set_config(_copy(c, t), base_model_name_or_path="Qwen/Qwen2.5-7B"),
        [],
        "base_model_name_or_path",
    ),
    "different modules": (_other_modules, [], "module set differs"),
    "shapes": (lambda c, t: _edit_tensors(_copy(c, t), _widen), [], "update shape 128×129 differs from 128×128"),
    "nan": (lambda c, t: _edit_tensors(_copy(c, t), _nan), [], "k_proj.lora_B.weight: NaN or infinite"),
    "malformed config": (
        lambda c, t: (_copy(c, t) / CONFIG_NAME).write_text("{") and t / "edited",
        [],
        "malformed JSON",
    ),
    "missing weights": (
        lambda c, t: (_copy(c, t) / WEIGHTS_NAME).unlink() or t / "edited",
        [],
        f"{WEIGHTS_NAME}: file not found",
    ),
    "missing dir": (lambda c, t: t / "nowhere", [], "no such adapter directory"),
    "zero weight": (None, ["--weights", "1", "0", "1"], "--weights: weight 1 must be a finite number > 0"),
    "negative size": (None, ["--data-sizes", "1", "-5", "1"], "--data-sizes: weight 1"),
    "weight count": (None, ["--weights", "1", "2"], "--weights: got 2 weights for 3 clients"),
    "both weightings": (None, ["--weights", "1", "2", "3", "--data-sizes", "1", "2", "3"], "not allowed with argument"),
    "rank too large": (None, ["--method", "svd", "--rank", "17"], "Σ r_k=16) = 16; use --rank 16 or less"),
    "rank for stack": (None, ["--rank", "4"], "--rank: only used by --method svd"),
    "per-client stack": (None, ["--per-client-ranks"], "--per-client-ranks: needs --method svd or zeropad"),
    "bad method": (None, ["--method", "mean"], "invalid choice"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_input_exits_2_with_one_line_and_no_output(clients, tmp_path, capsys, case):
    make, extra, fragment = ERRORS[case]
    adapters = [clients[0], make(clients, tmp_path), clients[2]] if make else list(clients)
    method = [] if "--method" in extra else ["--method", "stack"]
    out = tmp_path / "out"
    capsys.readouterr()  # drop what building the adapters printed
    assert run("--adapters", *adapters, *method, *extra, "--output-dir", out) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("svdlora: error: ") and "\n" not in err and fragment in err, err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_refuses_non_empty_output_and_overwriting_an_input(clients, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert run("--adapters", *clients, "--method", "stack", "--output-dir", out) == 2
    assert "exists and is not empty" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert run("--adapters", *clients, "--method", "stack", "--overwrite", "--output-dir", clients[0]) == 2
    assert "would replace the input" in capsys.readouterr().err and (clients[0] / WEIGHTS_NAME).is_file()
