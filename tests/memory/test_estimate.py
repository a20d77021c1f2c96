"""The memory plan of a resolved config (:func:`estimate_memory`): the reference run's published numbers, the plan
of the FSDP overlay, the report equal to the plan computed step by step, and the budget."""

from __future__ import annotations

import pytest
from helpers import ROOT

from svdlora_pl.cli.lightning import resolve_fit_config
from svdlora_pl.errors import InputError
from svdlora_pl.memory.architecture import count_parameters
from svdlora_pl.memory.estimate import estimate_memory
from svdlora_pl.memory.fit_setup import read_fit_config, training_setup
from svdlora_pl.memory.plan import plan_memory
from svdlora_pl.memory.presets import tiny_config
from svdlora_pl.memory.table import GB

REFERENCE = str(ROOT / "configs" / "qwen2.5-math-7b-32gb.yaml")
FSDP = str(ROOT / "configs" / "distributed" / "fsdp.yaml")
TINY = str(ROOT / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def reference() -> dict:
    return estimate_memory(resolve_fit_config(["-c", REFERENCE]), budget_gb=32, model_config="qwen2.5-math-7b")


def test_reference_run_has_the_published_numbers(reference):
    """docs/memory.md's table: 19.389 GB in all (unchanged since the plan was published), 12.61 GB to spare."""
    plan = reference["plan"]
    assert plan["total"] == 19_389_095_372 and reference["fits"]
    assert plan["base_weights"] == {"bfloat16": 7_615_616_512 * 2}
    assert plan["trainable"] == plan["gradients"] == 4 * 40_370_176
    assert round(plan["activations_checkpointed"] / GB, 3) == 0.301
    assert round(plan["activations_full"] / GB, 3) == 8.110
    assert round(plan["peak"] / GB, 3) == 16.650 and round(plan["cuda_overhead"] / GB, 3) == 2.739
    assert (reference["largest_micro_batch"], reference["largest_max_length"]) == (17, 4096)
    assert reference["architecture_source"] == "preset qwen2.5-math-7b"
    assert reference["setup"]["accumulate_grad_batches"] == 4 and reference["setup"]["optimizer"] == "AdamW"


def test_fsdp_overlay_is_planned_as_overlaid():
    """The overlay's FSDP strategy (one device counted: -1 is known at run time), accumulation 1, and its
    per-layer activation checkpointing in place of ``model.gradient_checkpointing: false``."""
    config = resolve_fit_config(["-c", REFERENCE, "-c", FSDP])
    report = estimate_memory(config, model_config="qwen2.5-math-7b")
    setup, plan = report["setup"], report["plan"]
    assert (setup["strategy"], setup["world_size"], setup["accumulate_grad_batches"]) == ("fsdp", 1, 1)
    assert plan["fsdp_gather"] > 0 and plan["checkpointing"]
    reference = estimate_memory(resolve_fit_config(["-c", REFERENCE]), model_config="qwen2.5-math-7b")["plan"]
    assert plan["activations_checkpointed"] == reference["activations_checkpointed"]
    assert plan["peak"] == reference["peak"] + plan["fsdp_gather"]  # everything else as the single-GPU plan
    four = estimate_memory(resolve_fit_config(["-c", REFERENCE, "-c", FSDP, "--trainer.devices=4"]))
    assert four["plan"]["base_weights"]["bfloat16"] == 7_615_616_512 * 2 // 4


def test_report_equals_the_plan_computed_step_by_step():
    config = resolve_fit_config(["-c", TINY])
    report = estimate_memory(config, budget_gb=1)
    setup = training_setup(read_fit_config(config), None)
    arch, counts = count_parameters(tiny_config(), setup.lora)
    plan = plan_memory(arch, counts, setup)
    assert report["plan"]["total"] == plan.total and report["plan"]["peak"] == plan.peak
    assert report["budget_bytes"] == 1e9 and report["fits"] == (plan.total <= 1e9)
    assert plan.cuda_overhead == 0  # accelerator: cpu


def test_budget_must_be_positive():
    with pytest.raises(InputError, match="budget_gb: must be positive, got 0"):
        estimate_memory(resolve_fit_config(["-c", TINY]), budget_gb=0)
