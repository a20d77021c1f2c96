"""The streaming gradient sketch against known spectra: a 7B-shaped layer (3584 × 18944) whose gradient has the
tiny model's measured decay, one pass and several, the shared seeded test matrices, and bad arguments."""

from __future__ import annotations

import math

import pytest
import torch

from svdlora_pl.errors import InputError
from svdlora_pl.spectral import subspace_cosines
from svdlora_pl.spectral.sketch import GradientSketch, TestMatrices, derived_seed, holds_dense


def gradient_stream(out: int, inp: int, tokens: int, alpha: float, chunks: int, seed: int = 0):
    """(x, δ) chunks whose gradient Σ δ_t x_tᵀ is exactly U·diag(i^-alpha)·Vᵀ (rank ``tokens``), and U, σ, V.

    δ_t = U·diag(√σ)·z_t and x_t = V·diag(√σ)·z_t with z_t the rows of an orthonormal tokens×tokens latent, so the
    gradient is U·diag(σ)·Vᵀ exactly; the tiny model's gradients decay about as i^-1 (σ₁₀/σ₁ ≈ 0.06-0.16 measured).
    """
    generator = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(out, tokens, generator=generator, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(inp, tokens, generator=generator, dtype=torch.float64)).Q
    Z = torch.linalg.qr(torch.randn(tokens, tokens, generator=generator, dtype=torch.float64)).Q
    sigma = torch.arange(1, tokens + 1, dtype=torch.float64) ** -alpha
    root = sigma.sqrt()
    delta, x = Z @ (U * root).mT, Z @ (V * root).mT  # tokens × out, tokens × in
    pieces = [(x[i::chunks].float(), delta[i::chunks].float()) for i in range(chunks)]
    return pieces, U, sigma, V


def run(sketch: GradientSketch, pieces) -> None:
    for index in range(sketch.passes):
        for x, delta in pieces:
            sketch.update(x, delta)
        if index + 1 < sketch.passes:
            sketch.next_pass()


@pytest.fixture(scope="module")
def stream_7b():
    return gradient_stream(3584, 18944, tokens=512, alpha=1.0, chunks=2)


# A harmonic spectrum (512 tokens here) is the one-pass sketch's hard case: at the defaults (k = r + 40) its rank-16
# error is 1.49x the optimum (measured; 1.47x with 1,024 tokens), two passes (one power iteration) bring it to 1.09x.
@pytest.mark.parametrize("passes, bound", [(1, 1.55), (2, 1.10)])
def test_7b_shaped_layer_is_sketched_near_the_optimum(stream_7b, passes, bound):
    pieces, U, sigma, V = stream_7b
    r = 16
    sketch = GradientSketch(3584, 18944, r, TestMatrices(seed=0), passes=passes)
    run(sketch, pieces)
    svd = sketch.svd()
    optimum = math.sqrt(float(sigma[r:].square().sum()))
    # ‖G − Â‖² from the factors: G = U·diag(σ)·Vᵀ and Â = U_s·diag(S)·V_sᵀ, never forming either
    cross = ((U.mT @ svd.U) * sigma[:, None] * svd.S) * (V.mT @ svd.V)
    error = math.sqrt(max(float(sigma.square().sum() + svd.S.square().sum() - 2 * cross.sum()), 0.0))
    assert error <= bound * optimum
    assert float(subspace_cosines(svd.U, U[:, :r]).mean()) > (0.8 if passes == 1 else 0.95)
    torch.testing.assert_close(svd.S[:4], sigma[:4], rtol=0.1 if passes == 1 else 0.01, atol=0)


def test_memory_is_out_plus_in_times_k_and_matrices_are_shared():
    matrices = TestMatrices(seed=3)
    a, b = (GradientSketch(512, 3584, 16, matrices) for _ in range(2))
    k, s = 56, 113
    assert a.k == k and a.s == s and a.nbytes() == 4 * (512 * k + k * 3584 + s * s)
    assert a.right is b.right and a.left is b.left and a.omega.data_ptr() == b.omega.data_ptr()  # shared, one set
    assert torch.equal(TestMatrices(seed=3).get("omega", 3584, k), a.omega)  # the same on every process
    assert not torch.equal(TestMatrices(seed=4).get("omega", 3584, k), a.omega)
    assert derived_seed(0, "omega", 3, 4) != derived_seed(0, "omega", 4, 3)


def test_sketch_of_a_small_matrix_is_exact_when_k_covers_its_rank():
    pieces, U, sigma, V = gradient_stream(40, 60, tokens=6, alpha=0.5, chunks=2)
    sketch = GradientSketch(40, 60, 3, TestMatrices(), oversample=10)
    run(sketch, pieces)
    svd = sketch.svd()
    torch.testing.assert_close(svd.S, sigma[:3], rtol=1e-5, atol=0)
    torch.testing.assert_close((svd.U * svd.S) @ svd.V.mT, ((U * sigma) @ V.mT)[:, :] - (U[:, 3:] * sigma[3:]) @ V[:, 3:].mT,
                               rtol=0, atol=1e-5)  # fmt: skip


@pytest.mark.parametrize("kwargs", [{"rank": 0}, {"oversample": -1}, {"passes": 0}])
def test_bad_arguments(kwargs):
    arguments = {"out_features": 8, "in_features": 8, "rank": 2, "matrices": TestMatrices()} | kwargs
    with pytest.raises(InputError):
        GradientSketch(**arguments)


def test_svd_after_the_last_pass_only():
    sketch = GradientSketch(8, 8, 2, TestMatrices(), passes=1)
    with pytest.raises(RuntimeError, match="all passes are done"):
        sketch.next_pass()


def test_small_layers_are_held_whole_and_7b_layers_sketched():
    for out, inp in [(128, 128), (352, 128), (128, 352), (32, 128)]:  # the tiny model's q/o, gate/up, down, k/v
        assert holds_dense(out, inp, rank=8)
    for out, inp in [(3584, 3584), (512, 3584), (18944, 3584), (3584, 18944)]:  # Qwen2.5-7B's, r 16 and 2r
        assert not holds_dense(out, inp, rank=16) and not holds_dense(out, inp, rank=32)
    held = 0
    for out, inp, rank in [(352, 128, 8), (150, 2000, 4), (400, 400, 16), (150, 50000, 8)]:
        floats, k = GradientSketch.floats(out, inp, rank), min(rank + 40, out, inp)
        if holds_dense(out, inp, rank):  # by arithmetic it may take more memory, at most (2k + s)/k of the sketch's
            held += 1
            assert out * inp <= (2 * k + min(2 * k + 1, out, inp)) / k * floats
    assert held == 4
