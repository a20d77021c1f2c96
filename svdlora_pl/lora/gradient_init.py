"""``GradientSVDInit``: LoRA started from the SVD of the task-loss gradient at the base weights (LoRA-One, LoRA-GA).

The gradient of the loss with respect to each frozen weight, over the fit's first training batches, is a teacher that
needs no earlier run: a real, task-driven direction, not a copy of a LoRA run's own update. It comes from
:func:`svdlora_pl.lora.gradients.gradient_svds`, by default sketched in hooks (the weights never get a ``.grad``;
O((out + in)·k) memory per layer instead of a weight-sized gradient), which is what fits a 7B model in 32 GB.
"""

from __future__ import annotations

from typing import Literal

import torch

from svdlora_pl.errors import InputError
from svdlora_pl.lora.gradients import Estimator, TrainingBatches, gradient_svds
from svdlora_pl.lora.init_math import lora_ga_factors, lora_one_factors
from svdlora_pl.lora.initializers import LoRAInitializer, set_factors, subtract_from_base
from svdlora_pl.lora.layers import find_lora_layers

Scheme = Literal["lora_one", "lora_ga"]


class GradientSVDInit(LoRAInitializer):
    """Start every LoRA layer from the top singular directions of the loss gradient G at the base weights.

    The gradient is averaged over the first ``num_batches`` batches of the fit's own training loader (its seeded
    order; every process of a distributed run its own shard, averaged over processes), once, at the start of a fresh
    fit, on the fit's device and precision, before the step-0 validation and the first optimizer step. Schemes:

    - ``lora_one`` (LoRA-One, arXiv 2502.01235): B·A = (√m / (γ·σ₁))·(−G)_r, the frozen W unchanged: the model starts
      one normalized gradient step into fine-tuning (:func:`~svdlora_pl.lora.init_math.lora_one_factors`).
    - ``lora_ga`` (LoRA-GA, arXiv 2407.05000, as PEFT's ``init_lora_weights="lora_ga"`` with its defaults: direction
      ArB2r, scale "stable", residual base): A = V_[:r]ᵀ, B = U_[r:2r]·diag(σ_[r:2r])·m^¼/√γ, and W ← W − scaling·B·A,
      so the output is unchanged at step 0 (:func:`~svdlora_pl.lora.init_math.lora_ga_factors`). Its trained
      adapter is saved converted to rank 2r for the unmodified base, as for every residual scheme.

    Both papers train with learning rates near full fine-tuning's (LoRA-GA: 2e-5 on Llama-2-7B; LoRA-One: 2e-5 with
    γ = 64); with LoRA's usual 1e-4 to 2e-4 the gradient start can overshoot: tune the learning rate per initializer.

    Args:
        scheme: ``lora_one`` or ``lora_ga``.
        num_batches: Training batches (of each process) the gradient is averaged over.
        estimator: ``sketch`` (one-pass randomized sketch in hooks, O((out + in)·k) memory) or ``exact`` (a dense
            gradient per layer, PEFT's memory; for checking and small models).
        oversample: Sketch size k = (r, or 2r for ``lora_ga``) + oversample.
        passes: Passes of the sketch over the batches: 1, or more for power iterations (each a forward and backward
            over the batches).
        stable_gamma: γ of both schemes' "stable" scale (larger: a smaller starting update).
        seed: Seed of the sketch's test matrices (the same on every process).
    """

    def __init__(
        self,
        scheme: Scheme = "lora_one",
        num_batches: int = 8,
        estimator: Estimator = "sketch",
        oversample: int = 40,
        passes: int = 1,
        stable_gamma: float = 16.0,
        seed: int = 0,
    ) -> None:
        field = "model.initializer.init_args"
        if scheme not in ("lora_one", "lora_ga"):
            raise InputError(f"{field}.scheme: must be 'lora_one' or 'lora_ga', got {scheme!r}")
        if estimator not in ("sketch", "exact"):
            raise InputError(f"{field}.estimator: must be 'sketch' or 'exact', got {estimator!r}")
        for name, value, low in (("num_batches", num_batches, 1), ("oversample", oversample, 0), ("passes", passes, 1)):
            if value < low:
                raise InputError(f"{field}.{name}: must be >= {low}, got {value}")
        if not stable_gamma > 0:
            raise InputError(f"{field}.stable_gamma: must be positive, got {stable_gamma}")
        self.scheme, self.num_batches, self.estimator = scheme, num_batches, estimator
        self.oversample, self.passes, self.stable_gamma, self.seed = oversample, passes, stable_gamma, seed

    @property
    def modifies_base(self) -> bool:
        return self.scheme == "lora_ga"

    @property
    def needs_data(self) -> bool:
        return True

    def initialize(self, model: torch.nn.Module, adapter_name: str) -> None:
        """B = 0 until the data arrive, so the gradient is taken at the base weights."""
        with torch.no_grad():
            for ref in find_lora_layers(model, adapter_name):
                ref.B.zero_()

    def initialize_with_data(
        self, model: torch.nn.Module, adapter_name: str, data: TrainingBatches
    ) -> dict[str, float]:
        layers = find_lora_layers(model, adapter_name)
        r = layers[0].A.shape[0]
        estimate = gradient_svds(
            model, adapter_name, data, rank=2 * r if self.scheme == "lora_ga" else r, num_batches=self.num_batches,
            estimator=self.estimator, oversample=self.oversample, passes=self.passes, seed=self.seed,
        )  # fmt: skip
        factors = lora_ga_factors if self.scheme == "lora_ga" else lora_one_factors
        with torch.no_grad():
            for ref in layers:
                B, A = factors(estimate.svds[ref.name], ref.A.shape[0], self.stable_gamma)
                B, A = data.broadcast(B.to(ref.B.dtype)), data.broadcast(A.to(ref.A.dtype))
                set_factors(ref, B, A)
                if self.modifies_base:
                    subtract_from_base(ref)
        return {
            "forward_backward_passes": float(estimate.forward_backward),
            "seconds": estimate.seconds,
            "accumulator_gb": estimate.accumulator_bytes / 1e9,
            "layers_sketched": float(estimate.layers_sketched),
            "layers": float(len(layers)),
        }
