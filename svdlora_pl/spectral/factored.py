"""Spectral linear algebra of LoRA updates ΔW = s·B·A, computed without ever forming ΔW.

Orientation (PEFT): for a Linear with weight W (m×n = out×in), A is r×n, B is m×r and ΔW = s·B·A. With reduced QR
B = Q_B·R_B and Aᵀ = Q_A·R_A, ΔW = Q_B·C·Q_Aᵀ with the small core C = s·R_B·R_Aᵀ (at most r×r): the thin SVD of ΔW is
the SVD of C rotated back, O((m+n)·r²) flops instead of O(mn·min(m, n)) dense, exact up to rounding (float64 default).

Metrics of a spectrum S (1-D, descending, non-negative; a k beyond len(S) is clamped) are Python floats, computed on
S/σ₁ in float64 with exact summation, so tiny or huge updates neither under- nor overflow.

**Zero update** (PEFT's B = 0 start, an all-zero or empty S): every metric is finite, never NaN:
``energy_ratio`` = 1.0 (nothing is lost, for every k), ``reconstruction_error`` = 0.0, ``effective_rank`` = 0.0,
``stable_rank`` = 0.0, ``spectral_norm`` = ``frobenius_norm`` = 0.0. ``factored_relative_error`` is 0.0 when both
updates are zero and inf when only the reference is; ``subspace_alignment`` with a zero update gives cosines 0.0.

Bad inputs (wrong number of dimensions, empty or mismatched shapes, non-finite values, negative or unsorted singular
values, negative ranks) raise :class:`svdlora_pl.errors.InputError` with a one-line message that gives the shapes.
"""

from __future__ import annotations

import contextlib
import math
import operator
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from svdlora_pl.errors import InputError

Scale = float | Tensor


@dataclass
class FactoredSVD:
    """Thin SVD ΔW = U·diag(S)·Vᵀ: U (m×k) and V (n×k) with orthonormal columns, S (k,) non-negative, descending."""

    U: Tensor
    S: Tensor
    V: Tensor

    def dense(self) -> Tensor:
        """The m×n matrix U·diag(S)·Vᵀ (forms it: O(mnk), for tests and small matrices)."""
        return (self.U * self.S) @ self.V.mT


# ---------------------------------------------------------------- helpers (validation and the QR core)
def _shape(t: Tensor) -> str:
    return "×".join(map(str, t.shape)) or "scalar"


def _check_pair(B: Tensor, A: Tensor, *, batched: bool = False) -> None:
    """Raise InputError unless B ([b×]m×r) and A ([b×]r×n) are non-empty factors of one update (or of a batch)."""
    nd = 3 if batched else 2
    ok = B.ndim == A.ndim == nd and B.shape[-1] == A.shape[-2] and B.shape[:-2] == A.shape[:-2]
    if not ok or 0 in B.shape + A.shape:
        want = "B (b×m×r), A (b×r×n)" if batched else "B (m×r), A (r×n)"
        raise InputError(f"expected LoRA factors {want} with the same r, got B {_shape(B)} and A {_shape(A)}")


def _check_same_update_shape(B1: Tensor, A1: Tensor, B2: Tensor, A2: Tensor) -> None:
    _check_pair(B1, A1)
    _check_pair(B2, A2)
    if B1.shape[0] != B2.shape[0] or A1.shape[1] != A2.shape[1]:
        raise InputError(f"updates differ in shape: B1 {_shape(B1)}·A1 {_shape(A1)} vs B2 {_shape(B2)}·A2 {_shape(A2)}")


def _core(B: Tensor, A: Tensor, scale: Scale, dtype: torch.dtype, *, with_q: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(Q_B, Q_A, C) with B = Q_B·R_B, Aᵀ = Q_A·R_A and C = scale·R_B·R_Aᵀ (batched over leading dims).

    Non-finite inputs propagate into C, so one small ``isfinite`` check on C covers B, A and scale.
    """
    mode = "reduced" if with_q else "r"
    Q_B, R_B = torch.linalg.qr(B.to(dtype), mode=mode)
    Q_A, R_A = torch.linalg.qr(A.to(dtype).mT, mode=mode)
    core = (R_B @ R_A.mT) * scale
    if not bool(torch.isfinite(core).all()):
        raise InputError(f"non-finite values in LoRA factors B {_shape(B)}, A {_shape(A)} or their scale")
    return Q_B, Q_A, core


def _nonneg_int(k: int, what: str = "k") -> int:
    try:
        k = operator.index(k)
    except TypeError:
        raise InputError(f"{what} must be an integer, got {k!r}") from None
    if k < 0:
        raise InputError(f"{what} must be >= 0, got {k}")
    return k


def _spectrum(S: Tensor) -> tuple[list[float], float]:
    """(S/σ₁ as floats, σ₁) after validation; ([], 0.0) for a zero or empty spectrum."""
    if S.ndim != 1:
        raise InputError(f"singular values must be a 1-D tensor, got shape {_shape(S)}")
    s = S.detach().to(torch.float64).tolist()
    if not all(math.isfinite(x) and x >= 0 for x in s) or any(b > a for a, b in zip(s, s[1:], strict=False)):
        raise InputError(f"singular values must be finite, non-negative and descending (got {len(s)} values)")
    top = s[0] if s else 0.0
    return ([x / top for x in s], top) if top > 0 else ([], 0.0)


def _head_tail(s: list[float], k: int) -> tuple[float, float]:
    """(Σ_{i≤k} sᵢ², Σ_{i>k} sᵢ²), each summed exactly (no cancellation from 1 − head/total)."""
    k = _nonneg_int(k)
    return math.fsum(x * x for x in s[:k]), math.fsum(x * x for x in s[k:])


# ---------------------------------------------------------------- SVD of a factored update
def factored_svd(B: Tensor, A: Tensor, scale: Scale = 1.0, *, dtype: torch.dtype = torch.float64) -> FactoredSVD:
    """Exact thin SVD of ΔW = scale·B·A without forming ΔW.

    B = Q_B·R_B, Aᵀ = Q_A·R_A, C = scale·R_B·R_Aᵀ = U_C·Σ·V_Cᵀ, so ΔW = (Q_B·U_C)·Σ·(Q_A·V_C)ᵀ. Cost O((m+n)·r²);
    k = min(m, n, r). Computed and returned in ``dtype``; the signs of singular vector pairs are arbitrary.
    """
    _check_pair(B, A)
    Q_B, Q_A, core = _core(B, A, scale, dtype, with_q=True)
    U_c, S, Vh_c = torch.linalg.svd(core, full_matrices=False)
    return FactoredSVD(Q_B @ U_c, S, Q_A @ Vh_c.mT)


def factored_svdvals(B: Tensor, A: Tensor, scale: Scale = 1.0, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """Singular values σ(scale·B·A) = σ(scale·R_B·R_Aᵀ) (k = min(m, n, r), descending, ``dtype``); no Q is formed."""
    _check_pair(B, A)
    return torch.linalg.svdvals(_core(B, A, scale, dtype, with_q=False)[2])


def batched_factored_svdvals(
    Bs: Tensor, As: Tensor, scales: Scale = 1.0, *, dtype: torch.dtype = torch.float64
) -> Tensor:
    """Singular values of scalesᵢ·Bsᵢ·Asᵢ for a batch of same-shape updates: Bs (b×m×r), As (b×r×n) → (b×k).

    Same formula as :func:`factored_svdvals`, with batched QR and SVD; ``scales`` is a float or a (b,) tensor.
    """
    _check_pair(Bs, As, batched=True)
    if isinstance(scales, Tensor):
        if scales.ndim > 1 or scales.numel() not in (1, Bs.shape[0]):
            raise InputError(f"scales must be a float or a ({Bs.shape[0]},) tensor, got shape {_shape(scales)}")
        scales = scales.to(dtype=dtype, device=Bs.device).reshape(-1, 1, 1)
    return torch.linalg.svdvals(_core(Bs, As, scales, dtype, with_q=False)[2])


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op CPU threads (``torch.set_num_threads``; None: unchanged), then restore.

    Many small QRs are not worth threads: with 2 threads on 2 busy cores the 196 modules of a 7B adapter took 15-23 s
    (threads wait for each other thousands of times), with 1 thread 0.13-0.2 s (0.09 s on idle cores with 2 threads).
    The setting is process-wide while the block runs.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_BATCH_BYTES = 4 << 20  # stacks of ~4 MiB stay in cache: measured 2.8x faster than one stack per shape on 2 cores


def _stacked_svdvals(
    factors: Mapping[str, tuple[Tensor, Tensor, Scale]], names: list[str], dtype: torch.dtype, device: torch.device
) -> Tensor:
    """batched_factored_svdvals of the same-shape modules ``names``, copied into one ``dtype`` stack."""
    (m, r), n = factors[names[0]][0].shape, factors[names[0]][1].shape[1]
    # Bᵀ stored row-major is B column-major: the layout LAPACK's QR works in, so no second copy is made.
    Bt = torch.empty(len(names), r, m, dtype=dtype, device=device)
    As = torch.empty(len(names), r, n, dtype=dtype, device=device)
    for i, name in enumerate(names):
        Bt[i].copy_(factors[name][0].mT)
        As[i].copy_(factors[name][1])
    scales = torch.tensor([float(factors[name][2]) for name in names], dtype=dtype, device=device)
    try:
        return batched_factored_svdvals(Bt.mT, As, scales, dtype=dtype)
    except InputError:
        bad = [nm for nm in names if not all(bool(torch.isfinite(torch.as_tensor(t)).all()) for t in factors[nm])]
        raise InputError(f"non-finite LoRA factors or scale in {bad or names} (B {m}×{r}, A {r}×{n})") from None


def svdvals_of_modules(
    factors: Mapping[str, tuple[Tensor, Tensor, Scale]],
    *,
    dtype: torch.dtype = torch.float64,
    num_threads: int | None = 1,
) -> dict[str, Tensor]:
    """Singular values of every update s·B·A in ``factors`` (name → (B, A, s)), batched by (m, n, r).

    Modules of one shape (and device) are copied into ``dtype`` stacks of about 4 MiB, each going through
    :func:`batched_factored_svdvals` in one call, under :func:`cpu_threads` ``(num_threads)``. Returns every name, in
    input order, with its k = min(m, n, r) values.
    """
    groups: dict[tuple[int, int, int, torch.device], list[str]] = {}
    for name, (B, A, _) in factors.items():
        try:
            _check_pair(B, A)
        except InputError as err:
            raise InputError(f"{name}: {err}") from None
        groups.setdefault((B.shape[0], A.shape[1], B.shape[1], B.device), []).append(name)
    result: dict[str, Tensor] = {}
    with cpu_threads(num_threads):
        for (m, n, r, device), group in groups.items():
            step = max(1, _BATCH_BYTES // ((m + n) * r * torch.finfo(dtype).bits // 8))
            for names in (group[i : i + step] for i in range(0, len(group), step)):
                result.update(zip(names, _stacked_svdvals(factors, names, dtype, device).unbind(0), strict=True))
    return {name: result[name] for name in factors}


# ---------------------------------------------------------------- metrics of a spectrum
def energy_ratio(S: Tensor, k: int) -> float:
    """Σ_{i≤k} σᵢ² / Σᵢ σᵢ²: share of ‖ΔW‖²_F in the top-k directions (1.0 for a zero update)."""
    s, _ = _spectrum(S)
    head, tail = _head_tail(s, k)
    return head / (head + tail) if s else 1.0


def reconstruction_error(S: Tensor, k: int) -> float:
    """√(Σ_{i>k} σᵢ²) / √(Σᵢ σᵢ²): relative Frobenius error of the best rank-k approximation (Eckart–Young).

    Summed from the tail, not as √(1 − energy), so small errors stay accurate; 0.0 for a zero update.
    """
    s, _ = _spectrum(S)
    head, tail = _head_tail(s, k)
    return math.sqrt(tail / (head + tail)) if s else 0.0


def effective_rank(S: Tensor) -> float:
    """exp(−Σ pᵢ·log pᵢ) with pᵢ = σᵢ / Σⱼ σⱼ (Roy & Vetterli 2007; 0·log 0 = 0); in [1, k], 0.0 for a zero update."""
    s, _ = _spectrum(S)
    total = math.fsum(s)
    return math.exp(-math.fsum(x / total * math.log(x / total) for x in s if x > 0)) if s else 0.0


def stable_rank(S: Tensor) -> float:
    """‖ΔW‖²_F / ‖ΔW‖²₂ = Σᵢ σᵢ² / σ₁²; in [1, k], 0.0 for a zero update."""
    s, _ = _spectrum(S)
    return math.fsum(x * x for x in s) if s else 0.0  # s is already S/σ₁


def spectral_norm(S: Tensor) -> float:
    """‖ΔW‖₂ = σ₁."""
    return _spectrum(S)[1]


def frobenius_norm(S: Tensor) -> float:
    """‖ΔW‖_F = √(Σᵢ σᵢ²)."""
    s, top = _spectrum(S)
    return top * math.sqrt(math.fsum(x * x for x in s))


def spectrum_summary(S: Tensor, ranks: Sequence[int]) -> dict[str, float]:
    """All metrics of one spectrum: ``energy@k`` and ``recon_error@k`` for each k in ``ranks``, ``effective_rank``,
    ``stable_rank``, ``frobenius_norm``, ``spectral_norm`` (these keys are part of the callbacks' logged names)."""
    S = S.detach().to("cpu", torch.float64)  # one device transfer; each metric below then reads a small CPU vector
    out: dict[str, float] = {}
    for k in ranks:
        out[f"energy@{k}"], out[f"recon_error@{k}"] = energy_ratio(S, k), reconstruction_error(S, k)
    out.update(effective_rank=effective_rank(S), stable_rank=stable_rank(S))
    out.update(frobenius_norm=frobenius_norm(S), spectral_norm=spectral_norm(S))
    return out


# ---------------------------------------------------------------- comparing two factored updates
def factored_inner(B1: Tensor, A1: Tensor, B2: Tensor, A2: Tensor, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """⟨B1·A1, B2·A2⟩_F = trace((B2ᵀ·B1)·(A1·A2ᵀ)) = Σ (B2ᵀ·B1) ⊙ (A2·A1ᵀ); O((m+n)·r1·r2), a 0-d ``dtype`` tensor."""
    _check_same_update_shape(B1, A1, B2, A2)
    B1, A1, B2, A2 = (t.to(dtype) for t in (B1, A1, B2, A2))
    return ((B2.mT @ B1) * (A2 @ A1.mT)).sum()


def _factored_norm(B: Tensor, A: Tensor, dtype: torch.dtype) -> float:
    """‖B·A‖_F = ‖R_B·R_Aᵀ‖_F (Q_B and Q_A have orthonormal columns)."""
    return float(torch.linalg.matrix_norm(_core(B, A, 1.0, dtype, with_q=False)[2]))


def factored_relative_error(
    B1: Tensor, A1: Tensor, B2: Tensor, A2: Tensor, scale1: Scale = 1.0, scale2: Scale = 1.0,
    *, dtype: torch.dtype = torch.float64,
) -> float:  # fmt: skip
    """‖s1·B1·A1 − s2·B2·A2‖_F / ‖s2·B2·A2‖_F; 0.0 if both updates are zero, inf if only the reference is.

    The difference is itself a factored update of rank r1 + r2, [B1, B2]·[s1·A1; −s2·A2], whose norm is taken from its
    QR core: no subtraction of squared norms, so nearly equal updates get an accurate small error (no cancellation).
    """
    _check_same_update_shape(B1, A1, B2, A2)
    B2d, A2d = B2.to(dtype), A2.to(dtype) * scale2
    diff = _factored_norm(torch.cat([B1.to(dtype), B2d], 1), torch.cat([A1.to(dtype) * scale1, -A2d], 0), dtype)
    ref = _factored_norm(B2d, A2d, dtype)
    return diff / ref if ref > 0 else (0.0 if diff == 0 else math.inf)


def subspace_cosines(U1: Tensor, U2: Tensor, k: int | None = None, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """Cosines of the principal angles between span(U1[:, :k]) and span(U2[:, :k]): svdvals(Q1ᵀ·Q2), descending.

    Columns are orthonormalized first (Q of a reduced QR); they should be linearly independent (singular vectors are).
    Returns min(k1, k2) values in [0, 1]: 1 for a shared direction, 0 for orthogonal ones.
    """
    if U1.ndim != 2 or U2.ndim != 2 or U1.shape[0] != U2.shape[0] or 0 in U1.shape + U2.shape:
        raise InputError(f"expected two non-empty bases m×k1 and m×k2, got {_shape(U1)} and {_shape(U2)}")
    if k is not None:
        k = _nonneg_int(k)
        U1, U2 = U1[:, :k], U2[:, :k]
    Q1, Q2 = (torch.linalg.qr(U.to(dtype)).Q for U in (U1, U2))
    if not bool(torch.isfinite(Q1).all() & torch.isfinite(Q2).all()):
        raise InputError(f"non-finite values in bases {_shape(U1)} and {_shape(U2)}")
    return torch.linalg.svdvals(Q1.mT @ Q2).clamp_(0.0, 1.0)


def subspace_alignment(svd1: FactoredSVD, svd2: FactoredSVD, k: int) -> dict[str, float]:
    """Mean and min principal-angle cosines of the top-k left (U) and right (V) singular subspaces of two updates.

    Keys ``left_cos_mean``, ``right_cos_mean``, ``left_cos_min``, ``right_cos_min``; all 0.0 if either update is zero.
    """
    if _nonneg_int(k) == 0:
        raise InputError("k must be >= 1 for subspace alignment")
    if not (_spectrum(svd1.S)[0] and _spectrum(svd2.S)[0]):
        return dict.fromkeys(("left_cos_mean", "right_cos_mean", "left_cos_min", "right_cos_min"), 0.0)
    left, right = subspace_cosines(svd1.U, svd2.U, k), subspace_cosines(svd1.V, svd2.V, k)
    return {
        "left_cos_mean": float(left.mean()), "right_cos_mean": float(right.mean()),
        "left_cos_min": float(left.min()), "right_cos_min": float(right.min()),
    }  # fmt: skip


# ---------------------------------------------------------------- dense matrices and factor splitting
@contextlib.contextmanager
def _seeded_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Seed the default RNG of ``device`` (and the CPU's) inside the block; restore both afterwards."""
    accel = device.type != "cpu"
    with torch.random.fork_rng(devices=[device] if accel else [], device_type=device.type if accel else None):
        torch.default_generator.manual_seed(seed)
        if accel:
            mod = torch.get_device_module(device.type)
            with mod.device(device):
                mod.manual_seed(seed)
        yield


def dense_svd(
    W: Tensor, rank: int | None = None, *, method: Literal["exact", "randomized"] = "exact",
    niter: int = 4, oversample: int = 10, seed: int = 0,
) -> FactoredSVD:  # fmt: skip
    """SVD of a full matrix W (m×n) truncated to ``rank`` (None: all min(m, n)), in W's dtype (at least float32).

    ``exact``: torch.linalg.svd(W, full_matrices=False), O(mn·min(m, n)), accurate to rounding.
    ``randomized``: torch.svd_lowrank(W, q=rank+oversample, niter) (Halko–Martinsson–Tropp), O(mn·q·(niter+1)); needs
    ``rank``. The error of σᵢ and of the leading subspaces scales with (σ_{q+1}/σᵢ)^(2·niter+1): near exact when the
    spectrum decays past ``rank``, only approximate when it is flat — raise ``niter``/``oversample`` or use exact.
    Its random test matrix is drawn under a forked RNG seeded with ``seed``: deterministic, global RNG untouched.
    """
    if W.ndim != 2 or 0 in W.shape:
        raise InputError(f"expected a non-empty m×n matrix, got shape {_shape(W)}")
    if method not in ("exact", "randomized"):
        raise InputError(f"method must be 'exact' or 'randomized', got {method!r}")
    W = W.detach().to(torch.promote_types(W.dtype, torch.float32))
    if not bool(torch.isfinite(W).all()):
        raise InputError(f"non-finite values in matrix {_shape(W)}")
    if method == "exact":
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        full = FactoredSVD(U, S, Vh.mT)
        return full if rank is None else truncate(full, rank)
    if rank is None or _nonneg_int(rank, "rank") == 0:
        raise InputError("randomized dense_svd needs rank >= 1")
    q = min(rank + _nonneg_int(oversample, "oversample"), *W.shape)
    with _seeded_rng(W.device, seed):
        U, S, V = torch.svd_lowrank(W, q=q, niter=_nonneg_int(niter, "niter"))
    return truncate(FactoredSVD(U, S, V), rank)


def truncate(svd: FactoredSVD, rank: int) -> FactoredSVD:
    """Best rank-``rank`` approximation U[:, :r]·diag(S[:r])·V[:, :r]ᵀ (Eckart–Young); rank is clamped to k."""
    r = _nonneg_int(rank, "rank")
    return FactoredSVD(svd.U[:, :r].contiguous(), svd.S[:r].contiguous(), svd.V[:, :r].contiguous())


def split_factors(svd: FactoredSVD, rank: int, mode: Literal["sqrt", "B"] = "sqrt") -> tuple[Tensor, Tensor]:
    """PEFT-orientation factors (B m×r, A r×n) with B·A = rank-r truncation of ``svd`` (r clamped to k).

    ``sqrt``: B = U·√Σ, A = √Σ·Vᵀ (balanced norms); ``B``: B = U·Σ, A = Vᵀ (orthonormal rows of A).
    """
    if mode not in ("sqrt", "B"):
        raise InputError(f"mode must be 'sqrt' or 'B', got {mode!r}")
    t = truncate(svd, rank)
    if mode == "B":
        return (t.U * t.S).contiguous(), t.V.mT.contiguous()
    root = t.S.sqrt()
    return (t.U * root).contiguous(), (root[:, None] * t.V.mT).contiguous()
