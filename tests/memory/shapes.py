"""Shapes shared by the memory tests: a hand-sized one (every byte computable by hand) and the built tiny model's."""

from __future__ import annotations

import dataclasses

from svdlora_pl.embedded.tiny import TINY_MODEL, resolve_model_path
from svdlora_pl.memory.activations import TrainingSetup
from svdlora_pl.memory.architecture import DECODER_PROJECTIONS, Architecture, LoRASpec, ParameterCounts

ALL = DECODER_PROJECTIONS
# a hand-sized shape: h 8, I 16, 2 layers, 2 heads of 4, 1 KV head, vocab 32
SMALL = Architecture(hidden=8, intermediate=16, layers=2, heads=2, kv_heads=1, head_dim=4, vocab=32, max_positions=64)


def small_counts(lora: int) -> ParameterCounts:
    return ParameterCounts(
        total=1000, linear=800, per_layer=300, layer_linear=280, lm_head=256, lora=lora, buffer_bytes=0
    )


def fp32_setup(**overrides) -> TrainingSetup:
    setup = TrainingSetup(
        micro_batch=1,
        seq_len=3,
        base_dtype="float32",
        trainable_dtype="float32",
        autocast_dtype=None,
        lora=LoRASpec(r=2, dropout=0.0, targets=ALL),
        gradient_checkpointing=False,
    )
    return dataclasses.replace(setup, **overrides)


def tiny_config():
    """The config.json of the built tiny model (not its recipe)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_model_path(TINY_MODEL))
