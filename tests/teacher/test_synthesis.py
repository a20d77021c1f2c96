"""Teacher synthesis: every property checked against numpy float64 dense computations on small shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from builders import orthonormal

from svdlora_pl.errors import InputError
from svdlora_pl.lora.factor_files import load_factors, safetensors_bytes
from svdlora_pl.spectral import FactoredSVD, cholesky
from svdlora_pl.teacher import synthesis as teacher
from svdlora_pl.teacher.synthesis import (
    DEFAULT_DECAY,
    module_seed,
    save_synthesized,
    synthesize_adapter,
    synthesize_module,
)

M, N, R_LORA, R_TARGET, SCALE = 40, 30, 4, 12, 2.0


def lora(seed: int = 0, m: int = M, n: int = N, r: int = R_LORA) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, r, generator=g, dtype=torch.float64), torch.randn(r, n, generator=g, dtype=torch.float64)


def dense_lora(B: torch.Tensor, A: torch.Tensor, scale: float = SCALE) -> np.ndarray:
    return scale * B.numpy() @ A.numpy()


def synth(seed: int = 0, noise_scale: float = 0.0, decay: float = DEFAULT_DECAY, B=None, A=None, target=R_TARGET):
    if B is None:
        B, A = lora()
    return synthesize_module(
        B, A, SCALE, target, noise_scale=noise_scale, decay=decay, generator=torch.Generator().manual_seed(seed)
    )


def assert_true_svd(svd: FactoredSVD, m: int, n: int, rank: int) -> None:
    U, S, V = svd.U.numpy(), svd.S.numpy(), svd.V.numpy()
    assert U.shape == (m, rank) and S.shape == (rank,) and V.shape == (n, rank)
    np.testing.assert_allclose(U.T @ U, np.eye(rank), atol=1e-10)
    np.testing.assert_allclose(V.T @ V, np.eye(rank), atol=1e-10)
    assert np.all(np.diff(S) <= 0) and S[-1] > 0


@pytest.mark.parametrize("decay", [DEFAULT_DECAY, 0.5])
def test_spectrum_is_kept_values_plus_documented_tail(decay: float) -> None:
    B, A = lora()
    result = synth(decay=decay, B=B, A=A)
    dense = result.svd.dense().numpy()
    sigma = np.linalg.svd(dense_lora(B, A), compute_uv=False)[:R_LORA]
    tail = sigma[-1] * np.exp(-decay * np.arange(1, R_TARGET - R_LORA + 1))
    expected = np.concatenate([sigma, tail])
    np.testing.assert_allclose(result.svd.S.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(np.linalg.svd(dense, compute_uv=False)[:R_TARGET], expected, rtol=1e-10)
    assert np.linalg.matrix_rank(dense) == R_TARGET
    assert_true_svd(result.svd, M, N, R_TARGET)
    e = result.energy
    assert e["kept_energy"] == pytest.approx(np.linalg.norm(dense_lora(B, A)) ** 2, rel=1e-12)
    assert e["added_energy"] == pytest.approx(np.sum(tail**2), rel=1e-12)
    assert e["noise_energy"] == 0.0
    assert e["total_energy"] == pytest.approx(np.linalg.norm(dense) ** 2, rel=1e-12)
    assert (e["lora_rank"], e["target_rank"]) == (R_LORA, R_TARGET)


def test_top_subspace_equals_the_loras_without_noise() -> None:
    B, A = lora()
    svd = synth(B=B, A=A).svd
    U0, _, V0t = np.linalg.svd(dense_lora(B, A))
    U, V = svd.U.numpy(), svd.V.numpy()
    # the projector onto the top-r left/right singular subspace is the same (sign/rotation free comparison)
    np.testing.assert_allclose(U[:, :R_LORA] @ U[:, :R_LORA].T, U0[:, :R_LORA] @ U0[:, :R_LORA].T, atol=1e-10)
    np.testing.assert_allclose(V[:, :R_LORA] @ V[:, :R_LORA].T, V0t[:R_LORA].T @ V0t[:R_LORA], atol=1e-10)
    # the rank-r truncation of the teacher is the LoRA update itself, and the added columns are orthogonal to it
    truncated = (svd.U[:, :R_LORA] * svd.S[:R_LORA]) @ svd.V[:, :R_LORA].T
    np.testing.assert_allclose(truncated.numpy(), dense_lora(B, A), atol=1e-10)
    assert np.abs(U0[:, :R_LORA].T @ U[:, R_LORA:]).max() < 1e-10
    assert np.abs(V0t[:R_LORA] @ V[:, R_LORA:]).max() < 1e-10


@pytest.mark.parametrize("noise_scale", [0.05, 0.3])
def test_noise_energy_is_calibrated_and_rank_stays_exact(noise_scale: float) -> None:
    B, A = lora()
    clean, noisy = synth(seed=3), synth(seed=3, noise_scale=noise_scale)
    lora_energy = np.linalg.norm(dense_lora(B, A)) ** 2
    dense = noisy.svd.dense().numpy()
    difference = dense - clean.svd.dense().numpy()  # same seed: same bases, differ by exactly the noise
    assert np.linalg.norm(difference) ** 2 == pytest.approx(noise_scale**2 * lora_energy, rel=1e-9)
    assert noisy.energy["noise_energy"] == pytest.approx(noise_scale**2 * lora_energy, rel=1e-12)
    assert noisy.energy["total_energy"] == pytest.approx(np.linalg.norm(dense) ** 2, rel=1e-10)
    np.testing.assert_allclose(noisy.svd.S.numpy(), np.linalg.svd(dense, compute_uv=False)[:R_TARGET], rtol=1e-9)
    assert np.linalg.matrix_rank(dense) == R_TARGET
    assert_true_svd(noisy.svd, M, N, R_TARGET)
    # noise lives inside the span of the completed bases
    U, V = noisy.svd.U.numpy(), noisy.svd.V.numpy()
    np.testing.assert_allclose(U @ (U.T @ difference) @ V @ V.T, difference, atol=1e-10)


def test_edge_ranks_and_rank_deficient_factors() -> None:
    B, A = lora()
    same = synth(B=B, A=A, target=R_LORA).svd  # no tail
    np.testing.assert_allclose(same.dense().numpy(), dense_lora(B, A), atol=1e-10)
    full = synth(B=B, A=A, target=min(M, N), decay=0.05).svd  # completion fills the whole space
    assert_true_svd(full, M, N, min(M, N))
    # k = 6 factors of numerical rank 3: r counts the numerical rank, not the factor width
    B6 = torch.cat(
        [B[:, :3], B[:, :3] @ torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=B.dtype)], 1
    )
    A6 = torch.cat([A[:3], torch.zeros(3, N, dtype=A.dtype)])
    result = synth(B=B6, A=A6, target=8)
    assert result.energy["lora_rank"] == 3
    assert np.linalg.matrix_rank(result.svd.dense().numpy()) == 8


def test_deterministic_under_a_seed_and_independent_of_global_rng() -> None:
    torch.manual_seed(123)
    first = synth(seed=7, noise_scale=0.1).svd
    torch.manual_seed(456)
    torch.randn(10)
    second = synth(seed=7, noise_scale=0.1).svd
    other = synth(seed=8, noise_scale=0.1).svd
    for a, b in ((first.U, second.U), (first.S, second.S), (first.V, second.V)):
        assert torch.equal(a, b)
    assert not torch.allclose(first.dense(), other.dense(), atol=1e-3)


def test_synthesize_adapter_per_module_seeds() -> None:
    factors = {f"model.layers.{i}.self_attn.q_proj": (*lora(seed=i), 0.5 + i) for i in range(3)}
    svds, energies = synthesize_adapter(factors, R_TARGET, noise_scale=0.1, decay=0.2, seed=11)
    again, _ = synthesize_adapter(factors, R_TARGET, noise_scale=0.1, decay=0.2, seed=11)
    other, _ = synthesize_adapter(factors, R_TARGET, noise_scale=0.1, decay=0.2, seed=12)
    assert list(svds) == list(factors) == list(energies)
    for i, (module, (B, A, scale)) in enumerate(factors.items()):
        assert torch.equal(svds[module].U, again[module].U) and torch.equal(svds[module].S, again[module].S)
        assert not torch.allclose(svds[module].dense(), other[module].dense(), atol=1e-3)
        alone = synthesize_module(
            B,
            A,
            scale,
            R_TARGET,
            noise_scale=0.1,
            decay=0.2,
            generator=torch.Generator().manual_seed(module_seed(11, i)),
        )
        assert torch.equal(alone.svd.V, svds[module].V)
        assert energies[module]["kept_energy"] == pytest.approx(np.linalg.norm(dense_lora(B, A, scale)) ** 2)
    assert len({module_seed(11, i) for i in range(100)}) == 100


def test_save_round_trips_through_load_factors(tmp_path) -> None:
    factors = {"model.layers.0.mlp.up_proj": (*lora(), SCALE), "model.layers.0.mlp.down_proj": (*lora(1, 30, 40), 1.0)}
    svds, _ = synthesize_adapter(factors, R_TARGET, noise_scale=0.1, seed=0)
    path = save_synthesized(tmp_path / "synthesized_delta_rank12.safetensors", svds, {"rank": "12", "seed": "0"})
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        assert sorted(handle.keys()) == sorted(f"{m}.{p}" for m in svds for p in "USV")
        assert handle.get_tensor("model.layers.0.mlp.up_proj.U").shape == (M, R_TARGET)
        assert handle.get_tensor("model.layers.0.mlp.up_proj.V").dtype == torch.float32
    loaded, metadata = load_factors(path)
    assert metadata == {"rank": "12", "seed": "0"}
    for module, svd in svds.items():
        B, A = loaded[module]
        np.testing.assert_allclose((B @ A).double().numpy(), svd.dense().numpy(), atol=1e-5 * float(svd.S[0]))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no staging file left behind


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(target=R_LORA - 1), "target_rank 3 must be between 4 and min"),
        (dict(target=min(M, N) + 1), "target_rank 31 must be between 4 and min"),
        (dict(noise_scale=-0.1), "noise_scale must be"),
        (dict(noise_scale=math.nan), "noise_scale must be"),
        (dict(decay=-1.0), "decay must be"),
        (dict(decay=20.0, noise_scale=0.0), "numerically rank-deficient"),
        (dict(B=torch.full((M, R_LORA), math.nan, dtype=torch.float64)), "q_proj: non-finite"),
        (dict(B=torch.zeros(M, R_LORA, dtype=torch.float64)), "is zero"),
        (dict(B=torch.ones(M, R_LORA + 1, dtype=torch.float64)), "q_proj: expected LoRA factors"),
    ],
)
def test_bad_inputs_raise_one_line_input_errors(kwargs: dict, match: str) -> None:
    B, A = lora()
    target = kwargs.pop("target", R_TARGET)
    B = kwargs.pop("B", B)
    with pytest.raises(InputError, match=match) as info:
        synthesize_module(B, A, SCALE, target, generator=torch.Generator().manual_seed(0), name="q_proj", **kwargs)
    assert "\n" not in str(info.value)
    if "target_rank" in match:
        assert "q_proj" in str(info.value) and "40×30" in str(info.value)


def test_adapter_and_save_errors(tmp_path) -> None:
    with pytest.raises(InputError, match="no LoRA modules"):
        synthesize_adapter({}, R_TARGET)
    with pytest.raises(InputError, match="layer.nan"):
        synthesize_adapter({"layer.ok": (*lora(), 1.0), "layer.nan": (*lora(), math.inf)}, R_TARGET)
    with pytest.raises(InputError, match="no modules"):
        save_synthesized(tmp_path / "x.safetensors", {})
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("d", "extra"), [(200, 12), (40, 8), (24, 20)])
def test_cholesky_and_householder_completions_agree(monkeypatch: pytest.MonkeyPatch, d: int, extra: int) -> None:
    Q = orthonormal(d, 4, seed=d)
    W = torch.eye(4 + extra, dtype=torch.float64)
    fast = teacher._complete(Q, extra, torch.Generator().manual_seed(1))
    assert fast.L is not None  # these draws are well conditioned: Cholesky QR (κ ≤ 100), even the square one
    monkeypatch.setattr(cholesky, "CHOLESKY_MAX_COND", 0.0)
    slow = teacher._complete(Q, extra, torch.Generator().manual_seed(1))
    assert slow.L is None
    for basis in (fast.times(W).numpy(), slow.times(W).numpy()):
        np.testing.assert_allclose(basis.T @ basis, np.eye(4 + extra), atol=1e-12)
        np.testing.assert_array_equal(basis[:, :4], Q.numpy())
    # the same draw G: both orthonormalize G − Q·QᵀG, so the columns agree up to sign (the QR's R diagonal)
    np.testing.assert_allclose(np.abs(fast.times(W).numpy()), np.abs(slow.times(W).numpy()), atol=1e-12)
    # products with any W equal the explicit basis times W
    M = torch.randn(4 + extra, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    np.testing.assert_allclose(fast.times(M).numpy(), fast.times(W).numpy() @ M.numpy(), atol=1e-12)


def test_householder_fallback_gives_a_true_svd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cholesky, "CHOLESKY_MAX_COND", 0.0)
    B, A = lora()
    result = synth(B=B, A=A, noise_scale=0.2)
    assert_true_svd(result.svd, M, N, R_TARGET)
    truncated = synth(B=B, A=A).svd
    np.testing.assert_allclose(
        ((truncated.U[:, :R_LORA] * truncated.S[:R_LORA]) @ truncated.V[:, :R_LORA].T).numpy(),
        dense_lora(B, A),
        atol=1e-10,
    )


@pytest.mark.parametrize(
    ("dtype", "kept"), [(torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.float64, torch.float64)]
)
def test_synthesize_adapter_keeps_the_factor_dtype(dtype: torch.dtype, kept: torch.dtype) -> None:
    B, A = lora()
    factors = {"model.layers.0.mlp.up_proj": (B.to(dtype), A.to(dtype), SCALE)}
    svds, _ = synthesize_adapter(factors, R_TARGET, noise_scale=0.1, seed=5)
    alone = synthesize_module(
        B.to(dtype), A.to(dtype), SCALE, R_TARGET, generator=torch.Generator().manual_seed(module_seed(5, 0))
    ).svd
    svd = svds["model.layers.0.mlp.up_proj"]
    for got, full in ((svd.U, alone.U), (svd.S, alone.S), (svd.V, alone.V)):
        assert got.dtype == kept and full.dtype == torch.float64
        assert torch.equal(got, full.to(kept))


def test_synthesize_adapter_runs_on_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    original = teacher.synthesize_module

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(teacher, "synthesize_module", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        synthesize_adapter({f"layer.{i}": (*lora(seed=i), 1.0) for i in range(2)}, R_TARGET)
        assert seen == [1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_saved_bytes_are_the_canonical_float32_serialization(tmp_path) -> None:
    factors = {"model.layers.0.mlp.up_proj": (*lora(), SCALE), "model.layers.0.mlp.down_proj": (*lora(1, 30, 40), 1.0)}
    svds, _ = synthesize_adapter(factors, R_TARGET, seed=0)  # float64 factors: kept in float64, written as float32
    metadata = {"seed": "0", "rank": "12"}
    path = save_synthesized(tmp_path / "t.safetensors", svds, metadata)
    tensors = {f"{m}.{p}": getattr(svd, p).float() for m, svd in svds.items() for p in "USV"}
    assert path.read_bytes() == safetensors_bytes(tensors, metadata)
