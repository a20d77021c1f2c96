"""PEFT adapter I/O as per-module factors: key mapping, PEFT's scaling rules, validation, loadable output."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from builders import logits, make_adapter, one_torch_thread, tiny_base  # noqa: F401 (autouse fixture)
from safetensors.torch import load_file, save_file

from svdlora_pl.errors import InputError
from svdlora_pl.lora.adapters import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    adapter_config,
    lora_scaling,
    peft_key,
    read_adapter,
    split_peft_key,
    write_adapter,
)


def peft_layer_scalings(path: Path) -> dict[str, float]:
    """PEFT's own scaling of every LoRA layer of the adapter at ``path``, keyed by base module path."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    model = PeftModel.from_pretrained(tiny_base(), path)
    return {
        name.removeprefix("base_model.model."): module.scaling["default"]
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer)
    }


@pytest.fixture(scope="module")
def patterned(tmp_path_factory) -> Path:
    """Rank and alpha patterns that differ by module (PEFT matches them by suffix)."""
    return make_adapter(
        tmp_path_factory.mktemp("adapters") / "patterned", r=4, alpha=8, seed=1,
        rank_pattern={"k_proj": 2, "model.layers.3.mlp.down_proj": 6}, alpha_pattern={"down_proj": 3},
    )  # fmt: skip


def test_keys_map_to_base_module_paths():
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert split_peft_key(key) == ("model.layers.0.self_attn.q_proj", "A")
    assert peft_key("model.layers.0.self_attn.q_proj", "A") == key
    assert split_peft_key("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector") is None
    assert split_peft_key("model.layers.0.q_proj.lora_A.weight") is None


def test_scaling_formula():
    assert lora_scaling(8, 16, False) == 2.0
    assert lora_scaling(16, 8, True) == 2.0


def test_read_matches_peft_ranks_and_scalings(patterned):
    adapter = read_adapter(patterned)
    expected = peft_layer_scalings(patterned)
    assert set(adapter.modules) == set(expected)
    assert len(adapter.modules) == 12 and adapter.base_model
    for module, factors in adapter.modules.items():
        assert math.isclose(factors.scaling, expected[module]), module
    assert adapter.modules["model.layers.0.self_attn.k_proj"].rank == 2
    assert adapter.modules["model.layers.3.mlp.down_proj"].rank == 6
    assert adapter.modules["model.layers.0.mlp.down_proj"].scaling == 3 / 4
    assert adapter.modules["model.layers.0.mlp.down_proj"].shape == (128, 352)


def test_read_rslora_scaling(tmp_path):
    path = make_adapter(tmp_path / "rs", r=16, alpha=8, seed=2, use_rslora=True)
    adapter = read_adapter(path)
    assert all(f.scaling == 2.0 for f in adapter.modules.values())
    assert all(math.isclose(s, 2.0) for s in peft_layer_scalings(path).values())


def test_written_adapter_loads_in_peft_with_same_logits(patterned, tmp_path):
    """Fold the scaling into B, write with mixed ranks (rank_pattern), load with plain PeftModel: same logits."""
    from peft import PeftModel

    adapter = read_adapter(patterned)
    factors = {m: (f.B * f.scaling, f.A) for m, f in adapter.modules.items()}
    out = write_adapter(tmp_path / "out", factors, adapter.base_model)
    config = json.loads((out / CONFIG_NAME).read_text())
    assert config["r"] == config["lora_alpha"] == 4 and config["rank_pattern"] == config["alpha_pattern"]
    assert config["rank_pattern"]["model.layers.0.self_attn.k_proj"] == 2
    reread = read_adapter(out)
    assert all(reread.modules[m].scaling == 1.0 for m in factors)
    expected = logits(PeftModel.from_pretrained(tiny_base(), patterned))
    torch.testing.assert_close(logits(PeftModel.from_pretrained(tiny_base(), out)), expected, rtol=1e-5, atol=1e-5)
    assert not list(tmp_path.glob(".out*")), "staging directory left behind"


def test_adapter_config_targets_exact_paths():
    config = adapter_config({"model.layers.1.self_attn.q_proj": 3, "model.layers.11.self_attn.q_proj": 5}, "base")
    assert config["target_modules"] == ["model.layers.1.self_attn.q_proj", "model.layers.11.self_attn.q_proj"]
    assert config["r"] == 3 and config["rank_pattern"] == {"model.layers.11.self_attn.q_proj": 5}


# ---------------------------------------------------------------- validation: one line naming file and field
def _edit_config(path: Path, **changes) -> None:
    config = json.loads((path / CONFIG_NAME).read_text())
    config.update(changes)
    (path / CONFIG_NAME).write_text(json.dumps(config))


def _edit_tensors(path: Path, edit) -> None:
    tensors = load_file(path / WEIGHTS_NAME)
    edit(tensors)
    save_file(tensors, path / WEIGHTS_NAME)


@pytest.fixture
def copy_of(patterned, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(patterned, tmp_path / "copy"))


def _nan(tensors):
    key = next(k for k in tensors if "lora_B" in k)
    tensors[key][0, 0] = float("nan")


def _drop_b(tensors):
    del tensors[next(k for k in tensors if "lora_B" in k)]


def _extra(tensors):
    tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"] = torch.ones(128)


BAD_CASES = {
    "malformed json": (lambda p: (p / CONFIG_NAME).write_text("{not json"), f"{CONFIG_NAME}: malformed JSON"),
    "not an object": (lambda p: (p / CONFIG_NAME).write_text("[1]"), "expected a JSON object"),
    "peft type": (lambda p: _edit_config(p, peft_type="IA3"), "peft_type"),
    "bad r": (lambda p: _edit_config(p, r=0), ": r: expected a positive integer"),
    "bad alpha": (lambda p: _edit_config(p, lora_alpha="x"), "lora_alpha"),
    "bad rank pattern": (lambda p: _edit_config(p, rank_pattern={"q_proj": -1}), "rank_pattern.q_proj"),
    "dora": (lambda p: _edit_config(p, use_dora=True), "use_dora"),
    "modules_to_save": (lambda p: _edit_config(p, modules_to_save=["lm_head"]), "modules_to_save"),
    "rank mismatch": (
        lambda p: _edit_config(p, rank_pattern={}),
        ": r: gives rank 4 to model.layers.0.self_attn.k_proj",
    ),
    "missing config": (lambda p: (p / CONFIG_NAME).unlink(), f"{CONFIG_NAME}: file not found"),
    "missing weights": (lambda p: (p / WEIGHTS_NAME).unlink(), f"{WEIGHTS_NAME}: file not found"),
    "garbage weights": (lambda p: (p / WEIGHTS_NAME).write_bytes(b"garbage"), "not a readable safetensors"),
    "nan": (lambda p: _edit_tensors(p, _nan), "NaN or infinite"),
    "unpaired": (lambda p: _edit_tensors(p, _drop_b), "missing (each module needs lora_A and lora_B)"),
    "extra key": (lambda p: _edit_tensors(p, _extra), "lora_magnitude_vector: not a Linear LoRA factor"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_adapter_is_one_line_naming_file_and_field(copy_of, case):
    corrupt, fragment = BAD_CASES[case]
    corrupt(copy_of)
    with pytest.raises(InputError) as info:
        read_adapter(copy_of)
    message = str(info.value)
    assert fragment in message and str(copy_of) in message and "\n" not in message


def test_missing_directory(tmp_path):
    with pytest.raises(InputError, match="no such adapter directory"):
        read_adapter(tmp_path / "nope")


def test_adapters_do_not_depend_on_aggregation(patterned):
    """The factor type lives in lora/ (aggregation uses it, not the other way round)."""
    import subprocess
    import sys

    code = (
        "import sys; from svdlora_pl.lora.adapters import read_adapter; from svdlora_pl.lora.factors import LoRAFactors; "
        f"adapter = read_adapter({str(patterned)!r}); "
        "assert all(isinstance(f, LoRAFactors) for f in adapter.modules.values()); "
        "print(sorted(m for m in sys.modules if m.startswith('svdlora_pl.aggregation')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
