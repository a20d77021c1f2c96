"""Memory plan of one training run on one device: byte counts of weights, LoRA parameters, gradients, optimizer
states, activations and logits of a Qwen2-style causal LM, as pure functions of its shape and the training setup.

Usage::

    from svdlora_pl.memory.architecture import count_parameters
    from svdlora_pl.memory.plan import plan_memory
    arch, counts = count_parameters(hf_config, lora)         # exact, from a model built on the meta device
    plan = plan_memory(arch, counts, setup)                   # setup: TrainingSetup (batch, dtypes, LoRA, ...)
    plan.total, plan.fits(32e9)

What each tensor costs is in :mod:`svdlora_pl.memory.activations` (the formulas in its docstring).

Peak of a training step = static (weights, trainable parameters, gradients, optimizer states, DDP buckets, FSDP
gather buffer) + stored activations + max(logits peak, recomputed layer + workspace); the optimizer step adds
one trainable-sized temporary (foreach AdamW's sqrt of the second moment) to the static part instead. On CUDA
the device also holds a context and allocator slack: :data:`CUDA_CONTEXT_BYTES` plus :data:`ALLOCATOR_SLACK` of
the allocated peak.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from svdlora_pl.errors import InputError
from svdlora_pl.memory.activations import (
    TrainingSetup,
    activations,
    autocast_copies,
    backward_workspace,
    logits_bytes,
    logits_peak_bytes,
    nbytes,
)
from svdlora_pl.memory.architecture import Architecture, ParameterCounts

CUDA_CONTEXT_BYTES = 1 << 30
"""CUDA context, cuBLAS/cuDNN workspaces and kernel images of a PyTorch process: about 0.5-1 GiB; 1 GiB is used."""
ALLOCATOR_SLACK = 0.10
"""Fraction of the allocated peak that PyTorch's caching allocator reserves beyond it (fragmentation, rounding)."""


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


def device_total(peak: int, accelerator: str) -> int:
    """Allocated peak plus, on CUDA, the context and the caching allocator's slack."""
    return peak + (CUDA_CONTEXT_BYTES + int(ALLOCATOR_SLACK * peak) if accelerator == "gpu" else 0)


def plan_memory(arch: Architecture, counts: ParameterCounts, setup: TrainingSetup) -> MemoryPlan:
    """Byte counts of one training step of ``setup`` on one device (how they add up: the module docstring).

    Args:
        arch: Shape of the model.
        counts: Its exact parameter counts (with the LoRA factors of ``setup.lora``).
        setup: Batch, dtypes, LoRA, checkpointing, optimizer states and strategy of the step.

    Returns:
        The plan; ``plan.total`` is what the device must hold, ``plan.fits(budget_bytes)`` the verdict.

    Raises:
        InputError: A micro-batch or sequence length below 1.
    """
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
