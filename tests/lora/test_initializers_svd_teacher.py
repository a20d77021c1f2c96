"""SVDTeacherInit: the warm start reproduces the teacher's rank-r update, trains, and saves a plain PEFT adapter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TEACHER_TARGETS as TARGETS
from helpers import make_trainer, teacher_file

from svdlora_pl.errors import InputError
from svdlora_pl.lora.factor_files import save_factors
from svdlora_pl.lora.initializers import SVDTeacherInit
from svdlora_pl.lora.layers import find_lora_layers
from svdlora_pl.lora.settings import LoRASettings
from svdlora_pl.training.datamodule import QADataModule
from svdlora_pl.training.module import QwenLoRAModule


def make_module(path: Path, r: int = 4, alpha: float = 8.0) -> QwenLoRAModule:
    settings = LoRASettings(r=r, alpha=alpha, dropout=0.0, target_modules=TARGETS)
    module = QwenLoRAModule(lora=settings, initializer=SVDTeacherInit(str(path)))
    module.configure_model()
    return module


@pytest.mark.parametrize("teacher_rank", [12, 4, 2])
def test_warm_start_reproduces_the_rank_r_truncation(tmp_path, teacher_rank):
    path, factors = teacher_file(tmp_path, teacher_rank)
    module = make_module(path, r=4)
    for ref in find_lora_layers(module):
        B_t, A_t = factors[ref.name]
        U, S, Vt = np.linalg.svd(B_t.double().numpy() @ A_t.double().numpy(), full_matrices=False)
        expected = (U[:, :4] * S[:4]) @ Vt[:4]  # Eckart–Young: the best rank-4 approximation
        got = ref.scaling * ref.B.detach().double().numpy() @ ref.A.detach().double().numpy()
        assert np.linalg.norm(got - expected) <= 1e-5 * np.linalg.norm(expected)
        if teacher_rank < 4:  # missing directions: B columns zero, A rows random so they still learn
            assert torch.all(ref.B[:, teacher_rank:] == 0) and torch.any(ref.A[teacher_rank:] != 0)


def test_every_factor_gets_gradient_and_the_adapter_reloads_with_plain_peft(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    path, _ = teacher_file(tmp_path, 8)
    module = make_module(path)
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    module.model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters() if p.requires_grad)
    trainer = make_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(module, QADataModule(batch_size=2))
    adapter = Path(trainer.log_dir) / "adapter"
    base_name = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_name), adapter).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids).logits, module.eval()(ids, torch.ones_like(ids)), atol=1e-5, rtol=0
        )


def test_same_factors_on_every_construction(tmp_path):
    path, _ = teacher_file(tmp_path, 8)
    torch.manual_seed(1)
    first = {k: v.clone() for k, v in make_module(path).state_dict().items() if "lora_" in k}
    torch.manual_seed(1)
    second = {k: v for k, v in make_module(path).state_dict().items() if "lora_" in k}
    for key, value in first.items():
        torch.testing.assert_close(second[key], value, atol=0, rtol=0)


def test_missing_modules_and_wrong_shapes_are_named(tmp_path):
    path, factors = teacher_file(tmp_path, 4)
    factors.pop("model.layers.1.self_attn.v_proj")
    save_factors(tmp_path / "partial.safetensors", factors)
    with pytest.raises(InputError, match=r"missing: \['model.layers.1.self_attn.v_proj'\]"):
        make_module(tmp_path / "partial.safetensors")
    B, A = factors["model.layers.0.self_attn.q_proj"]
    factors["model.layers.0.self_attn.q_proj"] = (B[:-2], A)
    factors["model.layers.1.self_attn.v_proj"] = (torch.zeros(64, 4), torch.zeros(4, 128))
    save_factors(tmp_path / "shape.safetensors", factors)
    with pytest.raises(InputError, match=r"model.layers.0.self_attn.q_proj: teacher update is \(126, 128\)"):
        make_module(tmp_path / "shape.safetensors")
