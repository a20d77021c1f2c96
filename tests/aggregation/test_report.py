"""The aggregation report: summaries, strict-JSON values (non-finite as None), and the text rendering."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from svdlora_pl.aggregation.report import TARGET, adapter_entry, build_report, format_metric, format_report, summarize
from svdlora_pl.aggregation.rules import Aggregate, ModuleReport
from svdlora_pl.lora.adapters import LoRAAdapter
from svdlora_pl.lora.factors import LoRAFactors


def module_report(relative_error: float, energy_kept: float, rank: int = 2, clamped: bool = False) -> ModuleReport:
    return ModuleReport(
        method="zeropad", shape=(4, 3), client_ranks=(1, 2), rank=rank, rank_requested=None, clamped=clamped,
        numerical_rank=rank, relative_error=relative_error, optimal_error=0.0, energy_kept=energy_kept, exact_norm=0.0,
    )  # fmt: skip


def result(*reports: ModuleReport) -> dict[str, Aggregate]:
    return {f"m.{i}": Aggregate(torch.zeros(4, r.rank), torch.zeros(r.rank, 3), r) for i, r in enumerate(reports)}


def test_summary_of_finite_modules():
    summary = summarize(result(module_report(0.1, 0.9), module_report(0.3, 0.5, rank=1, clamped=True)))
    assert summary["modules"] == 2 and summary["ranks"] == [1, 2] and summary["clamped_modules"] == 1
    assert summary["max_relative_error"] == 0.3 and math.isclose(summary["mean_relative_error"], 0.2)
    assert summary["min_energy_kept"] == 0.5 and summary["max_optimal_error"] == 0.0


def test_non_finite_values_become_none_and_n_a():
    """A module whose exact update is zero while the aggregate is not has infinite error and energy."""
    entry = adapter_entry(result(module_report(0.2, 0.8), module_report(math.inf, math.inf)))
    summary = entry["summary"]
    assert summary["max_relative_error"] is None and summary["mean_relative_error"] == 0.2
    assert summary["min_energy_kept"] == 0.8
    assert entry["modules"]["m.1"]["relative_error"] is None and entry["modules"]["m.1"]["energy_kept"] is None
    assert entry["modules"]["m.1"]["shape"] == [4, 3] and entry["modules"]["m.1"]["client_ranks"] == [1, 2]
    assert summarize(result(module_report(math.nan, math.nan)))["mean_relative_error"] is None
    assert format_metric(None) == format_metric(math.inf) == format_metric(math.nan) == "n/a"
    assert format_metric(0.00012345) == "1.234e-04"


def test_build_and_format_report():
    factors = {"m.0": LoRAFactors(torch.zeros(4, 1), torch.zeros(1, 3), 2.0)}
    adapters = [
        LoRAAdapter(Path("c0"), {"base_model_name_or_path": "tiny"}, factors),
        LoRAAdapter(Path("c1"), {"base_model_name_or_path": "tiny"}, factors),
    ]
    outputs = {".": result(module_report(math.inf, 0.5)), "rank_1": result(module_report(0.25, 0.75, rank=1))}
    options = {"rank": None, "split": "sqrt", "norm_weights": False, "dtype": "float32"}
    report = build_report("zeropad", options, adapters, [0.25, 0.75], outputs, {1: "rank_1"}, "out")
    assert json.loads(json.dumps(report, allow_nan=False)) == report  # strict JSON as it is
    assert report["target"] == TARGET and report["base_model"] == "tiny" and report["output_dir"] == "out"
    assert [c["output"] for c in report["clients"]] == [".", "rank_1"]
    assert report["clients"][1] == {
        "adapter": "c1",
        "weight": 0.75,
        "ranks": [1],
        "scalings": [2.0],
        "output": "rank_1",
    }
    text = format_report(report)
    assert text.startswith("svdlora aggregate — method zeropad\nbase model: tiny\n")
    assert "  [1] c1  weight 0.7500  ranks [1]  scalings [2.0]  -> rank_1" in text
    assert "adapter .: 1 modules, ranks [2], max relative error n/a, min energy kept 5.000e-01" in text
    assert "adapter rank_1: 1 modules, ranks [1], max relative error 2.500e-01" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("m.0") and " 4×3 " in line)
    assert row.split()[1:] == ["4×3", "2", "n/a", "0.000e+00", "0.500000"]
