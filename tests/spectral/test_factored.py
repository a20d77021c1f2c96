"""Spectral core: every result against numpy float64 dense SVD of the explicitly formed update, on random and
adversarial inputs (rank-deficient factors, the zero update, r > min(m, n), 1×1), plus property tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from spectral.cases import CASES, F64, dense, factors, make_case, np_svdvals

from svdlora_pl.errors import InputError
from svdlora_pl.spectral import (
    batched_factored_svdvals,
    factored_inner,
    factored_relative_error,
    factored_svd,
    factored_svdvals,
    spectrum_summary,
    subspace_alignment,
    subspace_cosines,
    svdvals_of_modules,
)
from svdlora_pl.spectral import factored as spectral


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_factored_svdvals_and_svd_match_numpy(case):
    _, m, n, r, scale, kw = case
    B, A = make_case(m, n, r, kw)
    ref, k = np_svdvals(B, A, scale), min(m, n, r)
    tol = 1e-12 * max(ref[0], 1.0)
    S = factored_svdvals(B, A, scale)
    assert S.dtype == F64 and S.shape == (k,)
    np.testing.assert_allclose(S.numpy(), ref[:k], rtol=0, atol=tol)
    assert np.all(ref[k:] <= tol)  # the dense spectrum has nothing beyond k = min(m, n, r)

    svd = factored_svd(B, A, scale)
    assert svd.U.shape == (m, k) and svd.S.shape == (k,) and svd.V.shape == (n, k)
    np.testing.assert_allclose(svd.S.numpy(), S.numpy(), rtol=0, atol=tol)
    np.testing.assert_allclose(svd.dense().numpy(), dense(B, A, scale), rtol=0, atol=tol)
    np.testing.assert_allclose((svd.U.mT @ svd.U).numpy(), np.eye(k), atol=1e-12)
    np.testing.assert_allclose((svd.V.mT @ svd.V).numpy(), np.eye(k), atol=1e-12)


def test_factor_input_validation_names_shapes():
    B, A = factors(6, 5, 3, seed=0)
    with pytest.raises(InputError, match="6×3.*4×5"):
        factored_svdvals(B, A[:2].repeat(2, 1))  # inner rank 3 vs 4
    with pytest.raises(InputError, match="B 6 and A"):
        factored_svd(B[:, 0], A)
    with pytest.raises(InputError):
        factored_svdvals(B[:, :0], A[:0])  # r = 0
    for bad in (float("nan"), float("inf")):
        Bb = B.clone()
        Bb[2, 1] = bad
        with pytest.raises(InputError, match="non-finite.*6×3"):
            factored_svdvals(Bb, A)
        with pytest.raises(InputError, match="non-finite"):
            factored_svd(B, A, bad)
    with pytest.raises(InputError):
        batched_factored_svdvals(B[None], A[None].repeat(2, 1, 1))


def test_dtypes():
    B, A = factors(9, 7, 3, seed=2)
    assert factored_svdvals(B.bfloat16(), A.float()).dtype == F64
    svd = factored_svd(B.float(), A.float(), dtype=torch.float32)
    assert svd.U.dtype == svd.S.dtype == svd.V.dtype == torch.float32
    np.testing.assert_allclose(svd.S.numpy(), np_svdvals(B, A)[:3], rtol=1e-5)


def test_batched_equals_per_module():
    g = torch.Generator().manual_seed(4)
    Bs, As = torch.randn(5, 11, 4, generator=g), torch.randn(5, 4, 7, generator=g)
    Bs[2] = 0.0
    scales = torch.tensor([1.0, -2.0, 3.0, 0.5, 0.0])
    got = batched_factored_svdvals(Bs, As, scales)
    assert got.shape == (5, 4)
    for i in range(5):
        assert torch.allclose(got[i], factored_svdvals(Bs[i], As[i], float(scales[i])), rtol=1e-12, atol=1e-12)
    assert torch.allclose(batched_factored_svdvals(Bs, As, 2.0), 2 * batched_factored_svdvals(Bs, As), rtol=1e-12)
    with pytest.raises(InputError, match="scales"):
        batched_factored_svdvals(Bs, As, torch.ones(3))


def test_svdvals_of_modules_groups_and_returns_every_name(monkeypatch):
    shapes = {
        "a.q": (8, 6, 3),
        "a.k": (4, 6, 3),
        "b.q": (8, 6, 3),
        "b.k": (4, 6, 3),
        "c.up": (10, 6, 2),
        "z": (8, 6, 3),
    }
    mods = {}
    for i, (name, (m, n, r)) in enumerate(shapes.items()):
        B, A = factors(m, n, r, seed=10 + i)
        mods[name] = (B.float(), A.float(), 0.5 + i)
    mods["z"] = (torch.zeros(8, 3), mods["z"][1], 2.0)  # a zero update inside a group
    calls = []
    real = spectral.batched_factored_svdvals
    monkeypatch.setattr(
        spectral, "batched_factored_svdvals", lambda Bs, As, *a, **k: calls.append(Bs.shape) or real(Bs, As, *a, **k)
    )
    out = svdvals_of_modules(mods)
    assert list(out) == list(mods)
    assert sorted(calls) == sorted([(3, 8, 3), (2, 4, 3), (1, 10, 2)])  # one batched call per (m, n, r)
    for name, (B, A, s) in mods.items():
        np.testing.assert_allclose(out[name].numpy(), np_svdvals(B, A, s)[: len(out[name])], rtol=1e-10, atol=1e-12)
    assert svdvals_of_modules({}) == {}
    monkeypatch.setattr(spectral, "_BATCH_BYTES", 1)  # chunks of one module each: same values
    chunked = svdvals_of_modules(mods)
    assert list(chunked) == list(mods) and all(torch.equal(chunked[k], out[k]) for k in mods)


def test_svdvals_of_modules_errors_name_the_module():
    B, A = factors(5, 4, 2, seed=0)
    with pytest.raises(InputError, match="bad.proj: .*5×2.*3×4"):
        svdvals_of_modules({"ok": (B, A, 1.0), "bad.proj": (B, A[:1].repeat(3, 1), 1.0)})
    Bn = B.clone()
    Bn[0, 0] = float("nan")
    with pytest.raises(InputError, match=r"non-finite.*\['nan.proj'\]"):
        svdvals_of_modules({"ok": (B, A, 1.0), "nan.proj": (Bn, A, 1.0)})


def test_factored_inner_and_relative_error_match_dense():
    B1, A1 = factors(20, 15, 4, seed=5)
    B2, A2 = factors(20, 15, 6, seed=6)  # different ranks
    W1, W2 = dense(B1, A1), dense(B2, A2)
    assert float(factored_inner(B1, A1, B2, A2)) == pytest.approx((W1 * W2).sum(), rel=1e-10)
    assert float(factored_inner(B1, A1, B1, A1)) == pytest.approx((W1 * W1).sum(), rel=1e-12)
    want = np.linalg.norm(0.5 * W1 - 2.0 * W2) / np.linalg.norm(2.0 * W2)
    assert factored_relative_error(B1, A1, B2, A2, 0.5, 2.0) == pytest.approx(want, rel=1e-10)
    # nearly equal updates: a 1e-10 relative difference is measured accurately (no cancellation of squared norms)
    Bp = B1 + 1e-10 * factors(20, 15, 4, seed=7)[0]
    want = np.linalg.norm(dense(Bp, A1) - W1) / np.linalg.norm(W1)
    assert factored_relative_error(Bp, A1, B1, A1) == pytest.approx(want, rel=1e-4)
    assert factored_relative_error(B1, A1, B1, A1) < 1e-14
    zero = torch.zeros_like(B2)
    assert factored_relative_error(B1, A1, zero, A2) == math.inf
    assert factored_relative_error(torch.zeros_like(B1), A1, zero, A2) == 0.0
    assert factored_relative_error(zero, A2, B1, A1) == pytest.approx(1.0, rel=1e-14)
    with pytest.raises(InputError, match="differ in shape"):
        factored_relative_error(B1, A1, B2[:10], A2)
    with pytest.raises(InputError, match="differ in shape"):
        factored_inner(B1, A1, B2, A2[:, :5])


def test_subspace_cosines_known_angles():
    g = torch.Generator().manual_seed(8)
    Q = torch.linalg.qr(torch.randn(10, 4, generator=g, dtype=F64)).Q
    assert torch.allclose(subspace_cosines(Q, Q), torch.ones(4, dtype=F64), atol=1e-12)
    mixed = Q @ torch.randn(4, 4, generator=g, dtype=F64)  # same span, not orthonormal
    assert torch.allclose(subspace_cosines(Q, mixed), torch.ones(4, dtype=F64), atol=1e-12)
    assert torch.allclose(subspace_cosines(Q[:, :2], Q[:, 2:]), torch.zeros(2, dtype=F64), atol=1e-12)
    theta = 0.3
    rotated = torch.stack([math.cos(theta) * Q[:, 0] + math.sin(theta) * Q[:, 3], Q[:, 1]], 1)
    got = subspace_cosines(Q[:, :2], rotated)
    assert torch.allclose(got, torch.tensor([1.0, math.cos(theta)], dtype=F64), atol=1e-12)
    assert subspace_cosines(Q, rotated, k=1).tolist() == pytest.approx([math.cos(theta)], abs=1e-12)
    with pytest.raises(InputError, match="10×4 and 9×2"):
        subspace_cosines(Q, Q[:9, :2])


def test_subspace_alignment():
    B1, A1 = factors(16, 12, 4, seed=9)
    svd1 = factored_svd(B1, A1)
    same = subspace_alignment(svd1, factored_svd(2 * B1, A1), 4)
    assert same == pytest.approx(dict.fromkeys(same, 1.0), abs=1e-10)
    assert set(same) == {"left_cos_mean", "right_cos_mean", "left_cos_min", "right_cos_min"}
    # same column space of B, an independent row space of A: left subspaces align, right ones do not
    _, A2 = factors(16, 12, 4, seed=10)
    mixed = subspace_alignment(svd1, factored_svd(B1, A2), 4)
    assert mixed["left_cos_min"] == pytest.approx(1.0, abs=1e-10) and mixed["right_cos_min"] < 0.99
    zero = subspace_alignment(svd1, factored_svd(torch.zeros_like(B1), A1), 2)
    assert zero == dict.fromkeys(same, 0.0)
    with pytest.raises(InputError):
        subspace_alignment(svd1, svd1, 0)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    m=st.integers(1, 12), n=st.integers(1, 12), r=st.integers(1, 8), seed=st.integers(0, 2**31 - 1),
    scale=st.floats(-10, 10).filter(lambda s: abs(s) > 1e-3), deficient=st.integers(0, 3),
)  # fmt: skip
def test_property_factored_svdvals_equals_numpy(m, n, r, seed, scale, deficient):
    """Normwise: |σᵢ − σᵢ(numpy)| ≤ 1e-8·σ₁ (the accuracy any backward-stable SVD gives every σᵢ)."""
    B, A = factors(m, n, r, seed, rank_b=deficient or None)
    ref, k = np_svdvals(B, A, scale), min(m, n, r)
    S = factored_svdvals(B, A, scale)
    np.testing.assert_allclose(S.numpy(), ref[:k], rtol=0, atol=1e-8 * max(ref[0], 1e-300))
    assert np.all(ref[k:] <= 1e-8 * max(ref[0], 1e-300))
    assert spectrum_summary(S, [1, r])["energy@" + str(r)] == pytest.approx(1.0)
