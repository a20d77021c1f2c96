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
