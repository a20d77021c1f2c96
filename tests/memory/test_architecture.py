"""Exact parameter counts from a model built on the meta device: against the real tiny model, PEFT (on the real tiny
model and on the meta 7B model) and the published Qwen2.5-7B count."""

from __future__ import annotations

import pytest
import torch
from builders import one_torch_thread  # noqa: F401 (autouse fixture)
from memory.shapes import tiny_config

from svdlora_pl.embedded.tiny import TINY_MODEL
from svdlora_pl.errors import InputError
from svdlora_pl.memory.architecture import DECODER_PROJECTIONS, LoRASpec, architecture_of, count_parameters
from svdlora_pl.memory.presets import preset_config

ALL = DECODER_PROJECTIONS
QWEN25_7B_PARAMS = 7_615_616_512  # published parameter count of Qwen2.5-7B (7.62 B)


def test_tiny_counts_equal_the_real_model():
    from svdlora_pl.memory.presets import tiny_config as recipe_config
    from svdlora_pl.training.loading import load_causal_lm

    real = load_causal_lm(TINY_MODEL)
    assert count_parameters(recipe_config(), None) == count_parameters(tiny_config(), None)  # recipe = built model
    _, counts = count_parameters(tiny_config(), None)
    assert counts.total == sum(p.numel() for p in real.parameters())  # tied embeddings counted once
    assert counts.per_layer == sum(p.numel() for p in real.model.layers[0].parameters())
    assert counts.buffer_bytes == sum(b.numel() * b.element_size() for b in real.buffers())
    assert counts.lora == 0


@pytest.mark.parametrize(("r", "targets"), [(8, ALL), (4, ("q_proj", "v_proj")), (3, ("down_proj",))])
def test_lora_count_equals_peft_on_the_real_tiny_model(r, targets):
    from svdlora_pl.lora.initializers import RandomInit
    from svdlora_pl.lora.settings import LoRASettings, wrap_with_lora
    from svdlora_pl.training.loading import load_causal_lm

    model = wrap_with_lora(
        load_causal_lm(TINY_MODEL), LoRASettings(r=r, target_modules=list(targets)), RandomInit(), TINY_MODEL
    )
    _, counts = count_parameters(tiny_config(), LoRASpec(r=r, dropout=0.0, targets=targets))
    assert counts.lora == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_unknown_target_module_is_an_input_error():
    with pytest.raises(InputError, match="model.lora.target_modules: 'qkv'"):
        count_parameters(tiny_config(), LoRASpec(r=2, dropout=0.0, targets=("qkv",)))


def test_qwen25_7b_preset_has_the_published_count_and_peft_agrees():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = preset_config("qwen2.5-7b")
    arch, counts = count_parameters(config, LoRASpec(r=16, dropout=0.05, targets=ALL))
    assert counts.total == QWEN25_7B_PARAMS
    # r·(in + out) per projection, by hand: q 3584→3584, k/v 3584→512, o 3584→3584, gate/up 3584→18944, down back
    per_layer = 16 * ((3584 + 3584) + 2 * (3584 + 512) + (3584 + 3584) + 3 * (3584 + 18944))
    assert counts.lora == 28 * per_layer == 40_370_176
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    peft = get_peft_model(meta, LoraConfig(r=16, target_modules=list(ALL), task_type="CAUSAL_LM"))
    assert counts.lora == sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert (arch.hidden, arch.kv_dim, arch.vocab) == (3584, 512, 152064)
    math = count_parameters(preset_config("qwen2.5-math-7b"), None)
    assert math[1].total == QWEN25_7B_PARAMS and math[0].max_positions == 4096


def test_unsupported_model_type_is_an_input_error():
    from transformers import AutoConfig

    with pytest.raises(InputError, match="model_type 'gpt2': the formulas cover decoder layers of qwen2"):
        architecture_of(AutoConfig.for_model("gpt2"))
