"""Cholesky QR: orthonormal bases from Gram matrices, guarded by a condition-number limit, and the thin SVD of a LoRA
update ΔW = s·B·A by Cholesky QR of its factors (:func:`gram_svd`).

Cholesky QR of a tall X (rows×k) factors its k×k Gram matrix XᵀX = L·Lᵀ and takes Q = X·L⁻ᵀ: two passes over the
rows (one Gram product, one thin product), against Householder QR's k, so it is the fast path for many small
factorizations. Its weakness is rounding: the Gram matrix squares the condition number, and the loss of orthogonality
of Q is ~ κ(X)²·ε (ε = 2.2e-16 in float64). :func:`guarded_cholesky` therefore takes a Gram matrix only when κ ≤
:data:`CHOLESKY_MAX_COND` (100: orthogonality to ~1e4·ε ≈ 2e-12) and positive definite to working precision; callers
fall back to Householder QR (:func:`torch.linalg.qr`, :func:`svdlora_pl.spectral.factored_svd`) otherwise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from svdlora_pl.spectral.factored import FactoredSVD, Scale

CHOLESKY_MAX_COND = 100.0
"""Largest condition number κ that Cholesky QR is used for: orthogonality of Q is lost as κ²·ε (1e4·ε₆₄ ≈ 2e-12)."""


def guarded_cholesky(gram: Tensor, bound: Tensor | None = None) -> Tensor | None:
    """The lower Cholesky factor L (gram = L·Lᵀ) of a Gram matrix, or None when Cholesky QR from it is not exact.

    Refused (None): non-finite entries, or λ_max(bound) > :data:`CHOLESKY_MAX_COND`²·λ_min(gram) (a condition number
    above the limit, a singular or indefinite matrix, NaN eigenvalues), or a failed factorization.

    Args:
        gram: symmetric k×k Gram matrix XᵀX of the columns to orthonormalize (float64 for exactness).
        bound: a Gram matrix whose largest eigenvalue bounds the rounding of ``gram`` (the Gram matrix of the
            unprojected columns when ``gram`` is that of a projection, G'ᵀG' = GᵀG − PᵀP); default ``gram`` itself.
    """
    reference = gram if bound is None else bound
    if not (bool(torch.isfinite(gram).all()) and bool(torch.isfinite(reference).all())):
        return None
    low = float(torch.linalg.eigvalsh(gram)[0])
    top = float(torch.linalg.eigvalsh(reference)[-1])
    if not top <= CHOLESKY_MAX_COND**2 * low:  # also refuses low <= 0 and NaN
        return None
    L, info = torch.linalg.cholesky_ex(gram)
    return L if int(info) == 0 else None


def _scaled_cholesky(X: Tensor) -> tuple[Tensor, Tensor] | None:
    """(L, d) with diag(d)·XᵀX·diag(d) = L·Lᵀ, d = 1/‖column‖ (X float64, rows×k); None if refused (see above)."""
    gram = X.mT @ X
    d = gram.diagonal().rsqrt()
    L = guarded_cholesky(gram * d[:, None] * d)
    return None if L is None else (L, d)


def gram_svd(B: Tensor, A: Tensor, scale: Scale, rank: int) -> tuple[FactoredSVD, Tensor] | None:
    """Top-``rank`` thin SVD and all k singular values of ΔW = scale·B·A by Cholesky QR, or None if it does not apply.

    With D = diag(BᵀB)^(-1/2) and D·BᵀB·D = L_B·L_Bᵀ: B = Q_B·R_B with R_B = L_Bᵀ·D⁻¹ and Q_B = B·D·L_B⁻ᵀ; the same
    for Aᵀ. The k×k core C = scale·R_B·R_Aᵀ = U_c·Σ·V_cᵀ gives U = B·(D·L_B⁻ᵀ·U_c) and V = Aᵀ·(D_A·L_A⁻ᵀ·V_c), formed
    for the top ``rank`` columns only: two Gram products and two thin products over the rows, in float64. Exact to
    rounding when both column-scaled factors have κ ≤ :data:`CHOLESKY_MAX_COND` (the U·diag(S), Vᵀ of an SVD-form
    file, random LoRA factors); None otherwise (ill-conditioned, rank-deficient, zero or non-finite factors, k above
    out or in), for :func:`svdlora_pl.spectral.factored_svd` (Householder QR). Signs of singular vector pairs are
    arbitrary.

    Args:
        B: out×k factor.
        A: k×in factor.
        scale: the update's scaling.
        rank: number of singular vectors to form (clamped to k).
    """
    if B.ndim != 2 or A.ndim != 2 or A.shape[0] != B.shape[1] or not 0 < B.shape[1] <= min(B.shape[0], A.shape[1]):
        return None
    k = B.shape[1]
    Bd, Ad = B.to(torch.float64), A.to(torch.float64)
    left, right = _scaled_cholesky(Bd), _scaled_cholesky(Ad.mT)
    if left is None or right is None:
        return None
    (L_B, d_B), (L_A, d_A) = left, right
    core = ((L_B.mT / d_B) @ (L_A.mT / d_A).mT) * scale
    if not bool(torch.isfinite(core).all()):
        return None
    U_c, S, Vh_c = torch.linalg.svd(core)
    r = min(rank, k)
    W_B = d_B[:, None] * torch.linalg.solve_triangular(L_B.mT, U_c[:, :r], upper=True)
    W_A = d_A[:, None] * torch.linalg.solve_triangular(L_A.mT, Vh_c[:r].mT, upper=True)
    return FactoredSVD(Bd @ W_B, S[:r], (W_A.mT @ Ad).mT), S  # (W_Aᵀ·A)ᵀ: 4x faster than Aᵀ·W_A (measured)
