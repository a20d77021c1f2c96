"""SVD of full matrices (exact or randomized, seeded) and splitting an SVD into PEFT-orientation LoRA factors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor

from svdlora_pl.errors import InputError
from svdlora_pl.spectral.factored import FactoredSVD, nonneg_int, shape_text


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
        raise InputError(f"expected a non-empty m×n matrix, got shape {shape_text(W)}")
    if method not in ("exact", "randomized"):
        raise InputError(f"method must be 'exact' or 'randomized', got {method!r}")
    W = W.detach().to(torch.promote_types(W.dtype, torch.float32))
    if not bool(torch.isfinite(W).all()):
        raise InputError(f"non-finite values in matrix {shape_text(W)}")
    if method == "exact":
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        full = FactoredSVD(U, S, Vh.mT)
        return full if rank is None else truncate(full, rank)
    if rank is None or nonneg_int(rank, "rank") == 0:
        raise InputError("randomized dense_svd needs rank >= 1")
    q = min(rank + nonneg_int(oversample, "oversample"), *W.shape)
    with _seeded_rng(W.device, seed):
        U, S, V = torch.svd_lowrank(W, q=q, niter=nonneg_int(niter, "niter"))
    return truncate(FactoredSVD(U, S, V), rank)


def truncate(svd: FactoredSVD, rank: int) -> FactoredSVD:
    """Best rank-``rank`` approximation U[:, :r]·diag(S[:r])·V[:, :r]ᵀ (Eckart–Young); rank is clamped to k."""
    r = nonneg_int(rank, "rank")
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
