"""Metrics of a singular spectrum S (1-D, descending, non-negative; a k beyond len(S) is clamped).

Values are Python floats computed on S/σ₁ in float64 with exact summation, so tiny or huge updates neither under- nor
overflow. A zero update (PEFT's B = 0 start, an all-zero or empty S) gives finite values, never NaN:
``energy_ratio`` = 1.0 (nothing is lost, for every k), ``reconstruction_error`` = 0.0, ``effective_rank`` = 0.0,
``stable_rank`` = 0.0, ``spectral_norm`` = ``frobenius_norm`` = 0.0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from svdlora_pl.errors import InputError
from svdlora_pl.spectral.factored import nonneg_int, shape_text


def _spectrum(S: Tensor) -> tuple[list[float], float]:
    """(S/σ₁ as floats, σ₁) after validation; ([], 0.0) for a zero or empty spectrum."""
    if S.ndim != 1:
        raise InputError(f"singular values must be a 1-D tensor, got shape {shape_text(S)}")
    s = S.detach().to(torch.float64).tolist()
    if not all(math.isfinite(x) and x >= 0 for x in s) or any(b > a for a, b in zip(s, s[1:], strict=False)):
        raise InputError(f"singular values must be finite, non-negative and descending (got {len(s)} values)")
    top = s[0] if s else 0.0
    return ([x / top for x in s], top) if top > 0 else ([], 0.0)


def _head_tail(s: list[float], k: int) -> tuple[float, float]:
    """(Σ_{i≤k} sᵢ², Σ_{i>k} sᵢ²), each summed exactly (no cancellation from 1 − head/total)."""
    k = nonneg_int(k)
    return math.fsum(x * x for x in s[:k]), math.fsum(x * x for x in s[k:])


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
