"""Dense exact and randomized SVD against numpy, truncation and the split into LoRA factors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from spectral.cases import F64, factors

from svdlora_pl.errors import InputError
from svdlora_pl.spectral import (
    FactoredSVD,
    dense_svd,
    split_factors,
    subspace_cosines,
    truncate,
)


def low_rank_plus_noise(m=60, n=40, rank=5, noise=1e-4, seed=11) -> torch.Tensor:
    B, A = factors(m, n, rank, seed)
    g = torch.Generator().manual_seed(seed + 1)
    return B @ A + noise * torch.randn(m, n, generator=g, dtype=F64)


def test_dense_svd_exact_matches_numpy():
    W = low_rank_plus_noise()
    ref = np.linalg.svd(W.numpy(), compute_uv=False)
    full = dense_svd(W)
    assert full.S.dtype == F64 and full.U.shape == (60, 40)
    np.testing.assert_allclose(full.S.numpy(), ref, rtol=1e-12, atol=1e-12 * ref[0])
    np.testing.assert_allclose(full.dense().numpy(), W.numpy(), atol=1e-11)
    top = dense_svd(W.float(), 3)
    assert top.S.dtype == torch.float32 and top.U.shape == (60, 3) and top.V.shape == (40, 3)
    np.testing.assert_allclose(top.S.numpy(), ref[:3], rtol=1e-5)
    assert dense_svd(W, 100).S.shape == (40,)  # rank clamped


def test_dense_svd_randomized_close_and_deterministic():
    W = low_rank_plus_noise().float()
    exact = dense_svd(W, 5)
    state = torch.get_rng_state()
    rnd = dense_svd(W, 5, method="randomized", seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    np.testing.assert_allclose(rnd.S.numpy(), exact.S.numpy(), rtol=1e-4)
    assert float(subspace_cosines(rnd.U, exact.U).min()) > 1 - 1e-6
    assert float(subspace_cosines(rnd.V, exact.V).min()) > 1 - 1e-6
    again = dense_svd(W, 5, method="randomized", seed=3)
    assert all(torch.equal(x, y) for x, y in zip((rnd.U, rnd.S, rnd.V), (again.U, again.S, again.V), strict=True))
    with pytest.raises(InputError, match="rank"):
        dense_svd(W, method="randomized")
    with pytest.raises(InputError, match="method"):
        dense_svd(W, 5, method="lanczos")
    with pytest.raises(InputError, match="non-finite"):
        dense_svd(torch.full((3, 3), float("nan")))
    with pytest.raises(InputError, match="m×n"):
        dense_svd(torch.ones(3))


@pytest.mark.parametrize("mode", ["sqrt", "B"])
def test_split_factors_product_is_the_truncation(mode):
    W = low_rank_plus_noise(rank=8)
    svd = dense_svd(W)
    B, A = split_factors(svd, 4, mode)
    assert B.shape == (60, 4) and A.shape == (4, 40) and B.is_contiguous() and A.is_contiguous()
    np.testing.assert_allclose((B @ A).numpy(), truncate(svd, 4).dense().numpy(), atol=1e-12)
    if mode == "sqrt":
        assert float(B.norm()) == pytest.approx(float(A.norm()), rel=1e-12)
    else:
        np.testing.assert_allclose((A @ A.mT).numpy(), np.eye(4), atol=1e-12)
    assert split_factors(svd, 99, mode)[0].shape == (60, 40)  # clamped to k
    with pytest.raises(InputError):
        split_factors(svd, 4, "A")


def test_truncate_clamps_and_is_contiguous():
    svd = FactoredSVD(torch.eye(3, dtype=F64), torch.tensor([3.0, 2.0, 1.0], dtype=F64), torch.eye(3, dtype=F64))
    t = truncate(svd, 2)
    assert t.S.tolist() == [3.0, 2.0] and t.U.is_contiguous() and t.V.shape == (3, 2)
    assert truncate(svd, 10).S.shape == (3,) and truncate(svd, 0).S.shape == (0,)
    with pytest.raises(InputError):
        truncate(svd, -1)
