"""Learning-rate schedules: linear warmup followed by cosine, linear or constant decay."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch.optim.lr_scheduler import LambdaLR

ScheduleKind = Literal["cosine", "linear", "constant"]


def lr_factor(step: int, warmup_steps: int, total_steps: int, kind: ScheduleKind, min_ratio: float) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Warmup: factor = (step + 1) / warmup_steps for step < warmup_steps.
    Then, with progress p = (step - warmup) / max(1, total - warmup) clipped to [0, 1]:
    cosine: min_ratio + (1 - min_ratio) * (1 + cos(pi p)) / 2; linear: min_ratio + (1 - min_ratio) * (1 - p);
    constant: 1.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress
    return min_ratio + (1.0 - min_ratio) * decay


def warmup_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, kind: ScheduleKind, min_ratio: float
) -> LambdaLR:
    """A ``LambdaLR`` stepping once per optimizer step with :func:`lr_factor`."""
    return LambdaLR(optimizer, lambda step: lr_factor(step, warmup_steps, total_steps, kind, min_ratio))
