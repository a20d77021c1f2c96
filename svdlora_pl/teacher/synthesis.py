"""Teacher updates synthesized from a LoRA adapter, kept factored end to end (ΔW is never formed densely).

For one module with LoRA factors B (m×k), A (k×n) and scaling s, the LoRA update is ΔW_lora = s·B·A. Its exact
thin SVD U_r·diag(σ₁..σ_r)·V_rᵀ comes from :func:`svdlora_pl.spectral.factored_svd` (QR of the factors and a k×k
core), where r is the numerical rank (σᵢ > max(m, n)·ε₆₄·σ₁, numpy's ``matrix_rank`` rule). The synthesized
teacher of rank R (``target_rank``, r ≤ R ≤ min(m, n)) is built in three steps, all in float64:

1. **Spectrum.** Keep σ₁..σ_r and append R − r values decaying exponentially from σ_r::

       σ_{r+j} = σ_r · exp(−decay · j),   j = 1 .. R − r        (default decay = 0.1 per index)

   so the first added value is 0.905·σ_r and, for 16 → 64, the last is σ_r·e^{−4.8} ≈ 0.008·σ_r.
2. **Bases.** Complete U_r with R − r random orthonormal columns orthogonal to it: draw a Gaussian m×(R−r)
   matrix G (sampled in float32, torch's vectorized sampler, then used in float64), project out U_r,
   G' = G − U_r·P with P = U_rᵀ·G, and orthonormalize G' by Cholesky QR: G'ᵀG' = GᵀG − PᵀP = L·Lᵀ and
   U⊥ = G'·L⁻ᵀ. U⊥ is never formed: a product [U_r | U⊥]·W is computed as U_r·(W₁ − P·L⁻ᵀW₂) + G·(L⁻ᵀW₂), one
   pass over the m rows. Cholesky QR is exact to rounding when ‖G‖₂/σ_min(G') ≤ 100
   (:data:`svdlora_pl.spectral.CHOLESKY_MAX_COND`, :func:`svdlora_pl.spectral.guarded_cholesky`; a Gaussian G with
   m ≫ R − r gives 1-3); otherwise (nearly square completions) G is projected twice (classical Gram-Schmidt,
   the second pass removes rounding) and orthonormalized by Householder QR, and U⊥ is formed. Same for V_r
   (n×(R−r)). Call the completed bases U_R (m×R), V_R (n×R) and the spectrum S_R.
3. **Noise, inside the span.** Draw a Gaussian R×R matrix G_E and rescale it to the calibrated energy::

       E = G_E · (noise_scale · ‖ΔW_lora‖_F / ‖G_E‖_F),   so  ‖E‖_F² = noise_scale² · ‖ΔW_lora‖_F²  exactly,

   with ‖ΔW_lora‖_F² = Σ_{i≤r} σᵢ² (the kept energy). The teacher is

       ΔW_teacher = U_R · (diag(S_R) + E) · V_Rᵀ,

   i.e. the clean synthesized update plus the noise N = U_R·E·V_Rᵀ whose Frobenius energy is exactly
   ``noise_scale² · kept_energy`` (U_R, V_R are orthonormal). The noise mixes the directions, so the R×R core is
   re-diagonalized: diag(S_R) + E = U_c·Σ·V_cᵀ and the returned triple (U_R·U_c, Σ, V_R·V_c) is a true thin SVD
   (orthonormal columns, Σ descending). With ``noise_scale = 0`` no core SVD is taken and the result is exactly
   (U_R, S_R, V_R). The core is generically non-singular; a result whose smallest singular value falls below the
   numerical-rank tolerance (too large a ``decay`` or ``noise_scale``) is refused, so the teacher is exactly rank R.

The noise matrix is drawn whether or not ``noise_scale`` is 0, so for one seed the noisy and the clean teacher
share their bases and differ by exactly N. Randomness comes only from the given ``torch.Generator`` (CPU), never
from the global RNG. Cost per module O((m + n)·R² + R³).

Energy split reported per module (floats): ``kept_energy`` = Σ_{i≤r} σᵢ², ``added_energy`` = Σ_{j=1}^{R−r}
σ_{r+j}², ``noise_energy`` = ‖E‖_F², ``total_energy`` = ‖ΔW_teacher‖_F² = ΣΣᵢ² (which also holds the cross term
2⟨clean, N⟩), ``lora_rank`` = r and ``target_rank`` = R.
"""

from __future__ import annotations

import hashlib
import math
import operator
import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from svdlora_pl.errors import InputError
from svdlora_pl.lora.factor_files import write_safetensors
from svdlora_pl.spectral import FactoredSVD, Scale, cpu_threads, factored_svd, guarded_cholesky

DEFAULT_DECAY = 0.1
"""Default exponential decay rate of the appended tail per index: σ_{r+j} = σ_r·exp(−0.1·j)."""

_F64 = torch.float64


class Synthesis(NamedTuple):
    """Result of :func:`synthesize_module`: the teacher's thin SVD and its energy split (see the module docstring)."""

    svd: FactoredSVD
    energy: dict[str, float]


def _shape(t: Tensor) -> str:
    return "×".join(map(str, t.shape)) or "scalar"


def _rank_tol(m: int, n: int, top: float) -> float:
    """numpy ``matrix_rank`` tolerance for an m×n float64 matrix with largest singular value ``top``."""
    return max(m, n) * torch.finfo(_F64).eps * top


class _Completion(NamedTuple):
    """The basis [Q | Q⊥] (d×R): Q⊥ = (G − Q·P)·L⁻ᵀ by Cholesky QR (never formed), or Q⊥ = G when L is None."""

    Q: Tensor
    G: Tensor
    P: Tensor | None
    L: Tensor | None

    def times(self, W: Tensor) -> Tensor:
        """[Q | Q⊥]·W for W (R×c), without forming Q⊥: Q·(W₁ − P·L⁻ᵀW₂) + G·(L⁻ᵀW₂)."""
        r = self.Q.shape[1]
        W1, W2 = W[:r], W[r:]
        if self.L is not None and self.P is not None:
            W2 = torch.linalg.solve_triangular(self.L.mT, W2, upper=True)
            W1 = W1 - self.P @ W2
        return (self.Q @ W1).addmm_(self.G, W2)


def _complete(Q: Tensor, extra: int, generator: torch.Generator) -> _Completion:
    """[Q | Q⊥]: Q (d×r, orthonormal columns) completed with ``extra`` random orthonormal columns orthogonal to Q."""
    if extra == 0:
        return _Completion(Q, Q.new_zeros(Q.shape[0], 0), None, None)
    G = torch.randn(Q.shape[0], extra, generator=generator, dtype=torch.float32).to(dtype=_F64, device=Q.device)
    P = Q.mT @ G
    gram = G.mT @ G
    # G'ᵀG' for G' = G − Q·P; its rounding is u·‖G‖², amplified by 1/σ_min(G')²: bounded by GᵀG's top eigenvalue
    L = guarded_cholesky(gram - P.mT @ P, bound=gram)
    if L is not None:
        return _Completion(Q, G, P, L)
    for _ in range(2):  # classical Gram-Schmidt twice: orthogonality to rounding (~1e-16)
        G = G - Q @ (Q.mT @ G)
    return _Completion(Q, torch.linalg.qr(G, mode="reduced").Q, None, None)


def _check_params(target_rank: int, noise_scale: float, decay: float, where: str) -> int:
    try:
        target_rank = operator.index(target_rank)
    except TypeError:
        raise InputError(f"{where}: target_rank must be an integer, got {target_rank!r}") from None
    if not (isinstance(noise_scale, int | float) and math.isfinite(noise_scale) and noise_scale >= 0):
        raise InputError(f"{where}: noise_scale must be a finite number >= 0, got {noise_scale!r}")
    if not (isinstance(decay, int | float) and math.isfinite(decay) and decay >= 0):
        raise InputError(f"{where}: decay must be a finite number >= 0, got {decay!r}")
    return target_rank


def synthesize_module(
    B: Tensor,
    A: Tensor,
    scale: Scale,
    target_rank: int,
    *,
    noise_scale: float = 0.1,
    decay: float = DEFAULT_DECAY,
    generator: torch.Generator,
    name: str = "update",
) -> Synthesis:
    """Synthesize a rank-``target_rank`` teacher from one LoRA module's update ``scale·B·A`` (never forms it).

    Args:
        B: LoRA B factor, out×k (m×k).
        A: LoRA A factor, k×in (k×n).
        scale: LoRA scaling s (alpha/k, or alpha/√k with rslora); the update is s·B·A.
        target_rank: R, the rank of the teacher: r ≤ R ≤ min(m, n), r the numerical rank of s·B·A.
        noise_scale: relative noise: the noise energy is ``noise_scale² · ‖s·B·A‖_F²`` exactly (>= 0; 0 = none).
        decay: exponential rate of the appended tail, σ_{r+j} = σ_r·exp(−decay·j) (>= 0; default 0.1).
        generator: CPU ``torch.Generator``, the only source of randomness (bases and noise).
        name: module name used in error messages.

    Returns:
        ``Synthesis(svd, energy)``: the teacher as an exact float64 thin SVD (U m×R and V n×R orthonormal, S (R,)
        descending, all > 0) and the energy split ``kept_energy``, ``added_energy``, ``noise_energy``,
        ``total_energy``, ``lora_rank``, ``target_rank``.

    Raises:
        InputError: bad factor shapes, NaN/Inf in the factors or scale, a zero update, R < r or R > min(m, n),
            noise_scale or decay negative or not finite, or a result not numerically of rank R.
    """
    target_rank = _check_params(target_rank, noise_scale, decay, name)
    try:
        lora = factored_svd(B, A, scale)
    except InputError as error:
        raise InputError(f"{name}: {error}") from None
    m, n = B.shape[0], A.shape[1]
    top = float(lora.S[0])
    r = int((lora.S > _rank_tol(m, n, top)).sum())
    where = f"{name}: LoRA update {m}×{n} (B {_shape(B)}, A {_shape(A)}) of numerical rank {r}"
    if r == 0:
        raise InputError(f"{where} is zero (an untrained B = 0?): no principal directions to synthesize from")
    if not r <= target_rank <= min(m, n):
        raise InputError(f"{where}: target_rank {target_rank} must be between {r} and min(out, in) = {min(m, n)}")

    kept = lora.S[:r]
    tail = kept[-1] * torch.exp(-decay * torch.arange(1, target_rank - r + 1, dtype=_F64, device=kept.device))
    S_R = torch.cat([kept, tail])
    U_R = _complete(lora.U[:, :r], target_rank - r, generator)
    V_R = _complete(lora.V[:, :r], target_rank - r, generator)
    G_E = torch.randn(target_rank, target_rank, generator=generator, dtype=_F64).to(kept.device)

    kept_energy = math.fsum(x * x for x in kept.tolist())
    added_energy = math.fsum(x * x for x in tail.tolist())
    if noise_scale > 0:
        E = G_E * (noise_scale * math.sqrt(kept_energy) / float(torch.linalg.matrix_norm(G_E)))
        U_c, S, Vh_c = torch.linalg.svd(torch.diag(S_R) + E)
        svd = FactoredSVD(U_R.times(U_c), S, V_R.times(Vh_c.mT))
        noise_energy = float(torch.linalg.matrix_norm(E)) ** 2
    else:
        identity = torch.eye(target_rank, dtype=_F64, device=kept.device)
        svd = FactoredSVD(U_R.times(identity), S_R, V_R.times(identity))
        noise_energy = 0.0
    if not float(svd.S[-1]) > _rank_tol(m, n, float(svd.S[0])):
        raise InputError(
            f"{where}: the rank-{target_rank} teacher is numerically rank-deficient "
            f"(σ_min/σ_max = {float(svd.S[-1]) / float(svd.S[0]):.3g}); lower decay ({decay}) or noise_scale ({noise_scale})"
        )
    energy = {
        "kept_energy": kept_energy,
        "added_energy": added_energy,
        "noise_energy": noise_energy,
        "total_energy": math.fsum(x * x for x in svd.S.tolist()),
        "lora_rank": float(r),
        "target_rank": float(target_rank),
    }
    return Synthesis(svd, energy)


def module_seed(seed: int, index: int) -> int:
    """Seed of the ``index``-th module's generator: the first 63 bits of SHA-256 of ``"{seed}:{index}"``."""
    digest = hashlib.sha256(f"{operator.index(seed)}:{operator.index(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def synthesize_adapter(
    factors: Mapping[str, tuple[Tensor, Tensor, Scale]],
    target_rank: int,
    noise_scale: float = 0.1,
    decay: float = DEFAULT_DECAY,
    seed: int = 0,
) -> tuple[dict[str, FactoredSVD], dict[str, dict[str, float]]]:
    """Synthesize a teacher for every module of an adapter, ``{module: (B, A, scale)}``, in the mapping's order.

    Module i (0-based, in the given order) draws from its own CPU generator seeded with
    :func:`module_seed` ``(seed, i)``, so the result depends only on the inputs, the order and ``seed`` (not on the
    global RNG). See :func:`synthesize_module` for the arguments and the construction. Runs on one intra-op thread
    (:func:`svdlora_pl.spectral.cpu_threads`): many small factorizations gain nothing from threads, and lose much on
    busy cores.

    Returns:
        ``(svds, energies)``: ``{module: FactoredSVD}`` and ``{module: energy split}``. Each module's triple is
        computed in float64 and kept in the dtype of its factors, at least float32 (float32 for float32, bfloat16 or
        float16 factors, float64 for float64 factors): the float32 file :func:`save_synthesized` writes loses nothing
        to it, and a 7B adapter's teacher holds half the memory.
    """
    if not factors:
        raise InputError("no LoRA modules to synthesize from")
    svds: dict[str, FactoredSVD] = {}
    energies: dict[str, dict[str, float]] = {}
    with cpu_threads(1):
        for index, (module, (B, A, scale)) in enumerate(factors.items()):
            generator = torch.Generator().manual_seed(module_seed(seed, index))
            result = synthesize_module(
                B, A, scale, target_rank, noise_scale=noise_scale, decay=decay, generator=generator, name=module
            )
            dtype = torch.promote_types(torch.promote_types(B.dtype, A.dtype), torch.float32)
            svds[module] = FactoredSVD(*(t.to(dtype) for t in (result.svd.U, result.svd.S, result.svd.V)))
            energies[module] = result.energy
    return svds, energies


def save_synthesized(
    path: str | os.PathLike[str], svds: Mapping[str, FactoredSVD], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``{module: FactoredSVD}`` as ``<module>.U`` (out×R), ``<module>.S`` (R), ``<module>.V`` (in×R), float32.

    Written atomically with string ``metadata`` in the safetensors header; ΔW = U·diag(S)·Vᵀ, and
    :func:`svdlora_pl.lora.factor_files.load_factors` reads it back as ``{module: (B = U·diag(S), A = Vᵀ)}``. The file is
    streamed (:func:`svdlora_pl.lora.factor_files.write_safetensors`), one tensor converted at a time: no copy of the whole.
    """
    if not svds:
        raise InputError(f"{path}: no modules to save")
    tensors: dict[str, Tensor] = {}
    for module, svd in svds.items():
        U, S, V = svd.U, svd.S, svd.V
        if U.ndim != 2 or S.ndim != 1 or V.ndim != 2 or not U.shape[1] == S.shape[0] == V.shape[1]:
            raise InputError(f"{module}: U {_shape(U)}, S {_shape(S)}, V {_shape(V)} are not out×R, R, in×R")
        tensors.update({f"{module}.U": U, f"{module}.S": S, f"{module}.V": V})
    header = {str(key): str(value) for key, value in (metadata or {}).items()}
    return write_safetensors(path, tensors, header, dtype=torch.float32)
