"""Intruder dimensions: a constructed case whose answer is known, and dense float64 numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from builders import orthonormal
from spectral.cases import F64, factors

from svdlora_pl.errors import InputError
from svdlora_pl.spectral.intruders import apply, intruder_dimensions, max_cosines, top_singular_triplets


def known_weight(m: int = 40, n: int = 30):
    """W = U₀·diag(σ)·V₀ᵀ with σᵢ = 10·0.8^i: every singular vector is known."""
    U0, V0 = orthonormal(m, n, 1), orthonormal(n, n, 2)
    sigma = 10.0 * 0.8 ** torch.arange(n, dtype=F64)
    return (U0 * sigma) @ V0.mT, U0, V0, sigma


@pytest.mark.parametrize("boost, expected", [(20.0, 1), (0.5, 0)])
def test_a_tail_direction_pushed_into_the_top_k_is_the_one_intruder(boost, expected):
    # ΔW = c·u₁₅·v₁₅ᵀ raises σ₁₅ (0.35) by c. u₁₅ is orthogonal to the base's top 8 left vectors, so it is an intruder
    # exactly when it enters the top 5 (c = 20: σ = 20.35, the largest); c = 0.5 leaves the top 5 unchanged.
    W, U0, V0, sigma = known_weight()
    j, top_k, base_rank = 15, 5, 8
    B, A = boost * U0[:, j : j + 1], V0[:, j : j + 1].mT.contiguous()
    found = intruder_dimensions(W, [(B, A, 1.0)], U0[:, :base_rank], top_k, 0.5, oversample=40, dtype=F64)
    assert found.count == expected
    cosines = found.cosines.numpy()
    if expected:
        assert found.svd.S[0].item() == pytest.approx(sigma[j].item() + boost, rel=1e-12)
        np.testing.assert_allclose(cosines, [0.0, 1.0, 1.0, 1.0, 1.0], atol=1e-10)  # the intruder is the top one
    else:
        np.testing.assert_allclose(cosines, np.ones(top_k), atol=1e-10)


def test_the_base_itself_has_no_intruders():
    W, U0, _, _ = known_weight()
    found = intruder_dimensions(W, [], U0[:, :10], top_k=10, threshold=0.99, oversample=30, dtype=F64)
    assert found.count == 0
    np.testing.assert_allclose(found.cosines.numpy(), np.ones(10), atol=1e-10)


def random_case(m=60, n=45, r=4, scale=3.0, seed=0):
    """A base with a decaying spectrum and a LoRA update large enough to rotate some of its top directions."""
    U, V = orthonormal(m, n, seed + 10), orthonormal(n, n, seed + 11)
    W = (U * (5.0 * 0.9 ** torch.arange(n, dtype=F64))) @ V.mT
    B, A = factors(m, n, r, seed)
    return W, B, A, scale


def numpy_reference(W, B, A, scale, top_k, base_rank, threshold):
    merged = W.numpy() + scale * (B.numpy() @ A.numpy())
    U_m = np.linalg.svd(merged)[0][:, :top_k]
    U_0 = np.linalg.svd(W.numpy())[0][:, :base_rank]
    cosines = np.abs(U_m.T @ U_0).max(axis=1)
    return int((cosines < threshold).sum()), cosines


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_dense_float64(seed):
    W, B, A, scale = random_case(seed=seed)
    top_k, base_rank, threshold = 8, 12, 0.6
    count, cosines = numpy_reference(W, B, A, scale, top_k, base_rank, threshold)
    U_base = top_singular_triplets(W, [], base_rank, oversample=100, dtype=F64).U[:, :base_rank]
    found = intruder_dimensions(W, [(B, A, scale)], U_base, top_k, threshold, oversample=100, dtype=F64)
    assert 0 < count < top_k  # the case has intruders and non-intruders
    assert found.count == count
    np.testing.assert_allclose(found.cosines.numpy(), cosines, atol=1e-10)


def test_randomized_iteration_converges_to_dense_and_a_warm_start_needs_no_iteration():
    W, B, A, scale = random_case(m=300, n=200, r=6, scale=2.0)
    U_ref, S_ref, _ = np.linalg.svd(W.numpy() + scale * (B.numpy() @ A.numpy()))
    cold = top_singular_triplets(W.float(), [(B.float(), A.float(), scale)], 10, niter=8)
    np.testing.assert_allclose(cold.S[:10].numpy(), S_ref[:10], rtol=1e-4)
    warm = top_singular_triplets(W, [(B, A, scale)], 10, start=cold.V, niter=0, dtype=F64)
    np.testing.assert_allclose(warm.S[:10].numpy(), S_ref[:10], rtol=1e-6)
    np.testing.assert_allclose(max_cosines(warm.U[:, :10], torch.from_numpy(U_ref[:, :10])).numpy(), 1.0, atol=1e-5)
    again = top_singular_triplets(W.float(), [(B.float(), A.float(), scale)], 10, niter=8)
    assert torch.equal(again.S, cold.S)  # seeded: deterministic


def test_residual_base_term_gives_the_original_base():
    W, B0, A0, scale = random_case()
    original = top_singular_triplets(W, [], 6, oversample=60, dtype=F64)
    residual = top_singular_triplets(W - scale * B0 @ A0, [(B0, A0, scale)], 6, oversample=60, dtype=F64)
    np.testing.assert_allclose(residual.S[:6].numpy(), original.S[:6].numpy(), rtol=1e-12)
    np.testing.assert_allclose(max_cosines(residual.U[:, :6], original.U[:, :6]).numpy(), 1.0, atol=1e-10)


@pytest.mark.parametrize("transpose", [False, True])
def test_apply_in_blocks_of_a_low_precision_base_equals_the_formed_product(transpose):
    W, B, A, scale = random_case(m=50, n=20)
    X = torch.randn(20 if not transpose else 50, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float32)
    merged = W + scale * B @ A
    expected = (merged.mT if transpose else merged).float() @ X
    got = apply(W, [(B, A, scale)], X, transpose=transpose, block_bytes=7 * 20 * 4)  # 7-row blocks, upcast to fp32
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_a_half_precision_base_multiplied_in_its_own_precision_keeps_three_digits():
    W, B, A, scale = random_case(m=300, n=200, r=6, scale=2.0)
    U_ref, S_ref, _ = np.linalg.svd(W.numpy() + scale * (B.numpy() @ A.numpy()))
    low = W.to(torch.bfloat16)  # on CUDA the default; here forced (bf16 matmul also runs on the CPU)
    found = top_singular_triplets(low, [(B.float(), A.float(), scale)], 10, niter=8, half=True)
    np.testing.assert_allclose(found.S[:10].numpy(), S_ref[:10], rtol=1e-2)
    np.testing.assert_allclose(max_cosines(found.U[:, :10], torch.from_numpy(U_ref[:, :10])).numpy(), 1.0, atol=2e-2)
    X = torch.randn(200, 3, generator=torch.Generator().manual_seed(1))
    rounded = low.float() @ X.to(torch.bfloat16).float()  # what the half-precision product computes
    np.testing.assert_allclose(apply(low, [], X, half=True).numpy(), rounded.numpy(), rtol=1e-2, atol=1e-3)
    assert not torch.equal(apply(low, [], X, half=True), apply(low, [], X, half=False))  # the default on the CPU


def test_bad_inputs_are_one_line_errors():
    W = torch.zeros(6, 4)
    with pytest.raises(InputError, match="does not fit weight 6×4"):
        top_singular_triplets(W, [(torch.zeros(5, 2), torch.zeros(2, 4), 1.0)], 2)
    with pytest.raises(InputError, match="k must be >= 1"):
        top_singular_triplets(W, [], 0)
    with pytest.raises(InputError, match="start must have 4 rows"):
        top_singular_triplets(W, [], 2, start=torch.zeros(3, 2))
    with pytest.raises(InputError, match="threshold must be in"):
        intruder_dimensions(W, [], torch.zeros(6, 2), 2, threshold=0.0)
    with pytest.raises(InputError, match="U_base must have 6 rows"):
        intruder_dimensions(W, [], torch.zeros(5, 2), 2)
