"""benchmarks/teacher.py on a shrunken shape: printed rows, exit code, and the files it synthesizes and exports."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from helpers import ROOT
from safetensors.numpy import load_file

BENCH = ROOT / "benchmarks" / "teacher.py"
LORA_RANK, TEACHER_RANK, RANK = 16, 64, 16
SMALL = ["--layers", "1", "--hidden", "96", "--intermediate", "192", "--kv", "64"]


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_teacher", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory, bench: ModuleType) -> tuple[int, str, Path]:
    """One noise-free run, checked, with an unreachable memory target: exit code 1, one FAIL line."""
    import contextlib
    import io

    workdir = tmp_path_factory.mktemp("bench")
    argv = [*SMALL, "--noise-scale", "0", "--threads", "1", "--workdir", str(workdir), "--check"]
    argv += ["--target-seconds", "1000", "--target-gib", "1e-6"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = bench.main(argv)
    return code, out.getvalue(), workdir


def test_prints_every_row_and_fails_the_missed_target(small_run: tuple[int, str, Path]) -> None:
    code, text, _ = small_run
    assert code == 1
    assert "1 layers × 7 = 7 modules" in text and "LoRA rank 16 → teacher rank 64 → factors rank 16" in text
    steps = ["read_adapter", "synthesize_adapter (rank 64)", "save_synthesized", "load_factors (teacher)"]
    for step in [*steps, "factorize (rank 16)", "save_factors", "baseline (after imports)"]:
        assert step in text, step
    phase_lines = [line for line in text.splitlines() if "phase total" in line]
    assert len(phase_lines) == 2
    total = next(line for line in text.splitlines() if line.startswith("total"))
    seconds, mib = map(float, total.split()[-2:])
    assert seconds > 0 and 50 < mib < 2000  # a Python process with torch, a few hundred MiB
    assert "dense, measured: torch.linalg.svd of one 96×96 float32 ΔW" in text
    assert "EXTRAPOLATED" in text
    # 4 bytes × (2·96·96 + 2·64·96 + 3·192·96) = 4 × 86016
    assert "dense memory: all 7 ΔW in float32 = 344,064 bytes" in text
    assert "PASS  total ≤ 1000 s" in text
    assert "FAIL  peak RSS ≤ 1e-06 GiB" in text
    assert "PASS  exported σ = teacher's top-16" in text


def test_phase_records(small_run: tuple[int, str, Path]) -> None:
    _, _, workdir = small_run
    for phase, steps in (("synthesize", 3), ("factorize", 3)):
        record = json.loads((workdir / f"{phase}.json").read_text())
        assert len(record["steps"]) == steps
        peaks = [rss for _, _, rss in record["steps"]]
        assert record["baseline"] <= peaks[0] and peaks == sorted(peaks)  # a high-water mark only grows


def test_teacher_keeps_the_lora_spectrum_and_appends_the_tail(small_run: tuple[int, str, Path]) -> None:
    _, _, workdir = small_run
    adapter = load_file(str(workdir / "adapter" / "adapter_model.safetensors"))
    config = json.loads((workdir / "adapter" / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    teacher = load_file(str(workdir / "teacher" / "synthesized_delta_rank64.safetensors"))
    assert len(teacher) == 3 * 7
    prefix = "base_model.model."
    for name in ("model.layers.0.self_attn.k_proj", "model.layers.0.mlp.down_proj"):
        B = adapter[f"{prefix}{name}.lora_B.weight"].astype(np.float64)
        A = adapter[f"{prefix}{name}.lora_A.weight"].astype(np.float64)
        lora = np.linalg.svd(scale * B @ A, compute_uv=False)[:LORA_RANK]
        U, S, V = (teacher[f"{name}.{k}"].astype(np.float64) for k in "USV")
        assert S.shape == (TEACHER_RANK,)
        np.testing.assert_allclose(S[:LORA_RANK], lora, rtol=1e-5)
        tail = lora[-1] * np.exp(-0.1 * np.arange(1, TEACHER_RANK - LORA_RANK + 1))
        np.testing.assert_allclose(S[LORA_RANK:], tail, rtol=1e-5)
        np.testing.assert_allclose(U.T @ U, np.eye(TEACHER_RANK), atol=1e-5)
        np.testing.assert_allclose(V.T @ V, np.eye(TEACHER_RANK), atol=1e-5)
        # the LoRA update lies in the teacher's span: projecting it onto U, V loses nothing
        lora_dense = scale * B @ A
        projected = U @ (U.T @ lora_dense @ V) @ V.T
        assert np.linalg.norm(lora_dense - projected) <= 1e-5 * np.linalg.norm(lora_dense)


def test_exported_factors_are_the_teachers_best_rank_16(small_run: tuple[int, str, Path]) -> None:
    _, _, workdir = small_run
    teacher = load_file(str(workdir / "teacher" / "synthesized_delta_rank64.safetensors"))
    factors = load_file(str(workdir / "factors" / "svd_factors_rank16.safetensors"))
    assert len(factors) == 2 * 7
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.gate_proj"):
        U, S, V = (teacher[f"{name}.{k}"].astype(np.float64) for k in "USV")
        dense = (U * S) @ V.T
        sigma = np.linalg.svd(dense, compute_uv=False)
        B = factors[f"{name}.lora_B"].astype(np.float64)
        A = factors[f"{name}.lora_A"].astype(np.float64)
        assert B.shape == (dense.shape[0], RANK) and A.shape == (RANK, dense.shape[1])
        np.testing.assert_allclose(np.linalg.svd(B @ A, compute_uv=False)[:RANK], sigma[:RANK], rtol=1e-5)
        # Eckart–Young: the error of the best rank-16 approximation is the energy of the discarded values
        error = np.linalg.norm(dense - B @ A)
        assert math.isclose(error, math.sqrt(np.sum(sigma[RANK:] ** 2)), rel_tol=1e-4)


def test_full_size_shapes_and_dense_memory(bench: ModuleType) -> None:
    args = bench.build_parser().parse_args([])
    shapes = bench.all_shapes(args)
    assert len(shapes) == 196
    assert shapes["model.layers.27.mlp.down_proj"] == (3584, 18944)
    assert shapes["model.layers.0.self_attn.k_proj"] == (512, 3584)
    # 28 × (2·3584² + 2·512·3584 + 3·18944·3584) × 4 bytes
    assert bench.dense_memory_bytes(shapes) == 28 * (2 * 3584**2 + 2 * 512 * 3584 + 3 * 18944 * 3584) * 4
    assert bench.dense_memory_bytes(shapes) == 26_101_153_792


def test_svd_flops_is_symmetric_and_picks_the_cheaper_method(bench: ModuleType) -> None:
    assert bench.svd_flops(10, 10) == min(14 * 1000 + 8 * 1000, 6 * 1000 + 20 * 1000) == 22_000
    assert bench.svd_flops(100, 10) == bench.svd_flops(10, 100) == 6 * 100 * 100 + 20 * 1000


def test_cli_phases_call_the_tool_functions(
    small_run: tuple[int, str, Path], bench: ModuleType, tmp_path: Path
) -> None:
    """``--cli``: each phase is one call of synthesize() / factorize(), reports included (run here in-process)."""
    import shutil

    _, _, workdir = small_run
    shutil.copytree(workdir / "adapter", tmp_path / "adapter")
    args = bench.build_parser().parse_args([*SMALL, "--cli", "--noise-scale", "0", "--workdir", str(tmp_path)])
    p = bench.paths(tmp_path, args)
    [(name, step)] = bench._synthesize_steps(args, p)
    report = step(None)
    assert name == "synthesize()" and report["summary"]["modules"] == 7 and p["teacher"].is_file()
    assert (p["teacher_dir"] / "synthesis_report.json").is_file()
    [(name, step)] = bench._factorize_steps(args, p)
    analysis = step(None)
    assert name == "factorize()" and analysis["rank"] == RANK and p["factors"].is_file()
    assert (p["factors_dir"] / f"svd_report_rank{RANK}.txt").is_file()
