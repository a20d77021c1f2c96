"""Spectrum metrics against numpy float64, the zero update's documented values, and input validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from spectral.cases import CASES, F64, dense, factors, make_case, np_svdvals

from svdlora_pl.errors import InputError
from svdlora_pl.spectral import (
    effective_rank,
    energy_ratio,
    factored_svd,
    factored_svdvals,
    frobenius_norm,
    reconstruction_error,
    spectral_norm,
    spectrum_summary,
    stable_rank,
    truncate,
)


def np_metrics(s: np.ndarray, k: int) -> dict[str, float]:
    """Reference formulas on a numpy dense spectrum (non-zero update)."""
    sq, p = s**2, s / s.sum()
    p = p[p > 0]
    return {
        "energy": sq[:k].sum() / sq.sum(),
        "recon": math.sqrt(sq[k:].sum() / sq.sum()),
        "effective_rank": math.exp(-(p * np.log(p)).sum()),
        "stable_rank": sq.sum() / sq[0],
    }


@pytest.mark.parametrize("case", [c for c in CASES if "zero" not in c[5]], ids=lambda c: c[0])
def test_metrics_match_numpy(case):
    _, m, n, r, scale, kw = case
    B, A = make_case(m, n, r, kw)
    S, ref, W = factored_svdvals(B, A, scale), np_svdvals(B, A, scale), dense(B, A, scale)
    for k in (0, 1, 2, r, r + 5):  # r + 5 > len(S): clamped
        want = np_metrics(ref, k)
        assert energy_ratio(S, k) == pytest.approx(want["energy"], rel=1e-10, abs=1e-12)
        assert reconstruction_error(S, k) == pytest.approx(want["recon"], rel=1e-6, abs=1e-7)
    want = np_metrics(ref, 1)
    assert effective_rank(S) == pytest.approx(want["effective_rank"], rel=1e-9)
    assert stable_rank(S) == pytest.approx(want["stable_rank"], rel=1e-10)
    assert spectral_norm(S) == pytest.approx(np.linalg.norm(W, 2), rel=1e-10)
    assert frobenius_norm(S) == pytest.approx(np.linalg.norm(W, "fro"), rel=1e-10)
    assert 1.0 - 1e-12 <= effective_rank(S) <= len(S) + 1e-12 and 1.0 - 1e-12 <= stable_rank(S) <= len(S) + 1e-12


def test_reconstruction_error_is_the_error_of_the_truncation():
    """Eckart–Young, checked directly: ‖ΔW − ΔW_k‖_F / ‖ΔW‖_F of the formed truncation equals the formula."""
    B, A = factors(30, 20, 8, seed=3)
    svd, W = factored_svd(B, A), dense(B, A)
    for k in range(0, 10):
        err = np.linalg.norm(W - truncate(svd, k).dense().numpy()) / np.linalg.norm(W)
        assert reconstruction_error(svd.S, k) == pytest.approx(err, rel=1e-8, abs=1e-12)
    tiny = torch.tensor([1.0, 1e-9, 1e-10], dtype=F64)  # no cancellation: √(1 − energy) would give ~1e-8 noise
    assert reconstruction_error(tiny, 1) == pytest.approx(math.sqrt(1e-18 + 1e-20), rel=1e-12)


ZERO_VALUES = {"energy@1": 1.0, "recon_error@1": 0.0, "energy@0": 1.0, "recon_error@0": 0.0, "energy@32": 1.0}
ZERO_VALUES |= {"recon_error@32": 0.0, "effective_rank": 0.0, "stable_rank": 0.0}
ZERO_VALUES |= {"frobenius_norm": 0.0, "spectral_norm": 0.0}


@pytest.mark.parametrize(
    "S", [torch.zeros(4), torch.zeros(0), torch.zeros(1, dtype=F64)], ids=["zeros", "empty", "one"]
)
def test_zero_update_gives_documented_finite_values(S):
    assert spectrum_summary(S, [0, 1, 32]) == ZERO_VALUES
    B, A = factors(20, 10, 4, seed=1)
    S0 = factored_svdvals(torch.zeros_like(B), A)  # PEFT's B = 0 start
    assert torch.equal(S0, torch.zeros(4, dtype=F64))
    assert spectrum_summary(S0, [0, 1, 32]) == ZERO_VALUES


def test_spectrum_summary_keys_and_values():
    S = torch.tensor([3.0, 2.0, 1.0])
    out = spectrum_summary(S, [1, 4])
    assert list(out) == ["energy@1", "recon_error@1", "energy@4", "recon_error@4", "effective_rank", "stable_rank",
                         "frobenius_norm", "spectral_norm"]  # fmt: skip
    assert all(isinstance(v, float) for v in out.values())
    assert out["energy@1"] == pytest.approx(9 / 14) and out["recon_error@1"] == pytest.approx(math.sqrt(5 / 14))
    assert out["energy@4"] == 1.0 and out["recon_error@4"] == 0.0
    assert out["stable_rank"] == pytest.approx(14 / 9) and out["frobenius_norm"] == pytest.approx(math.sqrt(14))
    assert out["spectral_norm"] == 3.0


@pytest.mark.parametrize(
    "S, k",
    [(torch.ones(2, 2), 1), (torch.tensor([1.0, -0.5]), 1), (torch.tensor([1.0, 2.0]), 1),
     (torch.tensor([1.0, float("nan")]), 1), (torch.tensor([float("inf")]), 1), (torch.ones(3), -1), (torch.ones(3), 1.5)],
    ids=["2-D", "negative", "ascending", "nan", "inf", "k<0", "k-float"],
)  # fmt: skip
def test_metric_input_validation(S, k):
    with pytest.raises(InputError):
        spectrum_summary(S, [k])
