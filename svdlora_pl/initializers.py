"""LoRA initializers: how the factors of a freshly created PEFT LoRA model get their starting values.

An initializer is selected on :class:`svdlora_pl.model.QwenLoRAModule` by ``class_path``::

    model:
      initializer:
        class_path: svdlora_pl.initializers.RandomInit
        init_args:
          distribution: gaussian

Writing a new one means writing one subclass of :class:`LoRAInitializer`: it may pick PEFT's own
``init_lora_weights`` value (:meth:`LoRAInitializer.peft_init`), and it may rewrite the factors (and, for
residual schemes, the frozen base weights) once the LoRA layers exist (:meth:`LoRAInitializer.initialize`).
"""

from __future__ import annotations

from typing import Literal

import torch


class LoRAInitializer:
    """Base class of LoRA initializers; subclasses override one or both hooks."""

    def peft_init(self) -> bool | str:
        """Value given to ``peft.LoraConfig(init_lora_weights=...)`` when the LoRA layers are created."""
        return True

    def initialize(self, model: torch.nn.Module, adapter_name: str) -> None:
        """Rewrite factors of ``model`` (a ``peft.PeftModel``) after creation; the default keeps PEFT's values."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class RandomInit(LoRAInitializer):
    """PEFT's default random initialization: B = 0 so the model starts exactly at the base model.

    Args:
        distribution: Distribution of A. ``kaiming_uniform`` (PEFT's default, ``init_lora_weights=True``):
            A ~ U(-b, b) with b = sqrt(6 / ((1 + a²) · in_features)), a = sqrt(5); ``gaussian``
            (``init_lora_weights="gaussian"``): A ~ N(0, 1/r²).
    """

    def __init__(self, distribution: Literal["kaiming_uniform", "gaussian"] = "kaiming_uniform") -> None:
        if distribution not in ("kaiming_uniform", "gaussian"):
            raise ValueError(f"distribution must be 'kaiming_uniform' or 'gaussian', got {distribution!r}")
        self.distribution = distribution

    def peft_init(self) -> bool | str:
        return True if self.distribution == "kaiming_uniform" else "gaussian"


def warm_start_factors(
    B_t: torch.Tensor, A_t: torch.Tensor, rank: int, scaling: float
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """LoRA factors whose update scaling·B·A is the best rank-``rank`` approximation of ΔW = B_t·A_t.

    With the thin SVD ΔW = U·diag(σ)·Vᵀ truncated to k = min(rank, rank of ΔW) directions:
    B = U_k·diag(√σ_k) / √scaling, A = diag(√σ_k)·V_kᵀ / √scaling, so scaling·B·A = U_k·diag(σ_k)·V_kᵀ.
    Returns (B out×k, A k×in, k); the caller fills the remaining rank − k directions.
    """
    from svdlora_pl.spectral import factored_svd, split_factors

    svd = factored_svd(B_t, A_t)
    tolerance = float(svd.S[0]) * 1e-12 if svd.S.numel() else 0.0
    k = min(rank, int((svd.S > tolerance).sum()))
    B, A = split_factors(svd, k, mode="sqrt")
    root = scaling**0.5
    return B / root, A / root, k


class SVDTeacherInit(LoRAInitializer):
    """Start every LoRA layer from the SVD of a teacher update read from a factor file (warm start).

    At step 0 each layer's update scaling·B·A equals the best rank-r approximation of the teacher's ΔW for that
    module (its top r singular directions, √σ split to both factors), so training starts where the teacher's
    low-rank part is. A teacher of rank below r fills the missing directions as PEFT's default does (A random,
    B zero columns): the update is unchanged and every direction still receives gradient.

    The factor file (``svdlora factorize`` / ``svdlora synthesize`` output, see :mod:`svdlora_pl.factors`) must
    hold exactly the model's LoRA target modules, by base-model path, with matching shapes.

    Args:
        factors: Path of the teacher factor file (safetensors).
    """

    def __init__(self, factors: str) -> None:
        self.factors = factors

    def initialize(self, model: torch.nn.Module, adapter_name: str) -> None:
        from svdlora_pl.factors import factors_for_layers
        from svdlora_pl.lora_layers import find_lora_layers

        layers = find_lora_layers(model, adapter_name)
        teacher = factors_for_layers(self.factors, layers)
        with torch.no_grad():
            for ref in layers:
                B_t, A_t = teacher[ref.name]
                B, A, k = warm_start_factors(B_t, A_t, ref.A.shape[0], ref.scaling)
                ref.B[:, :k].copy_(B)
                ref.B[:, k:].zero_()
                ref.A[:k].copy_(A)  # rows k.. keep PEFT's random init
