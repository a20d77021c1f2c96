"""Memory plan of one training run on one device: byte counts of weights, LoRA parameters, gradients, optimizer
states, activations and logits of a Qwen2-style causal LM, as pure functions of its shape and the training setup.

Usage::

    from svdlora_pl.memory.plan import count_parameters, plan_memory
    arch, counts = count_parameters(hf_config, lora)         # exact, from a model built on the meta device
    plan = plan_memory(arch, counts, setup)                   # setup: TrainingSetup (batch, dtypes, LoRA, ...)
    plan.total, plan.fits(32e9)

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

Peak of a training step = static (weights, trainable parameters, gradients, optimizer states, DDP buckets, FSDP
gather buffer) + stored activations + max(logits peak, recomputed layer + workspace); the
optimizer step adds one trainable-sized temporary (foreach AdamW's sqrt of the second moment) to the static part
instead. On CUDA the device also holds a context and allocator slack: :data:`CUDA_CONTEXT_BYTES` plus
:data:`ALLOCATOR_SLACK` of the allocated peak.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from svdlora_pl.errors import InputError

DTYPE_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}
DECODER_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SUPPORTED_MODEL_TYPES = ("qwen2", "llama", "mistral")
"""Decoder layers of this shape (RMSNorm, q/k/v/o attention, SwiGLU MLP): the formulas above hold for them."""

CUDA_CONTEXT_BYTES = 1 << 30
"""CUDA context, cuBLAS/cuDNN workspaces and kernel images of a PyTorch process: about 0.5-1 GiB; 1 GiB is used."""
ALLOCATOR_SLACK = 0.10
"""Fraction of the allocated peak that PyTorch's caching allocator reserves beyond it (fragmentation, rounding)."""

_QWEN25_7B: dict[str, Any] = {
    "model_type": "qwen2",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "max_position_embeddings": 131072,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "dtype": "bfloat16",  # "torch_dtype" in the config.json
}
PRESETS: dict[str, dict[str, Any]] = {
    # https://huggingface.co/Qwen/Qwen2.5-7B/blob/main/config.json (7,615,616,512 parameters)
    "qwen2.5-7b": _QWEN25_7B,
    # https://huggingface.co/Qwen/Qwen2.5-Math-7B-Instruct/blob/main/config.json: the same shape and parameter
    # count, a 4K context (max_position_embeddings 4096) with rope_theta 10000
    "qwen2.5-math-7b": {**_QWEN25_7B, "max_position_embeddings": 4096, "rope_theta": 10000.0},
}
"""Architectures known without a download: preset name -> ``config.json`` fields."""
PRESET_ALIASES = {
    "Qwen/Qwen2.5-7B": "qwen2.5-7b",
    "Qwen/Qwen2.5-7B-Instruct": "qwen2.5-7b",
    "Qwen/Qwen2.5-Math-7B": "qwen2.5-math-7b",
    "Qwen/Qwen2.5-Math-7B-Instruct": "qwen2.5-math-7b",
}
"""Hub names whose shape is a preset: used when their ``config.json`` is not in the local Hugging Face cache."""


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


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device. ``peak`` is the allocated peak with the configured checkpointing; ``total`` adds CUDA."""

    base_weights: dict[str, int]
    buffers: int
    trainable: int
    gradients: int
    optimizer_states: int
    autocast_copies: int
    ddp_buckets: int
    fsdp_gather: int
    activations_checkpointed: int
    activations_full: int
    layer_recompute: int
    backward_workspace: int
    logits: int
    logits_peak: int
    optimizer_step_temp: int
    peak_checkpointed: int
    peak_full: int
    peak: int
    cuda_overhead: int
    total: int
    checkpointing: bool
    transient: int
    """max(logits peak, backward of one layer) with the configured checkpointing."""
    layer_activations: dict[str, int] = field(default_factory=dict)

    @property
    def activations(self) -> int:
        """Activations kept for backward with the configured checkpointing."""
        return self.activations_checkpointed if self.checkpointing else self.activations_full

    @property
    def static(self) -> int:
        return (
            sum(self.base_weights.values())
            + self.buffers
            + self.trainable
            + self.gradients
            + self.optimizer_states
            + self.ddp_buckets
            + self.fsdp_gather
        )

    def fits(self, budget_bytes: float) -> bool:
        return self.total <= budget_bytes


def nbytes(dtype: str) -> int:
    """Bytes per element of a dtype name (``bfloat16``, ``float32``, ...)."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise InputError(f"dtype {dtype!r}: expected one of {', '.join(DTYPE_BYTES)}") from None


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
    """Build the model on the meta device (no weights allocated) and count its parameters exactly."""
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


def device_total(peak: int, accelerator: str) -> int:
    """Allocated peak plus, on CUDA, the context and the caching allocator's slack."""
    return peak + (CUDA_CONTEXT_BYTES + int(ALLOCATOR_SLACK * peak) if accelerator == "gpu" else 0)


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


def plan_memory(arch: Architecture, counts: ParameterCounts, setup: TrainingSetup) -> MemoryPlan:
    """Byte counts of one training step of ``setup`` on one device (formulas in the module docstring)."""
    if setup.micro_batch < 1 or setup.seq_len < 1:
        raise InputError(f"micro-batch {setup.micro_batch} x length {setup.seq_len}: both must be >= 1")
    s, t = setup.base_dtype, setup.trainable_dtype
    full = setup.lora is None
    trainable_params = counts.total if full else counts.lora
    frozen_params = 0 if full else counts.total
    shard = setup.world_size if setup.strategy == "fsdp" else 1
    base = {s: -(-frozen_params * nbytes(s) // shard)} if frozen_params else {}
    trainable = -(-trainable_params * nbytes(t) // shard)
    gradients = trainable
    optimizer = setup.optimizer_states * trainable
    ddp_buckets = gradients if setup.strategy == "ddp" and setup.world_size > 1 else 0
    fsdp_gather = 2 * counts.per_layer * nbytes(s) if setup.strategy == "fsdp" else 0

    act_full, act_ckpt, recompute, per_layer = activations(arch, setup)
    copies_full, copies_ckpt, copies_layer = autocast_copies(counts, setup)
    act_full, act_ckpt, recompute = act_full + copies_full, act_ckpt + copies_ckpt, recompute + copies_layer
    workspace = backward_workspace(arch, setup)
    logits_peak = logits_peak_bytes(
        setup.micro_batch, setup.seq_len, arch.vocab, setup.compute_dtype, setup.loss_chunk_tokens
    )
    static = sum(base.values()) + counts.buffer_bytes + trainable + gradients + optimizer + ddp_buckets + fsdp_gather
    step_temp = trainable if setup.optimizer_states else 0
    transient_ckpt, transient_full = max(logits_peak, recompute + workspace), max(logits_peak, workspace)
    peak_ckpt = max(static + act_ckpt + transient_ckpt, static + step_temp)
    peak_full = max(static + act_full + transient_full, static + step_temp)
    peak = peak_ckpt if setup.gradient_checkpointing else peak_full
    overhead = device_total(peak, setup.accelerator) - peak
    return MemoryPlan(
        base_weights=base,
        buffers=counts.buffer_bytes,
        trainable=trainable,
        gradients=gradients,
        optimizer_states=optimizer,
        autocast_copies=copies_ckpt if setup.gradient_checkpointing else copies_full,
        ddp_buckets=ddp_buckets,
        fsdp_gather=fsdp_gather,
        activations_checkpointed=act_ckpt,
        activations_full=act_full,
        layer_recompute=recompute,
        backward_workspace=workspace,
        logits=logits_bytes(setup.micro_batch, setup.seq_len, arch.vocab, setup.compute_dtype, setup.loss_chunk_tokens),
        logits_peak=logits_peak,
        optimizer_step_temp=step_temp,
        peak_checkpointed=peak_ckpt,
        peak_full=peak_full,
        peak=peak,
        cuda_overhead=overhead,
        total=peak + overhead,
        checkpointing=setup.gradient_checkpointing,
        transient=transient_ckpt if setup.gradient_checkpointing else transient_full,
        layer_activations=per_layer,
    )


def largest_fitting(
    arch: Architecture, counts: ParameterCounts, setup: TrainingSetup, budget_bytes: float, what: str, limit: int
) -> int:
    """Largest ``micro_batch`` or ``seq_len`` (``what``) up to ``limit`` whose plan fits; 0 if even 1 does not."""

    def fits(value: int) -> bool:
        return plan_memory(arch, counts, dataclasses.replace(setup, **{what: value})).fits(budget_bytes)

    if not fits(1):
        return 0
    low, high = 1, 2
    while high <= limit and fits(high):
        low, high = high, high * 2
    high = min(high, limit + 1)
    while high - low > 1:  # fits(low), not fits(high) (or high beyond the limit)
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low
