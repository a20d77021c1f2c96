"""Activation, logits and workspace formulas against hand computations on an 8-wide two-layer shape."""

from __future__ import annotations

from memory.shapes import ALL, SMALL, fp32_setup, small_counts

from svdlora_pl.memory.activations import layer_activations, logits_bytes, logits_peak_bytes, nbytes
from svdlora_pl.memory.architecture import LoRASpec
from svdlora_pl.memory.plan import plan_memory


def test_fp32_lora_activations_by_hand():
    setup = fp32_setup()
    N = 3
    norm = N * 8 * 4 + N * 4  # float32 input + rsqrt
    per_layer = (
        norm
        + N * 8 * 4  # input_layernorm output, shared LoRA input of q/k/v
        + 7 * N * 2 * 4  # x·Aᵀ of the 7 projections
        + N * 8 * 4 + 2 * N * 4 * 4 + N * 8 * 4 + N * 2 * 4  # q, k, v (1 KV head), output (= o_proj input), lse
        + norm
        + N * 8 * 4  # post_attention_layernorm output, shared by gate/up
        + 3 * N * 16 * 4  # gate output, up output, SiLU output
        + N * 16 * 4  # down_proj input
    )  # fmt: skip
    saved, requires_grad = layer_activations(SMALL, setup, True)
    assert sum(saved.values()) == per_layer and requires_grad
    layer0, _ = layer_activations(SMALL, setup, False)
    assert sum(layer0.values()) == per_layer - norm  # the embedding output does not require grad
    outside = 2 * 3 * 4 * 4 + N * 8 + norm  # RoPE cos/sin, labels, final norm
    plan = plan_memory(SMALL, small_counts(lora=512), setup)
    assert plan.activations_full == 2 * per_layer - norm + outside
    assert plan.activations_checkpointed == 2 * N * 8 * 4 + outside
    assert plan.layer_recompute == per_layer
    assert plan.activations_checkpointed < plan.activations_full


def test_bf16_mixed_lora_with_dropout_by_hand():
    setup = fp32_setup(
        base_dtype="bfloat16",
        autocast_dtype="bfloat16",
        lora=LoRASpec(r=2, dropout=0.1, targets=ALL),
    )
    N = 3
    norm = N * 8 * 4 + N * 4
    # each LoRA module: its own bf16 copy of the input, a bool dropout mask (CUDA), x·Aᵀ in bf16
    lora_qkv = 3 * (N * 8 * 2 + N * 8 * 1 + N * 2 * 2)
    attention = N * 8 * 2 + 2 * N * 4 * 2 + N * 8 * 2 + N * 2 * 4
    lora_o = N * 8 * 2 + N * 8 + N * 2 * 2
    lora_gate_up = 2 * (N * 8 * 2 + N * 8 + N * 2 * 2)
    mlp = 3 * N * 16 * 2
    lora_down = N * 16 * 2 + N * 16 + N * 2 * 2
    per_layer = norm + lora_qkv + attention + lora_o + norm + lora_gate_up + mlp + lora_down
    saved, _ = layer_activations(SMALL, setup, True)
    assert sum(saved.values()) == per_layer == 1332
    layer0, _ = layer_activations(SMALL, setup, False)
    assert sum(layer0.values()) == per_layer - norm - 3 * N * 8  # no norm, no q/k/v dropout masks saved
    outside = 2 * 3 * 4 * 2 + N * 8 + norm
    copies = 512 * 2  # bf16 autocast copies of the 512 float32 LoRA parameters
    plan = plan_memory(SMALL, small_counts(lora=512), setup)
    assert plan.autocast_copies == copies
    assert plan.activations_full == per_layer + sum(layer0.values()) + outside + copies
    assert plan.backward_workspace == N * (2 * 16 * 4 + 2 * 8 * 4)  # the LoRA cast makes MLP gradients float32
    # static: bf16 weights, float32 LoRA factors, their gradients, AdamW's two float32 states
    assert plan.static == 1000 * 2 + 512 * 4 * 4


def test_padded_micro_batch_repeats_kv_and_saves_the_mask():
    one, _ = layer_activations(SMALL, fp32_setup(micro_batch=1), True)
    two, _ = layer_activations(SMALL, fp32_setup(micro_batch=2), True)
    assert one["attention k, v"] == 2 * 3 * 4 * 4  # grouped-query: one KV head
    assert two["attention k, v"] == 2 * 6 * 8 * 4  # repeated to both heads
    assert "attention mask bias" not in one and two["attention mask bias"] == 2 * 3 * 3 * 4


def test_logits_bytes_and_peak():
    assert logits_bytes(2, 3, 32, "bfloat16") == 2 * 3 * 32 * 2
    assert logits_bytes(2, 3, 32, "float32") == 2 * 3 * 32 * 4
    assert logits_bytes(2, 3, 32, "bfloat16", chunk=4) == 4 * 32 * 2  # one chunk of the chunked loss
    assert logits_bytes(2, 3, 32, "bfloat16", chunk=100) == 2 * 3 * 32 * 2
    assert logits_peak_bytes(2, 3, 32, "bfloat16") == 12 * 2 * 3 * 32  # backward: 3 float32 tensors of B·T·V
    assert logits_peak_bytes(2, 3, 32, "float32") == 12 * 2 * 3 * 32
    assert logits_peak_bytes(2, 3, 32, "bfloat16", chunk=4) == 12 * 4 * 32  # one chunk of the chunked loss
    assert logits_peak_bytes(2, 3, 32, "bfloat16", chunk=100) == 12 * 2 * 3 * 32  # capped at B·T rows


def test_nbytes_names_an_unknown_dtype():
    import pytest

    from svdlora_pl.errors import InputError

    assert (nbytes("float64"), nbytes("float32"), nbytes("bfloat16"), nbytes("float16")) == (8, 4, 2, 2)
    with pytest.raises(InputError, match="dtype 'int8': expected one of float64, float32, bfloat16, float16"):
        nbytes("int8")
