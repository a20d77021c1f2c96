"""Causal-LM loss over the supervised (answer) tokens without the full (batch × sequence × vocab) logits.

The standard path (``model(..., labels=...)``) computes logits for every position, B·T·V values (bf16 under
autocast), then an fp32 copy and its log-softmax inside the loss, and keeps them for backward: with Qwen2.5's
152,064-token vocabulary that is ~0.6 GB of bf16 logits per 2,048 tokens plus ~2.5 GB of fp32 copies and
gradients. Here the decoder's hidden states are gathered at the positions that have a label (the prompt is -100),
and the LM head and cross-entropy run over them ``chunk`` rows at a time, each chunk recomputed in backward
(non-reentrant activation checkpointing), so at most one chunk's logits (chunk × V in fp32) is alive. The value is
the same mean token NLL as the standard loss, to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def supervised_positions(hidden: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(hidden states N×H that predict a label, their N target ids): position t predicts label t + 1."""
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    return hidden[:, :-1][mask], targets[mask]


def _chunk_nll_sum(head: torch.nn.Module, hidden: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def chunked_cross_entropy(hidden: Tensor, targets: Tensor, head: torch.nn.Module, chunk: int) -> Tensor:
    """Mean cross-entropy of ``head(hidden)`` against ``targets``, ``chunk`` rows at a time (see module docstring)."""
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    count = targets.numel()
    if count == 0:  # nothing supervised: a zero that still depends on the graph
        return hidden.sum() * 0.0
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, count, chunk):
        part = slice(start, start + chunk)
        total = total + checkpoint(_chunk_nll_sum, head, hidden[part], targets[part], use_reentrant=False)
    return total / count
