"""Shape and exact parameter counts of a Qwen2-style causal LM, from a model built on the ``meta`` device.

Usage::

    from svdlora_pl.memory.architecture import LoRASpec, count_parameters
    arch, counts = count_parameters(hf_config, LoRASpec(r=16, dropout=0.05, targets=("q_proj", "v_proj")))

Nothing is allocated or downloaded: ``hf_config`` is a transformers config (:mod:`svdlora_pl.memory.presets` finds
one for a model name), the model is built on PyTorch's ``meta`` device, and its parameters are counted as they
are (tied weights once, LoRA factors r·(in + out) per targeted Linear, as PEFT adds them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from svdlora_pl.errors import InputError

DECODER_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SUPPORTED_MODEL_TYPES = ("qwen2", "llama", "mistral")
"""Decoder layers of this shape (RMSNorm, q/k/v/o attention, SwiGLU MLP): the formulas of
:mod:`svdlora_pl.memory.activations` hold for them."""


@dataclass(frozen=True)
class Architecture:
    """Shape of a Qwen2-style decoder: what the activation and logits formulas need."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    max_positions: int

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


@dataclass(frozen=True)
class ParameterCounts:
    """Exact counts from the model built on the meta device (tied weights counted once)."""

    total: int
    linear: int
    """Parameters of ``nn.Linear`` modules (weights and biases): what autocast casts."""
    per_layer: int
    """Parameters of one decoder layer."""
    layer_linear: int
    """Parameters of the ``nn.Linear`` modules of one decoder layer."""
    lm_head: int
    """Parameters of the output projection (the embedding matrix when tied)."""
    lora: int
    """LoRA factors, r·(in + out) per targeted Linear; 0 for full fine-tuning."""
    buffer_bytes: int


@dataclass(frozen=True)
class LoRASpec:
    """The LoRA settings that change memory."""

    r: int
    dropout: float
    targets: tuple[str, ...]


def architecture_of(config: Any) -> Architecture:
    """The :class:`Architecture` of a transformers config (Qwen2, Llama and Mistral layers)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise InputError(
            f"model_type {model_type!r}: the formulas cover decoder layers of {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return Architecture(
        hidden=int(config.hidden_size),
        intermediate=int(config.intermediate_size),
        layers=int(config.num_hidden_layers),
        heads=heads,
        kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
        head_dim=int(head_dim),
        vocab=int(config.vocab_size),
        max_positions=int(config.max_position_embeddings),
    )


def lora_targets(module_name: str, targets: tuple[str, ...]) -> bool:
    """PEFT's rule for a list of target names: the module path equals one or ends with ``.<name>``."""
    return any(module_name == t or module_name.endswith(f".{t}") for t in targets)


def count_parameters(config: Any, lora: LoRASpec | None) -> tuple[Architecture, ParameterCounts]:
    """Build the model on the meta device (no weights allocated) and count its parameters exactly.

    Args:
        config: A transformers config of a supported model type.
        lora: The LoRA settings whose factors are counted; None for full fine-tuning.

    Returns:
        The architecture and the parameter counts.

    Raises:
        InputError: An unsupported model type, or a LoRA target that matches no Linear or is not modelled.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from svdlora_pl.lora.settings import check_target_modules

    arch = architecture_of(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linears = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    lora_params = 0
    if lora is not None:
        check_target_modules(model, list(lora.targets), getattr(config, "_name_or_path", "") or "the model")
        for target in lora.targets:
            if target.rsplit(".", 1)[-1] not in DECODER_PROJECTIONS:
                raise InputError(
                    f"model.lora.target_modules: {target!r} is not modelled (the formulas cover "
                    f"{', '.join(DECODER_PROJECTIONS)})"
                )
        lora_params = sum(
            lora.r * (m.in_features + m.out_features) for name, m in linears.items() if lora_targets(name, lora.targets)
        )
    layer = model.model.layers[0]
    counts = ParameterCounts(
        total=sum(p.numel() for p in model.parameters()),
        linear=sum(p.numel() for p in {id(p): p for m in linears.values() for p in m.parameters()}.values()),
        per_layer=sum(p.numel() for p in layer.parameters()),
        layer_linear=sum(p.numel() for m in layer.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters()),
        lm_head=sum(p.numel() for p in model.get_output_embeddings().parameters()),
        lora=lora_params,
        buffer_bytes=sum(b.numel() * b.element_size() for b in model.buffers()),
    )
    return arch, counts
