"""Spectral core: every result against numpy float64 dense SVD of the explicitly formed update, on random and
adversarial inputs (rank-deficient factors, the zero update, r > min(m, n), 1×1), plus property tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from svdlora_pl.errors import InputError
from svdlora_pl.spectral import (
    FactoredSVD,
    batched_factored_svdvals,
    cpu_threads,
    dense_svd,
    effective_rank,
    energy_ratio,
    factored_inner,
    factored_relative_error,
    factored_svd,
    factored_svdvals,
    frobenius_norm,
    reconstruction_error,
    spectral_norm,
    spectrum_summary,
    split_factors,
    stable_rank,
    subspace_alignment,
    subspace_cosines,
    svdvals_of_modules,
    truncate,
)
from svdlora_pl.spectral import factored as spectral

F64 = torch.float64


def factors(m: int, n: int, r: int, seed: int, *, rank_b: int | None = None, rank_a: int | None = None):
    """Random B (m×r), A (r×n) in float64; ``rank_b``/``rank_a`` make a factor rank-deficient (a product of thinner ones)."""
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(m, r, generator=g, dtype=F64)
    A = torch.randn(r, n, generator=g, dtype=F64)
    if rank_b is not None:
        B = torch.randn(m, rank_b, generator=g, dtype=F64) @ torch.randn(rank_b, r, generator=g, dtype=F64)
    if rank_a is not None:
        A = torch.randn(r, rank_a, generator=g, dtype=F64) @ torch.randn(rank_a, n, generator=g, dtype=F64)
    return B, A


def dense(B: torch.Tensor, A: torch.Tensor, scale: float = 1.0) -> np.ndarray:
    return scale * (B.double().numpy() @ A.double().numpy())


def np_svdvals(B: torch.Tensor, A: torch.Tensor, scale: float = 1.0) -> np.ndarray:
    return np.linalg.svd(dense(B, A, scale), compute_uv=False)


# (id, m, n, r, scale, kwargs of `factors`; zero=True sets B = 0)
CASES = [
    ("random", 40, 30, 6, 0.5, {}),
    ("r>n", 12, 5, 8, 2.0, {}),
    ("r>m", 4, 15, 9, 1.0, {}),
    ("r>m,n", 3, 4, 7, -1.5, {}),
    ("1x1", 1, 1, 1, 3.0, {}),
    ("1x1,r=3", 1, 1, 3, 1.0, {}),
    ("row", 1, 10, 4, 1.0, {}),
    ("rank-deficient B", 30, 20, 6, 1.0, {"rank_b": 2}),
    ("rank-deficient A", 30, 20, 6, 1.0, {"rank_a": 3}),
    ("zero B", 25, 18, 4, 1.0, {"zero": True}),
]


def make_case(m, n, r, kwargs, seed=0):
    kwargs = dict(kwargs)
    zero = kwargs.pop("zero", False)
    B, A = factors(m, n, r, seed, **kwargs)
    return (torch.zeros_like(B) if zero else B), A


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


def test_cpu_threads_is_scoped():
    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), cpu_threads(1):
        raise RuntimeError("restored on error too")
    assert torch.get_num_threads() == before
    with cpu_threads(None):
        assert torch.get_num_threads() == before
    B, A = factors(5, 4, 2, seed=0)
    svdvals_of_modules({"m": (B, A, 1.0)})
    assert torch.get_num_threads() == before


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
