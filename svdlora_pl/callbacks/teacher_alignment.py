"""Teacher Alignment Monitor
=========================

Logs, during training, how close every LoRA update ΔW = scaling · B·A is to a teacher update given as a
factor file (``svd_factors_rank{r}.safetensors`` or ``synthesized_delta_rank{R}.safetensors``, see
:mod:`svdlora_pl.lora.factor_files`): the relative Frobenius error and the alignment of their top singular subspaces,
all computed in factored form.

Enable it in any LightningCLI run::

    trainer:
      callbacks:
        - class_path: svdlora_pl.callbacks.TeacherAlignmentMonitor
          init_args:
            factors: svd_results/svd_factors_rank16.safetensors
            every_n_steps: 50
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from svdlora_pl.callbacks.step_monitor import LoRAStepMonitor
from svdlora_pl.errors import InputError
from svdlora_pl.lora.factor_files import factors_for_layers
from svdlora_pl.lora.layers import short_name
from svdlora_pl.spectral import (
    FactoredSVD,
    factored_relative_error,
    factored_svd,
    split_factors,
    subspace_alignment,
    truncate,
)

AGGREGATES = ("mean", "min", "max")


class TeacherAlignmentMonitor(LoRAStepMonitor):
    """Logs per-layer distance and subspace alignment between the LoRA updates and a teacher update.

    The teacher of a layer is its factor-file update truncated to ``teacher_rank`` (default: the layer's
    LoRA rank r), i.e. the best rank-r approximation the LoRA could reach. Every LoRA layer must have a
    teacher of the same shape, and every teacher module a LoRA layer; otherwise ``setup`` fails naming them.

    Logged metrics (``<layer>`` as in :class:`~svdlora_pl.callbacks.LoRASpectrumMonitor`):

    - ``teacher/relative_error/<layer>``: ‖ΔW_lora − ΔW_teacher‖_F / ‖ΔW_teacher‖_F (1.0 at a zero LoRA
      update);
    - ``teacher/left_alignment/<layer>``, ``teacher/right_alignment/<layer>``: mean cosine of the principal
      angles between the top-k left (output-side) / right (input-side) singular subspaces of the two
      updates, k = min(LoRA rank, teacher rank); 1 = same subspace, 0 = orthogonal, and 0 for a zero update;
    - ``teacher/<metric>/mean``, ``.../min``, ``.../max``: aggregates over layers.

    Args:
        factors: Path of the teacher factor file (safetensors).
        every_n_steps: Interval in optimizer steps (gradient-accumulation micro-batches do not count).
        teacher_rank: Rank the teacher is truncated to; ``None`` uses each layer's LoRA rank.
        log_per_layer: Log every layer's metrics, not only the aggregates.
        adapter_name: PEFT adapter whose LoRA layers are measured.
    """

    def __init__(
        self,
        factors: str,
        every_n_steps: int = 50,
        teacher_rank: int | None = None,
        log_per_layer: bool = True,
        adapter_name: str = "default",
    ) -> None:
        super().__init__(every_n_steps, adapter_name)
        if teacher_rank is not None and teacher_rank < 1:
            raise MisconfigurationException(f"teacher_rank must be positive, got {teacher_rank}")
        if not Path(factors).is_file():
            raise InputError(f"{factors}: file not found (TeacherAlignmentMonitor.factors)")
        self.factors = factors
        self.teacher_rank = teacher_rank
        self.log_per_layer = log_per_layer
        self.teachers: dict[str, FactoredSVD] = {}
        self.teacher_factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(factors=self.factors, every_n_steps=self.every_n_steps)

    @override
    def on_layers_found(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        teacher = factors_for_layers(self.factors, self.layers)
        for ref in self.layers:
            B, A = teacher[ref.name]
            rank = self.teacher_rank or ref.A.shape[0]
            self.teachers[ref.name] = truncate(factored_svd(B, A), rank)
            self.teacher_factors[ref.name] = split_factors(self.teachers[ref.name], rank, mode="B")

    def layer_metrics(self) -> dict[str, dict[str, float]]:
        """``{layer: {relative_error, left_alignment, right_alignment}}`` at the current weights."""
        results = {}
        for ref in self.layers:
            teacher = self.teachers[ref.name]
            B_t, A_t = self.teacher_factors[ref.name]
            lora = factored_svd(ref.B, ref.A, ref.scaling)
            k = min(lora.S.numel(), teacher.S.numel())
            zero = not bool(lora.S.numel() and lora.S[0] > 0)
            alignment = {} if zero else subspace_alignment(lora, teacher, k)
            results[short_name(ref.name)] = {
                "relative_error": float(factored_relative_error(ref.B, ref.A, B_t, A_t, scale1=ref.scaling)),
                "left_alignment": float(alignment.get("left_cos_mean", 0.0)),
                "right_alignment": float(alignment.get("right_cos_mean", 0.0)),
            }
        return results

    @override
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        per_layer = self.layer_metrics()
        metrics: dict[str, float] = {}
        for metric in ("relative_error", "left_alignment", "right_alignment"):
            values = np.array([m[metric] for m in per_layer.values()])
            metrics.update({f"teacher/{metric}/{agg}": float(getattr(values, agg)()) for agg in AGGREGATES})
            if self.log_per_layer:
                metrics.update({f"teacher/{metric}/{name}": m[metric] for name, m in per_layer.items()})
        return metrics
