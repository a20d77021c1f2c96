"""The math of LoRA initializers: pure functions from tensors to LoRA factors (PEFT orientation, A r×in, B out×r).

A LoRA layer computes W·x + scaling·B·A·x. Every function here returns factors whose update scaling·B·A is a chosen
rank-k matrix, with √σ split to both sides (balanced norms): for a target U_k·diag(σ_k)·V_kᵀ,
B = U_k·diag(√σ_k) / √scaling and A = diag(√σ_k)·V_kᵀ / √scaling. Residual schemes then replace the frozen W by
W − scaling·B·A (:func:`residual_weight`), so the layer's output is unchanged at step 0.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from svdlora_pl.spectral import FactoredSVD, dense_svd, factored_svd, split_factors

Components = Literal["principal", "minor"]


def _scaled_split(svd: FactoredSVD, k: int, scaling: float) -> tuple[Tensor, Tensor]:
    B, A = split_factors(svd, k, mode="sqrt")
    root = scaling**0.5
    return B / root, A / root


def warm_start_factors(B_t: Tensor, A_t: Tensor, rank: int, scaling: float) -> tuple[Tensor, Tensor, int]:
    """LoRA factors whose update scaling·B·A is the best rank-``rank`` approximation of ΔW = B_t·A_t.

    With the exact thin SVD of the factored ΔW = U·diag(σ)·Vᵀ truncated to k = min(rank, rank of ΔW) directions:
    B = U_k·diag(√σ_k) / √scaling, A = diag(√σ_k)·V_kᵀ / √scaling, so scaling·B·A = U_k·diag(σ_k)·V_kᵀ.
    Returns (B out×k, A k×in, k); the caller fills the remaining rank − k directions.
    """
    svd = factored_svd(B_t, A_t)
    tolerance = float(svd.S[0]) * 1e-12 if svd.S.numel() else 0.0
    k = min(rank, int((svd.S > tolerance).sum()))
    B, A = _scaled_split(svd, k, scaling)
    return B, A, k


def weight_components(
    W: Tensor,
    rank: int,
    scaling: float,
    components: Components = "principal",
    *,
    niter: int | None = None,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """LoRA factors holding ``rank`` singular components of the weight W itself (PiSSA / MiLoRA), in float32.

    ``principal`` (PiSSA, Meng et al. 2024): the top ``rank`` triplets, scaling·B·A = U_r·diag(σ_r)·V_rᵀ.
    ``minor`` (MiLoRA, Wang et al. 2024): the ``rank`` smallest, scaling·B·A = U_[-r:]·diag(σ_[-r:])·V_[-r:]ᵀ.
    ``niter`` (principal only): randomized SVD (``torch.svd_lowrank`` with 10 oversampling columns, seeded) with
    that many subspace iterations instead of the exact ``torch.linalg.svd``; the minor components need the exact SVD.
    """
    if components not in ("principal", "minor"):
        raise ValueError(f"components must be 'principal' or 'minor', got {components!r}")
    W = W.detach().float()
    if components == "minor":
        if niter is not None:
            raise ValueError("the minor singular components need the exact SVD (niter=None)")
        svd = dense_svd(W)
        k = min(rank, svd.S.numel())
        svd = FactoredSVD(svd.U[:, -k:], svd.S[-k:], svd.V[:, -k:])
    elif niter is None:
        svd = dense_svd(W, rank)
    else:
        svd = dense_svd(W, rank, method="randomized", niter=niter, seed=seed)
    return _scaled_split(svd, rank, scaling)


def residual_weight(W: Tensor, B: Tensor, A: Tensor, scaling: float) -> Tensor:
    """W − scaling·B·A, computed in float32 and returned in W's dtype.

    In float32 the layer's output W_res·x + scaling·B·A·x equals W·x to rounding (~1e-7 relative). In bfloat16 the
    stored W_res is rounded to 8 significant bits, so the output differs from the base model's by that rounding of
    W_res (relative ~2⁻⁹ per entry; see docs/initializers.md for the measured logit difference).
    """
    update = scaling * (B.detach().float() @ A.detach().float())
    return (W.detach().float() - update).to(W.dtype)


def lora_one_factors(gradient: FactoredSVD, rank: int, stable_gamma: float) -> tuple[Tensor, Tensor]:
    """LoRA-One's factors (Zhang, Liu & Chen, ICML 2025, arXiv 2502.01235) from the SVD of the loss gradient G.

    With −G = U·diag(σ)·Vᵀ (the gradient's SVD with U negated) and m the layer's output size::

        B = U_r·diag(√σ_r) · m^¼ / √(σ₁·γ),   A = diag(√σ_r)·V_rᵀ · m^¼ / √(σ₁·γ)

    so B·A = (√m / (γ·σ₁))·(−G)_r: one gradient-descent step in the top-r subspace of the full fine-tuning gradient,
    normalized by its largest singular value (the paper's normalized one-step spectral initialization, with its code's
    "stable" scale m^¼/√γ). The frozen W is unchanged: the model starts one step into fine-tuning.
    """
    r = min(rank, gradient.S.numel())
    top = float(gradient.S[0]) if r else 0.0
    if top == 0.0:  # a zero gradient: no direction to start in
        m, n = gradient.U.shape[0], gradient.V.shape[0]
        return gradient.U.new_zeros(m, r), gradient.V.new_zeros(r, n)
    root = gradient.S[:r].sqrt() * (gradient.U.shape[0] ** 0.25 / (top * stable_gamma) ** 0.5)
    return (-gradient.U[:, :r] * root).contiguous(), (root[:, None] * gradient.V[:, :r].mT).contiguous()


def lora_ga_factors(gradient: FactoredSVD, rank: int, stable_gamma: float) -> tuple[Tensor, Tensor]:
    """LoRA-GA's factors (Wang, Yu & Li, NeurIPS 2024, arXiv 2407.05000) as PEFT's ``lora_ga`` defaults make them.

    With G = U·diag(σ)·Vᵀ (2r triplets needed) and m the layer's output size, the "ArB2r" direction and "stable"
    scale::

        A = V_[:r]ᵀ,   B = U_[r:2r]·diag(σ_[r:2r]) · m^¼ / √γ

    Used with a residual base W ← W − scaling·B·A (the caller subtracts it), so the output is unchanged at step 0 and
    the first steps move B·A along the gradient's leading directions.
    """
    if gradient.S.numel() < 2 * rank:
        raise ValueError(f"LoRA-GA needs {2 * rank} singular triplets of the gradient, got {gradient.S.numel()}")
    A = gradient.V[:, :rank].mT
    B = gradient.U[:, rank : 2 * rank] * (gradient.S[rank : 2 * rank] * gradient.U.shape[0] ** 0.25 / stable_gamma**0.5)
    return B.contiguous(), A.contiguous()
