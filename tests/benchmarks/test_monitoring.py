"""benchmarks/monitoring.py: the smoke run's report, the modelled 7B step and the stand-in layers."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from types import ModuleType

import pytest
import torch
from helpers import ROOT

BENCH = ROOT / "benchmarks" / "monitoring.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_monitoring", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_smoke_run_reports_every_monitor(bench):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = bench.main(["--shapes", "tiny", "--layers", "2", "--repeat", "1"])
    text = out.getvalue()
    assert code == 0, text  # tiny shapes against a 7B step: every target passes
    for name in ("LoRASpectrumMonitor", "TeacherAlignmentMonitor", "LoRAIntruderMonitor"):
        assert f"\n{name} " in text and text.count(name) == 2  # the cost table and the tag table
    assert "14 LoRA modules" in text and "PASS" in text and "FAIL" not in text
    assert "(from the cache: " in text and "14 bases)" in text  # the second fit reads every base from the cache
    assert "event file growth per 1,000 steps" in text


def test_modelled_step_time(bench):
    seconds, text = bench.step_seconds()
    # Qwen2.5-7B by hand: per layer q, o 3584², k, v 512×3584, gate, up, down 18944×3584; lm_head 3584×152064
    frozen = 28 * (2 * 3584**2 + 2 * 512 * 3584 + 3 * 18944 * 3584) + 3584 * 152064  # 7,070,285,824
    lora = 28 * 16 * (2 * 7168 + 2 * 4096 + 3 * 22528)  # r·(in + out) per projection: 40,370,176
    flops = 4 * frozen + 6 * lora + 12 * 28 * 1024 * 3584  # F per token at T = 1024, × 4,096 tokens a step
    assert seconds == pytest.approx(flops * 4096 / (0.4 * 209e12), rel=1e-9)
    assert "RTX 5090 209 TFLOP/s" in text


def test_stand_in_layers_are_what_the_monitors_read(bench):
    refs = bench.stand_in_layers(bench.TINY, layers=2)
    assert len(refs) == 14 and refs[0].name == "model.layers.0.self_attn.q_proj"
    q = refs[0]
    assert q.B.shape == (56, 16) and q.A.shape == (16, 56) and q.scaling == 2.0
    assert q.layer.get_base_layer().weight.shape == (56, 56)
    assert refs[7].layer.get_base_layer() is q.layer.get_base_layer()  # one base per shape, shared by the layers
    assert not torch.equal(refs[7].B, q.B)
