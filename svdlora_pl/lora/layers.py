"""Finding the PEFT LoRA layers of any ``nn.Module`` and naming them by their base-model module path.

A LoRA layer found inside ``model.base_model.model.model.layers.0.self_attn.q_proj`` (a LightningModule
holding a ``PeftModel``) is named ``model.layers.0.self_attn.q_proj``: the part after PEFT's
``base_model.model.`` wrapper, which is the module's path in the plain Hugging Face model. Factor files
use these names, so they apply to any model of the same architecture. Without a ``PeftModel`` wrapper
(``peft.inject_adapter_in_model``) the path inside the given module is used as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoRALayerRef:
    """One adapted Linear: ΔW = scaling · B·A with A = ``lora_A`` (r×in) and B = ``lora_B`` (out×r)."""

    name: str
    layer: torch.nn.Module
    adapter: str

    @property
    def A(self) -> torch.Tensor:  # noqa: N802 - the factor's conventional name
        return self.layer.lora_A[self.adapter].weight

    @property
    def B(self) -> torch.Tensor:  # noqa: N802
        return self.layer.lora_B[self.adapter].weight

    @property
    def scaling(self) -> float:
        return float(self.layer.scaling[self.adapter])


def base_module_path(qualified_name: str) -> str:
    """``model.base_model.model.model.layers.0.mlp.up_proj`` -> ``model.layers.0.mlp.up_proj``."""
    _, found, rest = qualified_name.rpartition(PEFT_PREFIX)
    return rest if found else qualified_name


def find_lora_layers(module: torch.nn.Module, adapter: str = "default") -> list[LoRALayerRef]:
    """Every LoRA Linear of ``module`` holding ``adapter``, in module order, named by base module path."""
    from peft.tuners.lora import LoraLayer

    refs = []
    for name, sub in module.named_modules():
        if isinstance(sub, LoraLayer) and adapter in getattr(sub, "lora_A", {}):
            refs.append(LoRALayerRef(base_module_path(name), sub, adapter))
    return refs


def short_name(path: str) -> str:
    """Display name: the base path without a leading ``model.`` (``layers.0.self_attn.q_proj``)."""
    return path.removeprefix("model.")
