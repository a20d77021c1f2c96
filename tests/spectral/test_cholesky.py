"""Cholesky QR: the guard (well-conditioned Gram matrices accepted, κ above the limit and non-finite ones refused) and
:func:`gram_svd`, the thin SVD of ΔW = s·B·A from its factors' Gram matrices, against numpy's dense float64 SVD."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from builders import orthonormal, random_lora, svd_form

from svdlora_pl.spectral import CHOLESKY_MAX_COND, gram_svd, guarded_cholesky


def with_condition(kappa: float, rows: int = 40, k: int = 5, seed: int = 0) -> torch.Tensor:
    """A rows×k float64 matrix with singular values from 1 down to 1/kappa (so κ = kappa exactly, to rounding)."""
    gen = torch.Generator().manual_seed(seed)
    S = torch.logspace(0, -np.log10(kappa), k, dtype=torch.float64)
    return (orthonormal(rows, k, gen) * S) @ orthonormal(k, k, gen).T


# ---------------------------------------------------------------- the guard
def test_guard_accepts_a_well_conditioned_gram_and_gives_an_orthonormal_q():
    X = with_condition(10.0)
    L = guarded_cholesky(X.T @ X)
    assert L is not None and torch.allclose(L @ L.T, X.T @ X, atol=1e-14)
    Q = torch.linalg.solve_triangular(L, X.T, upper=False).T  # Q = X·L⁻ᵀ
    np.testing.assert_allclose((Q.T @ Q).numpy(), np.eye(5), atol=1e-13)


def test_guard_refuses_a_condition_number_above_the_limit():
    assert CHOLESKY_MAX_COND == 100.0
    X = with_condition(CHOLESKY_MAX_COND / 2)
    assert guarded_cholesky(X.T @ X) is not None
    X = with_condition(CHOLESKY_MAX_COND * 2)
    assert guarded_cholesky(X.T @ X) is None
    singular = with_condition(10.0)
    singular[:, 4] = singular[:, 3]
    assert guarded_cholesky(singular.T @ singular) is None
    assert guarded_cholesky(-torch.eye(3, dtype=torch.float64)) is None  # indefinite


def test_guard_measures_against_the_bound_matrix():
    """A projected Gram matrix G'ᵀG' is compared with the rounding of the unprojected GᵀG (its top eigenvalue)."""
    gram = torch.eye(4, dtype=torch.float64)
    assert guarded_cholesky(gram, bound=gram * (CHOLESKY_MAX_COND / 2) ** 2) is not None
    assert guarded_cholesky(gram, bound=gram * (CHOLESKY_MAX_COND * 2) ** 2) is None


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_guard_refuses_non_finite(value):
    gram = torch.eye(3, dtype=torch.float64)
    gram[0, 1] = gram[1, 0] = value
    assert guarded_cholesky(gram) is None
    assert guarded_cholesky(torch.eye(3, dtype=torch.float64), bound=gram) is None


def test_the_limit_is_read_at_call_time(monkeypatch):
    from svdlora_pl.spectral import cholesky

    gram = with_condition(10.0).T @ with_condition(10.0)
    monkeypatch.setattr(cholesky, "CHOLESKY_MAX_COND", 0.0)
    assert guarded_cholesky(gram) is None


# ---------------------------------------------------------------- gram_svd
@pytest.mark.parametrize(
    ("B", "A", "scale"),
    [
        (*svd_form(300, 200, [10.0 * 0.8**i for i in range(24)], seed=0), 1.0),
        (*random_lora(120, 90, 8, seed=1), 2.5),
        (*random_lora(16, 40, 16, seed=2), 0.5),  # k = out: square B
    ],
)
def test_gram_svd_equals_the_dense_float64_svd(B, A, scale):
    dense = scale * (B.double() @ A.double()).numpy()
    U0, S0, V0t = np.linalg.svd(dense, full_matrices=False)
    result = gram_svd(B, A, scale, rank=5)
    assert result is not None
    svd, S = result
    k = B.shape[1]
    np.testing.assert_allclose(S.numpy(), S0[:k], rtol=1e-12, atol=1e-13 * S0[0])
    assert svd.U.shape == (B.shape[0], 5) and svd.V.shape == (A.shape[1], 5) and torch.equal(svd.S, S[:5])
    np.testing.assert_allclose((svd.U.T @ svd.U).numpy(), np.eye(5), atol=1e-13)
    np.testing.assert_allclose((svd.V.T @ svd.V).numpy(), np.eye(5), atol=1e-13)
    np.testing.assert_allclose(svd.dense().numpy(), (U0[:, :5] * S0[:5]) @ V0t[:5], atol=1e-12 * S0[0])


def test_gram_svd_declines_what_cholesky_qr_cannot_do_exactly():
    B, A = random_lora(60, 50, 4, seed=3)
    near = B.clone()
    near[:, 3] = B[:, 2] + 1e-4 * B[:, 3]  # columns 2 and 3 nearly parallel: κ(B·D) ≈ 2e4
    assert gram_svd(near, A, 1.0, 2) is None
    assert gram_svd(B.double(), A.double(), 1.0, 2) is not None
    assert gram_svd(torch.zeros_like(B), A, 1.0, 2) is None
    assert gram_svd(B, A.clone().fill_(float("nan")), 1.0, 2) is None
    assert gram_svd(B, A, float("inf"), 2) is None
    assert gram_svd(B[:3], A, 1.0, 2) is None  # k = 4 > out = 3
