"""benchmarks/gpu_7b.py: the CPU smoke run's rows, the FLOPs formula, the peak table, OOM rows, the 7B shape."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_7b.py"
SMOKE = ["--preset", "tiny", "--device", "cpu", "--batch-sizes", "2", "--seq-lens", "32", "--steps", "2"]
# the tiny preset by hand: hidden 64, 4 heads × 16 (q 64), 2 KV heads (k, v 32), intermediate 176, vocab 256, 2 layers
TINY_FROZEN = 2 * (64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 176 * 64) + 256 * 64  # projections + lm_head
TINY_LORA = 2 * 16 * ((64 + 64) + 2 * (64 + 32) + (64 + 64) + 3 * (64 + 176))  # r·(in + out) per projection


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_gpu_7b", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_main(bench: ModuleType, argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = bench.main(argv)
    return code, out.getvalue()


def table_rows(text: str) -> list[list[str]]:
    """The table's rows, split on whitespace: the lines between the dashed rule and the first blank line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("-----")) + 1
    end = next(i for i in range(start, len(lines)) if not lines[i].strip())
    return [line.split() for line in lines[start:end]]


def test_cpu_smoke_run_prints_one_row_per_checkpointing_setting(bench: ModuleType) -> None:
    code, text = run_main(bench, SMOKE)
    assert code == 0
    assert "tiny shape (2 layers, hidden 64" in text and f"{TINY_LORA:,} LoRA parameters" in text
    assert "precision 32-true, peak unknown (MFU skipped)" in text
    assert "peak RSS" in text and "peak alloc" not in text
    assert f"N_f = {TINY_FROZEN:,}, N_h = {256 * 64:,}, N_l = {TINY_LORA:,}, L = 2, d = 64" in text
    rows = table_rows(text)
    assert [r[:2] for r in rows] == [["2", "32"], ["2", "32"]]
    assert [r[2] for r in rows] == ["on", "off"]
    for row in rows:
        peak_rss, rss, s_step, tok_s = float(row[3]), float(row[4]), float(row[5]), float(row[6].replace(",", ""))
        assert 0.05 < rss <= peak_rss + 0.01 < 256  # GiB: a Python process with torch
        assert tok_s == pytest.approx(2 * 32 / s_step, rel=0.02)  # tok/s = B·T / (seconds per step)
        assert row[7:9] == ["—", "—"]  # MFU and HFU without a known peak
        assert float(row[9]) > 0 and row[10] == "—"  # plan shown; measured/plan only on CUDA
    assert "reference: torchtune" not in text


def test_flops_per_token_by_hand(bench: ModuleType) -> None:
    # the Qwen2.5-7B shape: 28 × (2·3584² + 2·512·3584 + 3·18944·3584) + 3584·152064
    frozen = 28 * (2 * 3584**2 + 2 * 512 * 3584 + 3 * 18944 * 3584) + 3584 * 152064
    assert frozen == 7_070_285_824
    shape = bench.Shape(frozen=frozen, head=3584 * 152064, lora=40_370_176, layers=28, attention=3584)
    model, hardware = bench.flops_per_token(shape, 1024, checkpointing=False)
    assert model == hardware == 4 * frozen + 6 * 40_370_176 + 12 * 28 * 1024 * 3584
    model_ckpt, hardware_ckpt = bench.flops_per_token(shape, 1024, checkpointing=True)
    assert model_ckpt == model
    assert hardware_ckpt == model + 2 * (frozen - 3584 * 152064) + 2 * 40_370_176 + 4 * 28 * 1024 * 3584


def test_row_cells_mfu_and_ratio(bench: ModuleType) -> None:
    shape = bench.Shape(frozen=1000, head=100, lora=10, layers=2, attention=8)
    row = {"mem1": 3.0, "mem2": 4.0, "s_step": 1.0, "tok_s": 1e9}
    # F = 4000 + 60 + 12·2·16·8 = 7132 FLOPs/token; recompute 1800 + 20 + 1024 = 2844
    cells = bench.row_cells(row, shape, 16, True, peak=10.0, plan=2.0, cuda=True)
    assert cells == {"mfu": "71.3%", "hfu": "99.8%", "plan": "2", "ratio": "1.500"}
    assert bench.row_cells(None, shape, 16, True, 10.0, 2.0, True) == {
        "mfu": "—",
        "hfu": "—",
        "plan": "2",
        "ratio": "—",
    }


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", ("H100 SXM", 989.0)),
        ("NVIDIA H100 PCIe", ("H100 PCIe", 756.0)),
        ("NVIDIA H200", ("H200", 989.0)),
        ("NVIDIA A100-SXM4-80GB", ("A100", 312.0)),
        ("NVIDIA GeForce RTX 4090", ("RTX 4090", 165.0)),
        ("NVIDIA GeForce RTX 5090", ("RTX 5090", 209.0)),
        ("NVIDIA GeForce RTX 3090", None),
    ],
)
def test_peak_table(bench: ModuleType, name: str, expected: tuple[str, float] | None) -> None:
    assert bench.peak_tflops(name) == expected


def test_out_of_memory_rows_print_oom_and_the_run_goes_on(bench: ModuleType, monkeypatch) -> None:
    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(bench, "run_steps", out_of_memory)
    code, text = run_main(bench, [*SMOKE, "--peak-tflops", "165"])
    assert code == 0
    rows = table_rows(text)
    assert [r[:2] for r in rows] == [["2", "32"], ["2", "32"]]
    assert [r[2:4] for r in rows] == [["on", "OOM"], ["off", "OOM"]]
    assert "3,083 × 165 / 165 = 3,083 tok/s" in text


def test_qwen25_7b_preset_has_the_published_parameter_count(bench: ModuleType) -> None:
    from transformers import Qwen2Config

    model, shape = bench.build_model(Qwen2Config(**bench.PRESETS["qwen2.5-7b"]), torch.device("meta"), torch.bfloat16)
    total = sum(p.numel() for p in model.parameters())
    assert total - shape.lora == 7_615_616_512  # Qwen2.5-7B's parameter count
    assert shape.lora == 16 * 28 * (2 * (3584 + 3584) + 2 * (3584 + 512) + 3 * (3584 + 18944))
    assert shape.frozen == 7_070_285_824 and shape.head == 3584 * 152064 and shape.attention == 3584
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    assert trainable == {torch.float32}  # PEFT keeps LoRA factors in float32 on a bf16 base
