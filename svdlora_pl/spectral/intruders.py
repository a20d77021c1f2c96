"""Intruder dimensions of a fine-tuned weight W + ΔW against its base W (Shuttleworth et al. 2024, "LoRA vs full
fine-tuning: an illusion of equivalence", arXiv 2410.21228), with the LoRA update ΔW kept as factors.

A direction uⱼ among the top-k left singular vectors of the fine-tuned weight M = W + ΔW is an *intruder* when it
resembles none of the base's top-m left singular vectors u⁰ᵢ: maxᵢ |⟨uⱼ, u⁰ᵢ⟩| < ε (the paper and PEFT's post-hoc
``reduce_intruder_dimension`` use k = 10, ε = 0.5 and compare with every singular vector of W; here the base side is
its top m, computed once, so a direction of M that matches only a base singular vector beyond m also counts).

M is never formed: it is applied as an operator, M·X = W·X + Σ s·B·(A·X) and Mᵀ·Y = Wᵀ·Y + Σ s·Aᵀ·(Bᵀ·Y), so each
low-rank term costs O((m+n)·r·q) and the dense base is read once per product, in row blocks upcast one at a time (a
bf16 base never gets a float32 copy of itself). Its top singular triplets come from seeded randomized subspace
iteration (Halko, Martinsson & Tropp 2011, Alg. 4.4) with q = k + oversample columns, which may start from the
right singular vectors of a previous call (a warm start: a weight that changed little since then needs one
iteration). The error of the i-th vector shrinks as (σ_{q+1}/σᵢ)^(2·iterations + 1); with q ≥ min(m, n) the result
is exact up to rounding.

The base's top-m vectors are the same computation on W alone (more iterations, once); a base that a residual
initializer rewrote (W_res = W − s·B₀·A₀) is passed with the term s·B₀·A₀ so the comparison is with the original W.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from svdlora_pl.errors import InputError
from svdlora_pl.spectral.factored import FactoredSVD, nonneg_int, shape_text

LowRank = tuple[Tensor, Tensor, float]
"""One low-rank term s·B·A as (B m×r, A r×n, s)."""

BLOCK_BYTES = 64 << 20
"""Largest upcast block of the dense base: rows are converted to the working dtype this many bytes at a time."""


def _check(W: Tensor, updates: Sequence[LowRank]) -> None:
    if W.ndim != 2 or 0 in W.shape:
        raise InputError(f"expected a non-empty m×n weight, got shape {shape_text(W)}")
    for B, A, _ in updates:
        if (
            B.ndim != 2
            or A.ndim != 2
            or B.shape[0] != W.shape[0]
            or A.shape[1] != W.shape[1]
            or B.shape[1] != A.shape[0]
        ):
            raise InputError(
                f"low-rank term B {shape_text(B)}·A {shape_text(A)} does not fit weight {shape_text(W)} (B m×r, A r×n)"
            )


def half_precision_products(W: Tensor) -> bool:
    """Whether products with W run in its own half precision by default: a bf16/fp16 weight on a CUDA device."""
    return W.device.type == "cuda" and W.dtype in (torch.bfloat16, torch.float16)


def apply(
    W: Tensor, updates: Sequence[LowRank], X: Tensor, *, transpose: bool = False, block_bytes: int = BLOCK_BYTES,
    half: bool | None = None,
) -> Tensor:  # fmt: skip
    """(W + Σ s·B·A)·X, or its transpose times X, in X's dtype, without forming W + Σ s·B·A.

    W is used as it is when it already has X's dtype. A half-precision W is multiplied in its own precision when
    ``half`` (default: on CUDA, :func:`half_precision_products`): X is rounded to W's dtype, the product accumulates in
    float32 (tensor cores), and W is read once, with no copy; results then carry ~3 significant digits. Otherwise
    ``block_bytes`` worth of W's rows at a time are converted to X's dtype. Each low-rank term is applied as two thin
    products in X's dtype.
    """
    dtype, (m, n) = X.dtype, W.shape
    if W.dtype == dtype:
        out = W.mT @ X if transpose else W @ X
    elif (half_precision_products(W) if half is None else half) and W.dtype in (torch.bfloat16, torch.float16):
        low = X.to(W.dtype)
        out = (W.mT @ low if transpose else W @ low).to(dtype)
    else:
        step = max(1, block_bytes // (n * X.element_size()))
        if transpose:
            out = torch.zeros(n, X.shape[1], dtype=dtype, device=X.device)
            for i in range(0, m, step):
                out.addmm_(W[i : i + step].to(dtype).mT, X[i : i + step])
        else:
            out = torch.cat([W[i : i + step].to(dtype) @ X for i in range(0, m, step)])
    for B, A, s in updates:
        B, A = B.to(dtype), A.to(dtype)
        out.add_(A.mT @ (B.mT @ X) if transpose else B @ (A @ X), alpha=float(s))
    return out


def _orth(Y: Tensor) -> Tensor:
    return torch.linalg.qr(Y).Q


def top_singular_triplets(
    W: Tensor, updates: Sequence[LowRank] = (), k: int = 10, *, start: Tensor | None = None, niter: int = 1,
    oversample: int = 10, seed: int = 0, dtype: torch.dtype = torch.float32, block_bytes: int = BLOCK_BYTES,
    half: bool | None = None,
) -> FactoredSVD:  # fmt: skip
    """The q = min(k + oversample, m, n) leading singular triplets of M = W + Σ s·B·A by randomized subspace iteration.

    Y = M·Ω, then ``niter`` times Y = M·(Mᵀ·orth(Y)); with Q = orth(Y), the SVD of the q×n matrix Qᵀ·M = (Mᵀ·Q)ᵀ gives
    U = Q·Ũ, Σ, V: 2·niter + 2 products with M. Ω is ``start`` (n×q', e.g. a previous call's V; columns past q are
    dropped, missing ones drawn) or a Gaussian drawn from a generator seeded with ``seed`` (on the CPU, so the result
    is the same on every device). The first k triplets are the requested ones; the rest are less accurate and make a
    good ``start`` for the next call. Computed in ``dtype`` on W's device.

    Args:
        W: The dense m×n weight (any float dtype; read in row blocks of ``block_bytes`` when not ``dtype``).
        updates: Low-rank terms (B, A, s) added to W, kept factored.
        k: Number of triplets wanted.
        start: Starting right vectors (n×q'), or None for a seeded Gaussian.
        niter: Subspace iterations after the first product (each costs two products with M).
        oversample: Extra columns beyond k.
        seed: Seed of the Gaussian start.
        dtype: Working dtype (float32 or float64).
        block_bytes: Size of the upcast row blocks of W.
        half: Multiply a half-precision W in its own precision (see :func:`apply`); ``None``: on CUDA.
    """
    _check(W, updates)
    if nonneg_int(k, "k") == 0:
        raise InputError("k must be >= 1")
    m, n = W.shape
    q = min(k + nonneg_int(oversample, "oversample"), m, n)
    if start is not None and (start.ndim != 2 or start.shape[0] != n):
        raise InputError(f"start must have {n} rows (the weight's columns), got shape {shape_text(start)}")
    drawn = q if start is None else max(0, q - start.shape[1])
    columns = [] if start is None else [start[:, :q].to(device=W.device, dtype=dtype)]
    if drawn:
        generator = torch.Generator().manual_seed(seed)
        columns.append(torch.randn(n, drawn, generator=generator, dtype=dtype).to(W.device))
    omega = torch.cat(columns, dim=1)
    options = {"block_bytes": block_bytes, "half": half}
    Q = _orth(apply(W, updates, omega, **options))
    for _ in range(nonneg_int(niter, "niter")):
        Z = _orth(apply(W, updates, Q, transpose=True, **options))
        Q = _orth(apply(W, updates, Z, **options))
    U_q, S, Vh = torch.linalg.svd(apply(W, updates, Q, transpose=True, **options).mT, full_matrices=False)
    return FactoredSVD(Q @ U_q, S, Vh.mT)


def max_cosines(U: Tensor, U_base: Tensor) -> Tensor:
    """For each column uⱼ of U (m×k), maxᵢ |⟨uⱼ, u⁰ᵢ⟩| over the columns of U_base (m×m'); both orthonormal. Shape (k,)."""
    if U.ndim != 2 or U_base.ndim != 2 or U.shape[0] != U_base.shape[0] or 0 in U.shape + U_base.shape:
        raise InputError(f"expected bases m×k and m×m' with the same m, got {shape_text(U)} and {shape_text(U_base)}")
    return (U.mT @ U_base.to(U.dtype)).abs().amax(dim=1).clamp_(0.0, 1.0)


@dataclass(frozen=True)
class Intruders:
    """The intruder measurement of one fine-tuned weight."""

    count: int
    """How many of the top-k directions have a max cosine below the threshold."""
    cosines: Tensor
    """(k,) max cosine of each top-k left singular vector of W + ΔW with the base's top-m."""
    svd: FactoredSVD
    """The q leading triplets of W + ΔW (its V is the warm start of the next measurement)."""


def intruder_dimensions(
    W: Tensor, updates: Sequence[LowRank], U_base: Tensor, top_k: int = 10, threshold: float = 0.5,
    *, start: Tensor | None = None, niter: int = 1, oversample: int = 10, seed: int = 0,
    dtype: torch.dtype = torch.float32, half: bool | None = None,
) -> Intruders:  # fmt: skip
    """Intruder dimensions of W + Σ s·B·A against the base's top left singular vectors ``U_base`` (m×m').

    The top ``top_k`` left singular vectors uⱼ of the fine-tuned weight come from :func:`top_singular_triplets`
    (``start``, ``niter``, ``oversample``, ``seed``, ``dtype``, ``half`` as there); uⱼ is an intruder when
    maxᵢ |⟨uⱼ, u⁰ᵢ⟩| < ``threshold``.
    """
    if not 0.0 < threshold <= 1.0:
        raise InputError(f"threshold must be in (0, 1], got {threshold}")
    if U_base.ndim != 2 or U_base.shape[0] != W.shape[0]:
        raise InputError(f"U_base must have {W.shape[0]} rows (the weight's rows), got shape {shape_text(U_base)}")
    svd = top_singular_triplets(
        W, updates, top_k, start=start, niter=niter, oversample=oversample, seed=seed, dtype=dtype, half=half
    )
    cosines = max_cosines(svd.U[:, :top_k], U_base)
    return Intruders(int((cosines < threshold).sum()), cosines, svd)
