""":func:`svdlora_pl.aggregation.merge.aggregate` end to end on tiny-model adapters: PEFT-loadable output with the
right logits, reports, per-client adapters, and one-line InputErrors naming the option or file that leave nothing
behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from builders import logits, make_adapter, one_torch_thread, tiny_base  # noqa: F401 (autouse fixture)
from safetensors.torch import load_file, save_file

from svdlora_pl.aggregation.merge import aggregate
from svdlora_pl.errors import InputError
from svdlora_pl.lora.adapters import CONFIG_NAME, WEIGHTS_NAME

SPECS = [(3, 6, {}), (5, 5, {}), (8, 4, {"use_rslora": True})]  # (r, alpha, extra config): scalings 2, 1, √2
DATA_SIZES = [100, 300, 600]


@pytest.fixture(scope="module")
def clients(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("clients")
    return [make_adapter(root / f"c{i}", r, alpha, seed=10 + i, **extra) for i, (r, alpha, extra) in enumerate(SPECS)]


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
    return json.loads((path / "aggregation_report.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------- success
def test_stack_round_trip_equals_dense_weighted_merge(clients, tmp_path):
    out = tmp_path / "stack"
    returned = aggregate(clients, "stack", out, data_sizes=DATA_SIZES)
    config = json.loads((out / CONFIG_NAME).read_text())
    assert config["r"] == config["lora_alpha"] == 16 and not config["use_rslora"]
    torch.testing.assert_close(peft_logits(out), dense_merged_logits(clients, DATA_SIZES), rtol=1e-4, atol=1e-4)
    data = report(out)
    assert returned == data and data["output_dir"] == str(out)
    assert [c["weight"] for c in data["clients"]] == pytest.approx([0.1, 0.3, 0.6])
    assert data["adapters"]["."]["summary"]["max_relative_error"] < 1e-6
    assert (out / "aggregation_report.txt").read_text(encoding="utf-8").startswith("svdlora aggregate — method stack")
    assert not list(tmp_path.glob(".stack*")), "staging directory left behind"


def test_svd_at_sum_of_ranks_is_exact_and_default_rank_is_optimal(clients, tmp_path):
    full, default = tmp_path / "full", tmp_path / "default"
    aggregate(clients, "svd", full, rank=16)
    torch.testing.assert_close(peft_logits(full), dense_merged_logits(clients, [1, 1, 1]), rtol=1e-4, atol=1e-4)
    aggregate(clients, "svd", default, split="B")
    modules = report(default)["adapters"]["."]["modules"]
    assert {m["rank"] for m in modules.values()} == {8}
    for entry in modules.values():
        assert entry["relative_error"] == pytest.approx(entry["optimal_error"], abs=1e-9)
        assert 0 < entry["relative_error"] < 1


@pytest.mark.parametrize("method", ["svd", "zeropad"])
def test_per_client_ranks_write_one_loadable_adapter_per_rank(clients, tmp_path, method):
    out = tmp_path / method
    aggregate(clients, method, out, per_client_ranks=True)
    data = report(out)
    assert [c["output"] for c in data["clients"]] == ["rank_3", "rank_5", "rank_8"]
    for r in (3, 5, 8):
        config = json.loads((out / f"rank_{r}" / CONFIG_NAME).read_text())
        assert config["r"] == config["lora_alpha"] == r
        assert {m["rank"] for m in data["adapters"][f"rank_{r}"]["modules"].values()} == {r}
        assert peft_logits(out / f"rank_{r}").isfinite().all()
    errors = [data["adapters"][f"rank_{r}"]["summary"]["max_relative_error"] for r in (3, 5, 8)]
    assert errors == sorted(errors, reverse=True)  # more rank, less error


def test_zeropad_reports_its_error(clients, tmp_path):
    out = tmp_path / "zp"
    data = aggregate(clients, "zeropad", out, norm_weights=True)
    summary = report(out)["adapters"]["."]["summary"]
    assert summary["ranks"] == [8] and summary["max_relative_error"] > 0.1
    assert data["options"] == {"rank": None, "split": "sqrt", "norm_weights": True, "dtype": "float32"}


def test_dtype_of_the_written_factors(clients, tmp_path):
    out = tmp_path / "bf16"
    aggregate(clients[:2], "svd", out, rank=4, dtype="bfloat16")
    assert {t.dtype for t in load_file(out / WEIGHTS_NAME).values()} == {torch.bfloat16}


def test_overwrite_replaces_existing_output(clients, tmp_path):
    out = tmp_path / "again"
    out.mkdir()
    (out / "old.txt").write_text("x")
    aggregate(clients, "stack", out, overwrite=True)
    assert not (out / "old.txt").exists() and (out / WEIGHTS_NAME).is_file()


# ---------------------------------------------------------------- errors: one line, nothing written
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
        {},
        "base_model_name_or_path",
    ),
    "different modules": (_other_modules, {}, "module set differs"),
    "shapes": (lambda c, t: _edit_tensors(_copy(c, t), _widen), {}, "update shape 128×129 differs from 128×128"),
    "nan": (lambda c, t: _edit_tensors(_copy(c, t), _nan), {}, "k_proj.lora_B.weight: NaN or infinite"),
    "malformed config": (
        lambda c, t: (_copy(c, t) / CONFIG_NAME).write_text("{") and t / "edited",
        {},
        "malformed JSON",
    ),
    "missing weights": (
        lambda c, t: (_copy(c, t) / WEIGHTS_NAME).unlink() or t / "edited",
        {},
        f"{WEIGHTS_NAME}: file not found",
    ),
    "missing dir": (lambda c, t: t / "nowhere", {}, "no such adapter directory"),
    "zero weight": (None, {"weights": [1, 0, 1]}, "weights: weight 1 must be a finite number > 0"),
    "negative size": (None, {"data_sizes": [1, -5, 1]}, "data_sizes: weight 1"),
    "weight count": (None, {"weights": [1, 2]}, "weights: got 2 weights for 3 clients"),
    "both weightings": (
        None,
        {"weights": [1, 2, 3], "data_sizes": [1, 2, 3]},
        "weights: give weights or data_sizes, not both",
    ),
    "rank too large": (None, {"method": "svd", "rank": 17}, "Σ r_k=16) = 16; use rank 16 or less"),
    "rank zero": (None, {"method": "svd", "rank": 0}, "rank: must be >= 1, got 0"),
    "rank for stack": (None, {"rank": 4}, "rank: only used by method svd"),
    "per-client stack": (None, {"per_client_ranks": True}, "per_client_ranks: needs method svd or zeropad"),
    "norm weights for svd": (
        None,
        {"method": "svd", "norm_weights": True},
        "norm_weights: only used by method zeropad",
    ),
    "split for stack": (None, {"split": "B"}, "split: only used by method svd"),
    "bad method": (None, {"method": "mean"}, "method: must be one of stack, svd, zeropad, got 'mean'"),
    "bad dtype": (None, {"dtype": "float8"}, "dtype: must be one of float32, bfloat16, float16"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_input_is_one_line_and_writes_nothing(clients, tmp_path, case):
    make, extra, fragment = ERRORS[case]
    adapters = [clients[0], make(clients, tmp_path), clients[2]] if make else list(clients)
    options = {"method": "stack", **extra}
    out = tmp_path / "out"
    with pytest.raises(InputError) as info:
        aggregate(adapters, output_dir=out, **options)
    message = str(info.value)
    assert "\n" not in message and fragment in message, message
    assert not out.exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("count", [0, 1])
def test_one_adapter_is_not_an_aggregation(clients, tmp_path, count):
    out = tmp_path / "one"
    with pytest.raises(InputError, match=f"^adapters: needs at least 2 adapters to aggregate, got {count}$"):
        aggregate(clients[:count], "svd", out)
    assert not out.exists()
    with pytest.raises(InputError, match="^adapters: expected a list of adapter directories"):
        aggregate(clients[0], "svd", out)


def test_refuses_non_empty_output_and_overwriting_an_input(clients, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="^output_dir: .* exists and is not empty"):
        aggregate(clients, "stack", out)
    assert (out / "keep.txt").exists()
    with pytest.raises(InputError, match="^output_dir: .* would replace the input"):
        aggregate(clients, "stack", clients[0], overwrite=True)
    assert (clients[0] / WEIGHTS_NAME).is_file()
