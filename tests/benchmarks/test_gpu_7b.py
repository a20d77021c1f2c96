"""benchmarks/gpu_7b.py: the CPU smoke run's rows and JSON, the FLOPs formula, the peak table, OOM rows, the 7B
shape, the checkpointing switch, the chunked loss, the reference comparison, the no-CUDA stop."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from helpers import ROOT

BENCH = ROOT / "benchmarks" / "gpu_7b.py"
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
    assert f"torch {torch.__version__} (CUDA {torch.version.cuda})" in text
    assert "loss: chunked, 256 answer-token rows" in text  # the 7B config's default
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
    # the chunked loss reruns lm_head in backward: HFU only, with or without checkpointing
    model_chunk, hardware_chunk = bench.flops_per_token(shape, 1024, checkpointing=False, chunked=True)
    assert model_chunk == model and hardware_chunk == model + 2 * 3584 * 152064
    assert bench.flops_per_token(shape, 1024, True, chunked=True) == (model, hardware_ckpt + 2 * 3584 * 152064)


def test_row_cells_mfu_and_ratio(bench: ModuleType) -> None:
    shape = bench.Shape(frozen=1000, head=100, lora=10, layers=2, attention=8)
    row = {"mem1": 3.0, "mem2": 4.0, "s_step": 1.0, "tok_s": 1e9}

    def cells(row, cuda=True, chunked=False):
        return bench.row_cells(bench.row_numbers(row, shape, 16, True, 10.0, 2.0, cuda, chunked), 2.0)

    # F = 4000 + 60 + 12·2·16·8 = 7132 FLOPs/token; recompute 1800 + 20 + 1024 = 2844
    assert cells(row) == {"mfu": "71.3%", "hfu": "99.8%", "plan": "2", "ratio": "1.500"}
    chunked = cells(row, chunked=True)
    assert chunked["mfu"] == "71.3%" and chunked["hfu"] == "101.8%"  # + 2·100 FLOPs/token
    assert cells(row, cuda=False)["ratio"] == "—"
    assert cells(None) == {"mfu": "—", "hfu": "—", "plan": "2", "ratio": "—"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", ("H100 SXM", 989.0)),
        ("NVIDIA H100 PCIe", ("H100 PCIe", 756.0)),
        ("NVIDIA H100 NVL", ("H100 NVL", 835.0)),
        ("NVIDIA H200", ("H200", 989.0)),
        ("NVIDIA H200 NVL", ("H200 NVL", 835.0)),
        ("NVIDIA H100 80GB HBM3 MIG 3g.40gb", None),
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
    assert "3,083 × 165/165 × F(Llama-3.1-8B, T=2048)/F(this shape, T=2048) = 3,083 × 1 × " in text
    assert "measured (batch 2, length 2048, checkpointing on): not run" in text


def test_qwen25_7b_preset_has_the_published_parameter_count(bench: ModuleType) -> None:
    from transformers import Qwen2Config

    model, shape = bench.build_model(Qwen2Config(**bench.PRESETS["qwen2.5-7b"]), torch.device("meta"), torch.bfloat16)
    total = sum(p.numel() for p in model.parameters())
    assert total - shape.lora == 7_615_616_512  # Qwen2.5-7B's parameter count
    assert shape.lora == 16 * 28 * (2 * (3584 + 3584) + 2 * (3584 + 512) + 3 * (3584 + 18944))
    assert shape.frozen == 7_070_285_824 and shape.head == 3584 * 152064 and shape.attention == 3584
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    assert trainable == {torch.float32}  # PEFT keeps LoRA factors in float32 on a bf16 base


def test_oom_named_by_a_runtime_error_is_an_oom_row(bench: ModuleType, monkeypatch) -> None:
    def cuda_error(*args, **kwargs):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(bench, "run_steps", cuda_error)
    code, text = run_main(bench, SMOKE)
    assert code == 0
    assert [r[2:4] for r in table_rows(text)] == [["on", "OOM"], ["off", "OOM"]]
    assert bench.is_out_of_memory(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not bench.is_out_of_memory(ValueError("out of memory"))


def test_other_runtime_errors_propagate(bench: ModuleType, monkeypatch) -> None:
    def other(*args, **kwargs):
        raise RuntimeError("other")

    monkeypatch.setattr(bench, "run_steps", other)
    with pytest.raises(RuntimeError, match="^other$"):
        run_main(bench, SMOKE)


def test_checkpointing_off_removes_the_embedding_hook_and_lora_still_learns(bench: ModuleType) -> None:
    from transformers import Qwen2Config

    torch.manual_seed(0)
    model, _ = bench.build_model(Qwen2Config(**bench.PRESETS["tiny"]), torch.device("cpu"), torch.float32)
    embedding = model.get_base_model().get_input_embeddings()
    outputs: list[torch.Tensor] = []
    for _ in range(3):  # on → off, repeatedly: hooks must not accumulate
        bench.set_checkpointing(model, True)
        assert len(embedding._forward_hooks) == 1
        bench.set_checkpointing(model, False)
        assert len(embedding._forward_hooks) == 0
    embedding.register_forward_hook(lambda module, inputs, output: outputs.append(output))
    batch = bench.make_batch(2, 16, 256, True, torch.device("cpu"))
    bench.compute_loss(model, batch, 0).backward()
    assert not outputs[0].requires_grad  # without checkpointing the frozen embedding's output needs no grad
    lora = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    assert lora and all("lora_" in name for name, _ in lora)
    assert all(p.grad is not None for _, p in lora)
    # B starts at 0 (so A's first gradient is 0): every B, layer 0's included, gets a non-zero gradient
    lora_b = [p for name, p in lora if "lora_B" in name]
    assert len(lora_b) == 2 * 7 and all(p.grad.abs().sum() > 0 for p in lora_b)


def test_json_rows_and_metadata_and_chunked_loss_equals_full_logits_loss(bench: ModuleType, tmp_path: Path) -> None:
    results = {}
    for chunk in (0, 7):
        path = tmp_path / f"chunk{chunk}" / "out.json"
        code, text = run_main(bench, [*SMOKE, "--loss-chunk-tokens", str(chunk), "--json", str(path)])
        assert code == 0
        results[chunk] = json.loads(path.read_text())
        rows = table_rows(text)
        data = results[chunk]
        loss_line = (
            "loss: chunked, 7 answer-token rows" if chunk else "loss: the model's own over full (B, T, V) logits"
        )
        assert loss_line in text
        assert data["loss_chunk_tokens"] == chunk and data["precision"] == "32-true"
        assert (
            data["device_name"] == "CPU" and data["torch"] == torch.__version__ and data["cuda"] == torch.version.cuda
        )
        assert data["peak_tflops"] is None and data["shape"]["hidden_size"] == 64
        assert data["flops_counts"]["frozen"] == TINY_FROZEN and data["flops_counts"]["lora"] == TINY_LORA
        assert [(r["batch"], r["seq_len"], r["checkpointing"], r["oom"]) for r in data["rows"]] == [
            (2, 32, True, False),
            (2, 32, False, False),
        ]
        for record, row in zip(data["rows"], rows, strict=True):
            assert f"{record['peak_rss_gib']:.2f}" == row[3] and f"{record['tokens_per_s']:,.0f}" == row[6]
            assert f"{record['plan_gib']:.3g}" == row[9]
            assert record["mfu"] is None and record["hfu"] is None and record["measured_over_plan"] is None
            assert 4.0 < record["first_loss"] < 7.0  # about ln 256 = 5.5 for random weights
    full, chunked = results[0]["rows"], results[7]["rows"]
    for a, b in zip(full, chunked, strict=True):  # the same seed: the same first-step loss by both paths
        assert b["first_loss"] == pytest.approx(a["first_loss"], rel=1e-5)


def test_json_keeps_the_rows_finished_before_a_stop(bench: ModuleType, monkeypatch, tmp_path: Path) -> None:
    measure = bench.measure_row
    calls = []

    def stop_on_second_row(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a time limit's signal would
        return measure(*args, **kwargs)

    monkeypatch.setattr(bench, "measure_row", stop_on_second_row)
    path = tmp_path / "out.json"
    with pytest.raises(KeyboardInterrupt):
        run_main(bench, [*SMOKE, "--json", str(path)])
    rows = json.loads(path.read_text())["rows"]
    assert [(r["checkpointing"], r["oom"]) for r in rows] == [(True, False)]
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left


def test_no_cuda_stops_the_7b_preset_with_one_line(bench: ModuleType, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stop:
        run_main(bench, ["--steps", "1"])
    message = str(stop.value)
    assert "\n" not in message and "use --preset tiny, or --device cpu to force it" in message
    assert f"torch {torch.__version__}" in message and f"torch.version.cuda {torch.version.cuda}" in message
    assert bench.choose_device(None, "tiny") == torch.device("cpu")
    assert bench.choose_device("cpu", "qwen2.5-7b") == torch.device("cpu")


@pytest.mark.parametrize(
    "argv",
    [["--loss-chunk-tokens", "-1"], ["--peak-tflops", "0"], ["--steps", "0"]],
)
def test_bad_arguments_stop_with_a_message(bench: ModuleType, argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        run_main(bench, [*SMOKE, *argv])
    assert stop.value.code != 0
    message = str(stop.value.code) if isinstance(stop.value.code, str) else capsys.readouterr().err
    assert argv[0] in message or "must be positive" in message


def test_peak_is_used_for_bf16_or_when_given(bench: ModuleType) -> None:
    assert bench.resolve_peak(None, "NVIDIA H100 80GB HBM3", mixed=True) == (989.0, "H100 SXM, dense bf16, vendor spec")
    peak, why = bench.resolve_peak(None, "NVIDIA H100 80GB HBM3", mixed=False)
    assert peak is None and "float32" in why and "MFU skipped" in why
    assert bench.resolve_peak(400.0, "NVIDIA H100 80GB HBM3", mixed=False) == (400.0, "--peak-tflops")
    peak, why = bench.resolve_peak(None, "NVIDIA H100 80GB HBM3 MIG 3g.40gb", mixed=True)
    assert peak is None and "MIG" in why
    assert bench.resolve_peak(None, None, mixed=False) == (None, "unknown (MFU skipped)")


def test_reference_shape_is_llama_31_8b(bench: ModuleType) -> None:
    from transformers import LlamaConfig

    config = LlamaConfig(**bench.REFERENCE_CONFIG, tie_word_embeddings=False)
    model, shape = bench.build_model(config, torch.device("meta"), torch.bfloat16)
    assert bench.reference_shape() == shape
    assert sum(p.numel() for p in model.parameters()) - shape.lora == 8_030_261_248  # Llama-3.1-8B's count


def test_reference_compares_the_batch2_length2048_checkpointed_row(bench: ModuleType) -> None:
    qwen = bench.Shape(frozen=7_070_285_824, head=3584 * 152064, lora=40_370_176, layers=28, attention=3584)
    llama = bench.reference_shape()
    f_llama = 4 * llama.frozen + 6 * llama.lora + 12 * 32 * 2048 * 4096
    f_qwen = 4 * qwen.frozen + 6 * qwen.lora + 12 * 28 * 2048 * 3584
    comparison = bench.reference_comparison(qwen, 989.0, measured=12_000.0)
    assert comparison["reference_mfu"] == pytest.approx(3083 * f_llama / 165e12)
    assert 0.55 < comparison["reference_mfu"] < 0.7
    scaled = 3083 * 989 / 165 * f_llama / f_qwen
    assert comparison["scaled_tokens_per_s"] == pytest.approx(scaled)
    assert comparison["measured_over_scaled"] == pytest.approx(12_000 / scaled)
    text = "\n".join(bench.reference_lines(comparison, 989.0))
    assert "12,000 tok/s" in text and f"{scaled:,.0f} tok/s" in text
    missing = bench.reference_comparison(qwen, 989.0, measured=None)
    assert missing["measured_over_scaled"] is None
    assert "checkpointing on): not run" in "\n".join(bench.reference_lines(missing, 989.0))


def test_the_plan_sees_the_loss_chunk(bench: ModuleType) -> None:
    from transformers import Qwen2Config

    config = Qwen2Config(**bench.PRESETS["qwen2.5-7b"])
    full, note = bench.make_planner(config, True, "gpu", 0)
    chunked, _ = bench.make_planner(config, True, "gpu", 256)
    assert note == "" and full is not None and chunked is not None
    # the full (4096, 152064) logits and their float32 copies set the peak (GiB); chunked: 256 rows at a time
    assert full(2, 2048, True) - chunked(2, 2048, True) > 2.0
