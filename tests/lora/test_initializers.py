"""LoRA initializers and wrapping: PEFT parity, start-at-base invariants (over every initializer), validation."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from svdlora_pl.embedded.tiny import TINY_MODEL, resolve_model_path
from svdlora_pl.errors import InputError
from svdlora_pl.lora import initializers
from svdlora_pl.lora.initializers import LoRAInitializer, RandomInit
from svdlora_pl.lora.settings import QWEN_LINEAR_MODULES, LoRASettings, check_target_modules, wrap_with_lora

R = 4
N_LAYERS = 4  # tiny model: every one of the 7 projections of each layer gets a LoRA pair


def _all_subclasses(cls: type) -> list[type]:
    direct = cls.__subclasses__()
    return direct + [sub for c in direct for sub in _all_subclasses(c)]


INITIALIZER_CLASSES = sorted(
    {c for c in _all_subclasses(LoRAInitializer) if c.__module__ == initializers.__name__}, key=lambda c: c.__name__
)


@pytest.fixture(scope="module")
def base() -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(resolve_model_path(TINY_MODEL)).eval()


def lora_factors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every lora_A / lora_B weight of a PEFT model, by parameter name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n or "lora_B" in n}


def wrap(base: torch.nn.Module, initializer: LoRAInitializer, seed: int = 7) -> torch.nn.Module:
    torch.manual_seed(seed)
    return wrap_with_lora(copy.deepcopy(base), LoRASettings(r=R), initializer, "tiny").eval()


@pytest.mark.parametrize(("initializer", "peft_value"), [(RandomInit(), True), (RandomInit("gaussian"), "gaussian")])
def test_random_init_matches_plain_peft(base: torch.nn.Module, initializer: RandomInit, peft_value) -> None:
    ours = lora_factors(wrap(base, initializer))
    torch.manual_seed(7)
    config = LoraConfig(r=R, lora_alpha=16.0, target_modules=list(QWEN_LINEAR_MODULES), init_lora_weights=peft_value)
    reference = lora_factors(get_peft_model(copy.deepcopy(base), config))
    assert len(reference) == 2 * len(QWEN_LINEAR_MODULES) * N_LAYERS
    assert ours.keys() == reference.keys()
    for name, expected in reference.items():
        torch.testing.assert_close(ours[name], expected, rtol=0, atol=0, msg=name)
    assert any(t.abs().sum() > 0 for n, t in ours.items() if "lora_A" in n)  # A really is random


def test_random_init_distributions(base: torch.nn.Module) -> None:
    # kaiming_uniform_(a=sqrt(5)): bound = sqrt(6 / ((1 + 5) * fan_in)) = 1 / sqrt(fan_in); gaussian: std = 1 / r
    uniform = wrap(base, RandomInit()).base_model.model.model.layers[0].mlp.down_proj
    a = uniform.lora_A["default"].weight
    bound = 1.0 / math.sqrt(a.shape[1])
    assert a.abs().max() <= bound and a.abs().max() > 0.9 * bound
    gaussian = wrap(base, RandomInit("gaussian")).base_model.model.model.layers[0].mlp.down_proj
    assert gaussian.lora_A["default"].weight.std().item() == pytest.approx(1.0 / R, rel=0.1)


@pytest.mark.parametrize("cls", INITIALIZER_CLASSES, ids=lambda c: c.__name__)
def test_initializer_starts_at_base_model(base: torch.nn.Module, cls: type[LoRAInitializer]) -> None:
    try:
        initializer = cls()
    except TypeError as error:  # needs arguments (e.g. a teacher file): not a data-free initializer
        pytest.skip(f"{cls.__name__} cannot be built with defaults: {error}")
    ids = torch.randint(0, base.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = base(input_ids=ids).logits
    model = wrap(base, initializer)
    base_unchanged = all(
        torch.equal(p, dict(base.named_parameters())[n.replace("base_model.model.", "").replace(".base_layer", "")])
        for n, p in model.named_parameters()
        if "lora_" not in n
    )
    if base_unchanged:  # not a residual scheme: the update B·A must vanish, PEFT's way (B = 0)
        factors = lora_factors(model)
        assert factors and all(torch.all(t == 0) for n, t in factors.items() if "lora_B" in n)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    # fp32 rounding of a rewritten base weight (residual schemes) scales with the logits: about 5 ulp of the largest
    # (measured 6.7e-6 at |logits| <= 12.7 on the pretrained tiny model)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6 * max(1.0, expected.abs().max().item()))


def test_wrap_freezes_base_and_applies_scaling(base: torch.nn.Module) -> None:
    model = wrap_with_lora(copy.deepcopy(base), LoRASettings(r=R, alpha=8.0, use_rslora=True), RandomInit(), "tiny")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(lora_factors(model))
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert q_proj.scaling["default"] == pytest.approx(8.0 / math.sqrt(R))


def test_random_init_rejects_unknown_distribution() -> None:
    with pytest.raises(ValueError, match="distribution"):
        RandomInit("xavier")  # type: ignore[arg-type]


def test_check_target_modules(base: torch.nn.Module) -> None:
    check_target_modules(base, list(QWEN_LINEAR_MODULES), "tiny")  # all present: no error
    with pytest.raises(InputError, match=r"model\.lora\.target_modules: 'qkv_proj'.*tiny"):
        check_target_modules(base, ["q_proj", "qkv_proj"], "tiny")
    with pytest.raises(InputError, match=r"model\.lora\.target_modules"):
        wrap_with_lora(copy.deepcopy(base), LoRASettings(r=R, target_modules=["embed_tokens"]), RandomInit(), "tiny")
