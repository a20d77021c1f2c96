"""The LoRA factor type: one Linear's update as PEFT stores it, ΔW = s·B·A.

What :func:`svdlora_pl.lora.adapters.read_adapter` returns per module and what the aggregation rules
(:mod:`svdlora_pl.aggregation.rules`) take per client.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class LoRAFactors:
    """One update of one Linear (out×in): ΔW = scaling · B·A.

    Attributes:
        B: out×r factor (PEFT's ``lora_B``).
        A: r×in factor (PEFT's ``lora_A``).
        scaling: PEFT's scaling s (alpha/r, or alpha/√r with rank-stabilized LoRA); 1 when folded into B·A.
    """

    B: Tensor
    A: Tensor
    scaling: float = 1.0

    @property
    def rank(self) -> int:
        """r: the rows of A."""
        return int(self.A.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in) of the Linear's weight."""
        return int(self.B.shape[0]), int(self.A.shape[1])
