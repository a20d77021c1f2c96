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

import math
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from svdlora_pl.callbacks.step_monitor import LoRAStepMonitor
from svdlora_pl.callbacks.tags import summary_tag
from svdlora_pl.errors import InputError
from svdlora_pl.lora.factor_files import factors_for_layers
from svdlora_pl.lora.layers import short_name
from svdlora_pl.spectral import FactoredSVD, cpu_threads, factored_svd, gram_svd, truncate

METRICS = ("relative_error", "left_alignment", "right_alignment")


def thin_svd(B: torch.Tensor, A: torch.Tensor, scale: float) -> FactoredSVD:
    """The thin SVD of scale·B·A in float64: by Cholesky QR where that is exact (:func:`~svdlora_pl.spectral.gram_svd`,
    the fast path), else by Householder QR (:func:`~svdlora_pl.spectral.factored_svd`, e.g. PEFT's B = 0 start)."""
    fast = gram_svd(B, A, scale, B.shape[1])
    return fast[0] if fast is not None else factored_svd(B, A, scale)


def compare(lora: FactoredSVD, teacher: FactoredSVD) -> dict[str, float]:
    """Relative error ‖ΔW − T‖_F / ‖T‖_F and the mean principal-angle cosines of the top-k left and right singular
    subspaces (k = the smaller rank) of two updates given as thin SVDs with orthonormal U and V.

    With M_U = U_ΔWᵀ·U_T and M_V = V_ΔWᵀ·V_T (k_ΔW × k_T): ⟨ΔW, T⟩ = Σᵢⱼ σᵢ·M_U,ij·τⱼ·M_V,ij, so
    ‖ΔW − T‖² = Σσᵢ² + Στⱼ² − 2·⟨ΔW, T⟩, and the cosines are the singular values of M_U[:k, :k] and M_V[:k, :k]:
    every matrix formed is k×k, no further QR. The subtraction leaves an absolute error of ~1e-8 (float64) in the
    relative error. A zero ΔW has relative error 1 and cosines 0; a zero teacher, error 0 (ΔW zero too) or inf.
    """
    lora_sq, teacher_sq = float((lora.S**2).sum()), float((teacher.S**2).sum())
    M_U, M_V = lora.U.mT @ teacher.U.to(lora.U.dtype), lora.V.mT @ teacher.V.to(lora.V.dtype)
    inner = float((lora.S[:, None] * M_U * teacher.S.to(lora.S.dtype)[None, :] * M_V).sum())
    error = math.sqrt(max(lora_sq + teacher_sq - 2.0 * inner, 0.0))
    if teacher_sq > 0:
        relative = error / math.sqrt(teacher_sq)
    else:
        relative = 0.0 if lora_sq == 0 else math.inf
    k = min(lora.S.numel(), teacher.S.numel())
    if not (k and lora_sq > 0 and teacher_sq > 0):
        return {"relative_error": relative, "left_alignment": 0.0, "right_alignment": 0.0}
    left, right = (torch.linalg.svdvals(M[:k, :k]).clamp(0.0, 1.0).mean() for M in (M_U, M_V))
    return {"relative_error": relative, "left_alignment": float(left), "right_alignment": float(right)}


class TeacherAlignmentMonitor(LoRAStepMonitor):
    """Logs per-layer distance and subspace alignment between the LoRA updates and a teacher update.

    The teacher of a layer is its factor-file update truncated to ``teacher_rank`` (default: the layer's
    LoRA rank r), i.e. the best rank-r approximation the LoRA could reach. Every LoRA layer must have a
    teacher of the same shape, and every teacher module a LoRA layer; otherwise ``setup`` fails naming them.

    Logged metrics (``<layer>`` and ``<kind>`` as in :class:`~svdlora_pl.callbacks.LoRASpectrumMonitor`):

    - ``weights.teacher_relative_error.<kind>/<layer>``: ‖ΔW_lora − ΔW_teacher‖_F / ‖ΔW_teacher‖_F (1.0 at a zero
      LoRA update);
    - ``weights.teacher_left_alignment.<kind>/<layer>``, ``weights.teacher_right_alignment.<kind>/<layer>``: mean
      cosine of the principal angles between the top-k left (output-side) / right (input-side) singular subspaces
      of the two updates, k = min(LoRA rank, teacher rank); 1 = same subspace, 0 = orthogonal, and 0 for a zero
      update;
    - ``weights/teacher_<metric>/mean``, ``.../min``, ``.../max``: each metric over all layers;
    - with TensorBoard and ``log_figures``, at each validation end: the heat map
      ``weights/heatmap/teacher_relative_error`` (layers × module kinds, colours 0–1) of the last measurement.

    Args:
        factors: Path of the teacher factor file (safetensors).
        every_n_steps: Interval in optimizer steps (gradient-accumulation micro-batches do not count).
        teacher_rank: Rank the teacher is truncated to; ``None`` uses each layer's LoRA rank.
        log_per_layer: Log every layer's metrics, not only the summaries over layers.
        log_figures: Log the heat map at each validation end (TensorBoard only).
        adapter_name: PEFT adapter whose LoRA layers are measured.
    """

    def __init__(
        self,
        factors: str,
        every_n_steps: int = 50,
        teacher_rank: int | None = None,
        log_per_layer: bool = True,
        log_figures: bool = True,
        adapter_name: str = "default",
    ) -> None:
        super().__init__(every_n_steps, adapter_name, log_per_layer, log_figures)
        if teacher_rank is not None and teacher_rank < 1:
            raise MisconfigurationException(f"teacher_rank must be positive, got {teacher_rank}")
        if not Path(factors).is_file():
            raise InputError(f"{factors}: file not found (TeacherAlignmentMonitor.factors)")
        self.factors = factors
        self.teacher_rank = teacher_rank
        self.teachers: dict[str, FactoredSVD] = {}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(factors=self.factors, every_n_steps=self.every_n_steps)

    @override
    def on_layers_found(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        teacher = factors_for_layers(self.factors, self.layers)
        with cpu_threads(self.num_threads):
            for ref in self.layers:
                B, A = teacher[ref.name]
                self.teachers[ref.name] = truncate(thin_svd(B, A, 1.0), self.teacher_rank or ref.A.shape[0])

    def layer_metrics(self) -> dict[str, dict[str, float]]:
        """``{layer: {relative_error, left_alignment, right_alignment}}`` at the current weights."""
        return {
            short_name(ref.name): compare(
                thin_svd(ref.B.detach(), ref.A.detach(), ref.scaling), self.teachers[ref.name]
            )
            for ref in self.layers
        }

    @override
    def measure_layers(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, dict[str, float]]:
        return {
            layer: {f"teacher_{metric}": value for metric, value in values.items()}
            for layer, values in self.layer_metrics().items()
        }

    @override
    def metric_names(self) -> list[str]:
        return [f"teacher_{metric}" for metric in METRICS]

    @override
    def summary_tags(self) -> list[str]:
        return [summary_tag(f"teacher_{metric}", "mean") for metric in METRICS]

    @override
    def heatmap_metrics(self) -> dict[str, tuple[float, float]]:
        return {"teacher_relative_error": (0.0, 1.0)}
