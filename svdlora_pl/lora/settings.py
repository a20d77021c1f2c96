"""LoRA settings and the wrapping of a Hugging Face causal LM into a PEFT LoRA model."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from svdlora_pl.errors import InputError
from svdlora_pl.lora.initializers import LoRAInitializer

QWEN_LINEAR_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
"""Every linear projection of a Qwen2 decoder layer (attention and MLP)."""

ADAPTER_NAME = "default"


@dataclass
class LoRASettings:
    """LoRA hyper-parameters. The update of an adapted Linear is ΔW = scaling · B·A with A (r×in), B (out×r).

    Args:
        r: Rank of every adapted module.
        alpha: Scaling numerator: scaling = alpha / r, or alpha / sqrt(r) with ``use_rslora``.
        dropout: Dropout probability on the input of the LoRA branch.
        target_modules: Names (last path component) of the Linear modules to adapt; the default is every
            attention and MLP projection of Qwen2.
        use_rslora: Rank-stabilized scaling alpha / sqrt(r).
    """

    r: int = 16
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(QWEN_LINEAR_MODULES))
    use_rslora: bool = False

    def validate(self) -> None:
        """Raise :class:`InputError` naming the first out-of-range field."""
        if self.r < 1:
            raise InputError(f"model.lora.r: must be a positive integer, got {self.r}")
        if self.alpha <= 0:
            raise InputError(f"model.lora.alpha: must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"model.lora.dropout: must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise InputError("model.lora.target_modules: must name at least one module")


def check_target_modules(model: torch.nn.Module, targets: list[str], model_name: str) -> None:
    """Fail with one line naming the first target that matches no ``nn.Linear`` of ``model``."""
    linear_names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for target in targets:
        if target not in linear_names:
            known = ", ".join(sorted(linear_names))
            raise InputError(f"model.lora.target_modules: {target!r} matches no Linear of {model_name} ({known})")


def wrap_with_lora(
    base: torch.nn.Module, settings: LoRASettings, initializer: LoRAInitializer, model_name: str
) -> torch.nn.Module:
    """Freeze ``base``, add LoRA layers to the target modules, and let ``initializer`` set their values."""
    from peft import LoraConfig, get_peft_model

    settings.validate()
    check_target_modules(base, settings.target_modules, model_name)
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        use_rslora=settings.use_rslora,
        init_lora_weights=initializer.peft_init(),
    )
    model = get_peft_model(base, config, adapter_name=ADAPTER_NAME)
    initializer.initialize(model, ADAPTER_NAME)
    return model
