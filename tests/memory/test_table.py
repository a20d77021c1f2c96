"""The printed plan: the table's rows, the title naming the config files, and the one line of an over-budget plan."""

from __future__ import annotations

import pytest
from helpers import ROOT

from svdlora_pl.cli.lightning import resolve_fit_config
from svdlora_pl.memory.estimate import estimate_memory
from svdlora_pl.memory.table import format_table, over_budget_message

REFERENCE = str(ROOT / "configs" / "qwen2.5-math-7b-32gb.yaml")


@pytest.fixture(scope="module")
def report() -> dict:
    return estimate_memory(resolve_fit_config(["-c", REFERENCE]), model_config="qwen2.5-math-7b")


def test_table_rows_as_documented(report):
    table = format_table({"config": ["a.yaml", "b.yaml"], **report})
    lines = table.splitlines()
    assert lines[0] == "svdlora estimate-memory: a.yaml + b.yaml"
    assert format_table(report).splitlines()[0] == "svdlora estimate-memory: a resolved config"
    for row in (
        "base weights (bfloat16, frozen)             15.231  7,615,616,512 params",
        "LoRA parameters (float32)                    0.161  40,370,176 params, r=16",
        "activations, gradient checkpointing          0.301  layer inputs <- used",
        "logits + loss peak                           0.467  12 bytes · min(256, B·T)·V: one chunk of the chunked "
        "loss (model.loss_chunk_tokens)",
        "total                                       19.389  fits in 32.00 GB (+12.61 GB)",
        "total without checkpointing                 27.974  for comparison",
        "largest micro-batch at max_length 1024: 17",
        "largest max_length at micro-batch 1: 4096 (the model's max_position_embeddings)",
        "note: accumulate_grad_batches=4: gradients stay allocated between micro-batches (counted)",
    ):
        assert row in lines, row
    assert "DDP gradient buckets" not in table  # rows under 0.5 MB are left out, master weights excepted
    assert "master weights                               0.000  none (see notes)" in lines


def test_over_budget_line(report):
    over = {**report, "budget_bytes": 1e9, "fits": False, "largest_micro_batch": 0, "largest_max_length": 0}
    line = over_budget_message(over)
    assert line.startswith("budget_gb: the config needs 19.39 GB, over the 1 GB budget (weights, gradients and ")
    assert "largest micro-batch at max_length 1024: 0, largest max_length at micro-batch 1: 0" in line
    assert "\n" not in line
