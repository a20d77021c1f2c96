"""Bytes that one training step saves for backward: activations of each decoder layer, outside the layers, the
logits and the loss, autocast weight copies and the backward workspace, as pure functions of the shape
(:class:`~svdlora_pl.memory.architecture.Architecture`) and the :class:`TrainingSetup`.

Notation: a micro-batch has B sequences of T tokens, N = B·T; h hidden size, q = heads·head_dim, kv =
kv_heads·head_dim, I intermediate size, V vocabulary, L layers, r LoRA rank. Byte sizes: s of the frozen
weights and the residual stream (``model.dtype``, or the dtype a ``*-true`` precision converts to); c of matmul
outputs (the autocast dtype under ``*-mixed``, else s); l of the trainable parameters (LoRA factors are float32
when the base is bf16/fp16: PEFT's ``autocast_adapter_dtype``); a = c under autocast, else l (the LoRA matmuls).

Saved for backward by one decoder layer (fused SDPA/flash attention, so no T×T scores), by name:

- RMSNorm (``input_layernorm``, ``post_attention_layernorm``): its input upcast to float32, N·h·4, and rsqrt, N·4;
  full fine-tuning adds the normalized input, N·h·s, for the weight gradient.
- each LoRA target with input width ``in``: its input, N·in·a, as a copy of its own when dropout is on or a
  dtype cast happens (else the module input itself, saved once for all modules that share it); the dropout mask,
  N·in·1 on CUDA (bool) or N·in·l on CPU; and the LoRA intermediate x·Aᵀ, N·r·a. Frozen projections save nothing
  (their weight gives the input gradient); in full fine-tuning every projection saves its input like a LoRA one.
- attention: q, k, v and the output, N·(2q + 2kv')·c, and the log-sum-exp, N·heads·4; kv' = kv when B = 1 (SDPA
  runs grouped-query attention natively) and q when B > 1 (a padding mask makes transformers repeat K/V to every
  head), plus then the mask SDPA turns into a float bias, B·T²·c.
- MLP: the gate output (SiLU input), the SiLU output and the up output, 3·N·I·c; the down input (the product) is
  the down_proj LoRA input above.
- Layer 0 records nothing before the first trainable op: with LoRA its input_layernorm saves nothing.

Outside the layers: the final RMSNorm (N·h·4 + N·4), RoPE cos/sin (2·T·head_dim·s) and the labels (N·8).
Under autocast, low-precision copies of weights are kept too (:func:`autocast_copies`).
With gradient checkpointing (non-reentrant, per decoder layer) only each layer's input is kept, L·N·h·s (and, for
B > 1, the bool padding mask every checkpoint holds, B·T²); in backward one layer is recomputed (its saved tensors
as above) next to a workspace of gradients (:func:`backward_workspace`).

Logits: the lm_head output N·V·c; the loss upcasts it to float32 (N·V·4 unless c is 4) and log-softmax saves its
float32 output (N·V·4). In backward the saved log-softmax, its incoming gradient and the logits' float32 gradient
live together: N·V·12. The logits peak is N·V·max(c + 4·[c≠4] + 4, 12) = 12·N·V bytes. With the chunked loss
(``model.loss_chunk_tokens`` = k, :mod:`svdlora_pl.training.losses`) only one chunk of min(k, N) rows is alive at a time
(each recomputed in backward): min(k, N)·V·12 bytes, plus the gathered answer-position hidden states (≤ N·h·c).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from svdlora_pl.errors import InputError
from svdlora_pl.memory.architecture import DECODER_PROJECTIONS, Architecture, LoRASpec, ParameterCounts

DTYPE_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class TrainingSetup:
    """What one training step holds on one device.

    Args:
        micro_batch: Sequences per micro-batch (``data.batch_size``).
        seq_len: Padded sequence length (``data.max_length``, the worst case).
        base_dtype: Dtype of the frozen weights and of the residual stream.
        trainable_dtype: Dtype of the trainable parameters, their gradients and optimizer states.
        autocast_dtype: Autocast dtype under ``*-mixed`` precision, else None.
        lora: LoRA settings; None for full fine-tuning.
        gradient_checkpointing: Recompute each decoder layer in backward.
        optimizer_states: Optimizer state tensors per trainable parameter (AdamW: 2).
        strategy: ``single``, ``ddp`` (a full replica per device) or ``fsdp`` (sharded across ``world_size``).
        world_size: Devices taking part (``trainer.devices`` × ``trainer.num_nodes``).
        accelerator: ``gpu`` (CUDA overhead counted, bool dropout masks) or ``cpu``.
        loss_chunk_tokens: Rows of logits per chunk of the chunked loss; None: full (B, T, V) logits.
    """

    micro_batch: int
    seq_len: int
    base_dtype: str
    trainable_dtype: str
    autocast_dtype: str | None
    lora: LoRASpec | None
    gradient_checkpointing: bool
    optimizer_states: int = 2
    strategy: Literal["single", "ddp", "fsdp"] = "single"
    world_size: int = 1
    accelerator: Literal["gpu", "cpu"] = "gpu"
    loss_chunk_tokens: int | None = None

    @property
    def compute_dtype(self) -> str:
        return self.autocast_dtype or self.base_dtype


def nbytes(dtype: str) -> int:
    """Bytes per element of a dtype name (``bfloat16``, ``float32``, ...)."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise InputError(f"dtype {dtype!r}: expected one of {', '.join(DTYPE_BYTES)}") from None


def layer_activations(
    arch: Architecture, setup: TrainingSetup, input_requires_grad: bool = True
) -> tuple[dict[str, int], bool]:
    """Bytes saved for backward by one decoder layer, by tensor, and whether its output requires grad."""
    B, T, N = setup.micro_batch, setup.seq_len, setup.micro_batch * setup.seq_len
    h, inter = arch.hidden, arch.intermediate
    s, c = setup.base_dtype, setup.compute_dtype
    full = setup.lora is None
    lora = setup.lora or LoRASpec(r=0, dropout=0.0, targets=DECODER_PROJECTIONS)
    mixed = setup.autocast_dtype is not None
    lora_dtype = setup.trainable_dtype
    a = nbytes(c) if mixed else nbytes(lora_dtype)
    mask_bytes = 1 if setup.accelerator == "gpu" else nbytes(lora_dtype)
    trainable = {t.rsplit(".", 1)[-1] for t in lora.targets}
    saved: dict[str, int] = {}

    def add(name: str, size: int) -> None:
        if size:
            saved[name] = saved.get(name, 0) + size

    def rmsnorm(name: str, requires_grad: bool) -> None:
        if requires_grad:
            add(f"{name} input in float32", N * h * 4)
            add(f"{name} rsqrt", N * 4)
        if full:
            add(f"{name} normalized input", N * h * nbytes(s))

    def linear_inputs(
        names: tuple[str, ...], width: int, x_dtype: str, shared_name: str, already_saved: bool, x_grad: bool
    ) -> None:
        shared = False
        for m in (m for m in names if m in trainable):
            if full:
                copy = mixed and x_dtype != c
            else:
                copy = lora.dropout > 0 or x_dtype != lora_dtype or (mixed and lora_dtype != c)
            if copy:
                add(f"{m} input copy", N * width * (nbytes(c) if full else a))
            shared = shared or not copy
            if not full:
                # dropout saves its mask only when its input requires grad (not in layer 0's attention)
                add(f"{m} LoRA dropout mask", N * width * mask_bytes if lora.dropout > 0 and x_grad else 0)
                add(f"{m} LoRA x·Aᵀ", N * lora.r * a)
        if shared and not already_saved:
            add(shared_name, N * width * nbytes(x_dtype))

    rmsnorm("input_layernorm", input_requires_grad)
    qkv = ("q_proj", "k_proj", "v_proj")
    linear_inputs(qkv, h, s, "input_layernorm output", False, input_requires_grad)
    qkv_grad = input_requires_grad or any(m in trainable for m in qkv)
    if qkv_grad:
        kv_saved = arch.kv_dim if B == 1 else arch.q_dim
        add("attention q", N * arch.q_dim * nbytes(c))
        add("attention k, v", 2 * N * kv_saved * nbytes(c))
        add("attention output", N * arch.q_dim * nbytes(c))
        add("attention log-sum-exp", N * arch.heads * 4)
        add("attention mask bias", B * T * T * nbytes(c) if B > 1 else 0)
    linear_inputs(("o_proj",), arch.q_dim, c, "attention output", qkv_grad, qkv_grad)
    mid_grad = qkv_grad or "o_proj" in trainable
    rmsnorm("post_attention_layernorm", mid_grad)
    linear_inputs(("gate_proj", "up_proj"), h, s, "post_attention_layernorm output", False, mid_grad)
    gate_grad = mid_grad or "gate_proj" in trainable
    up_grad = mid_grad or "up_proj" in trainable
    if gate_grad:  # SiLU saves its input; the product's gradient w.r.t. SiLU(gate) needs up
        add("gate_proj output (SiLU input)", N * inter * nbytes(c))
        add("up_proj output", N * inter * nbytes(c))
    if up_grad:  # the product's gradient w.r.t. up needs SiLU(gate)
        add("SiLU output", N * inter * nbytes(c))
    linear_inputs(("down_proj",), inter, c, "down_proj input (SiLU·up)", False, gate_grad or up_grad)
    output_grad = gate_grad or up_grad or "down_proj" in trainable
    return saved, output_grad


def outside_activations(arch: Architecture, setup: TrainingSetup, output_requires_grad: bool) -> dict[str, int]:
    """Bytes saved outside the decoder layers (final norm, lm_head input, RoPE tables, labels), by tensor."""
    N, s, c = setup.micro_batch * setup.seq_len, setup.base_dtype, setup.compute_dtype
    saved = {
        "RoPE cos, sin": 2 * setup.seq_len * arch.head_dim * nbytes(s),
        "labels": N * 8,
    }
    if output_requires_grad:
        saved["final norm input in float32 and rsqrt"] = N * arch.hidden * 4 + N * 4
    if setup.lora is None:
        saved["final norm normalized input"] = N * arch.hidden * nbytes(s)
        saved["lm_head input"] = N * arch.hidden * nbytes(c if setup.autocast_dtype and c != s else s)
    return saved


def _logit_rows(micro_batch: int, seq_len: int, chunk: int | None) -> int:
    """Rows of logits alive at once: N = B·T, or one chunk of min(chunk, N) rows of the chunked loss."""
    return micro_batch * seq_len if chunk is None else min(chunk, micro_batch * seq_len)


def logits_bytes(micro_batch: int, seq_len: int, vocab: int, dtype: str, chunk: int | None = None) -> int:
    """The logits tensor itself: R·V elements, R = B·T rows or one chunk of the chunked loss."""
    return _logit_rows(micro_batch, seq_len, chunk) * vocab * nbytes(dtype)


def logits_peak_bytes(micro_batch: int, seq_len: int, vocab: int, dtype: str, chunk: int | None = None) -> int:
    """Peak of the logits and the loss: R·V·max(c + 4·[c≠4] + 4, 12) with R = N rows, or min(chunk, N) chunked."""
    c = nbytes(dtype)
    forward = c + (4 if c != 4 else 0) + 4  # logits, their float32 copy, the saved log-softmax
    backward = 12  # saved log-softmax, its incoming gradient, the float32 gradient of the logits
    return _logit_rows(micro_batch, seq_len, chunk) * vocab * max(forward, backward)


def activations(arch: Architecture, setup: TrainingSetup) -> tuple[int, int, int, dict[str, int]]:
    """(kept without checkpointing, kept with checkpointing, one recomputed layer, that layer by tensor)."""
    N = setup.micro_batch * setup.seq_len
    requires_grad = setup.lora is None
    full = 0
    for _ in range(arch.layers):
        saved, requires_grad = layer_activations(arch, setup, requires_grad)
        full += sum(saved.values())
    outside = sum(outside_activations(arch, setup, requires_grad).values())
    recompute, _ = layer_activations(arch, setup, True)
    mask = setup.micro_batch * setup.seq_len**2 if setup.micro_batch > 1 else 0  # bool, held by every checkpoint
    checkpointed = arch.layers * N * arch.hidden * nbytes(setup.base_dtype) + outside + mask
    return full + outside, checkpointed, sum(recompute.values()), recompute


def backward_workspace(arch: Architecture, setup: TrainingSetup) -> int:
    """Gradients alive while one decoder layer runs backward: N·(2·I·g + 2·h·4).

    Two intermediate-sized gradients in the MLP (g = c; g = l when LoRA casts its input to the factors' dtype, as
    the gradient through that cast is in l) and two hidden-sized float32 gradients (the one flowing between layers
    and the one being produced).
    """
    g = nbytes(setup.compute_dtype)
    if setup.lora is not None:
        g = max(g, nbytes(setup.trainable_dtype))
    return setup.micro_batch * setup.seq_len * (2 * arch.intermediate * g + 2 * arch.hidden * 4)


def autocast_copies(counts: ParameterCounts, setup: TrainingSetup) -> tuple[int, int, int]:
    """Low-precision copies of weights that autocast casts for matmuls and backward keeps (bytes).

    Returns (kept without checkpointing, kept with checkpointing, added by one recomputed layer). Trainable weights
    are cast once and cached for the whole forward; frozen weights of another dtype are cast per use and saved by
    the matmul for the input gradient: every Linear without checkpointing, lm_head plus one recomputed layer with it.
    """
    if setup.autocast_dtype is None:
        return 0, 0, 0
    c = setup.autocast_dtype
    size = nbytes(c)
    trainable = (counts.linear if setup.lora is None else counts.lora) if setup.trainable_dtype != c else 0
    frozen = setup.lora is not None and setup.base_dtype != c
    full = (trainable + (counts.linear if frozen else 0)) * size
    checkpointed = (trainable + (counts.lm_head if frozen else 0)) * size
    return full, checkpointed, (counts.layer_linear if frozen else 0) * size
