"""The initialization phase of GradientSVDInit in the memory plan: sketch and dense accumulators by formula, the
layer inputs held under checkpointing, and the 7B reference config's verdicts."""

from __future__ import annotations

import pytest

from svdlora_pl.cli.lightning import resolve_fit_config
from svdlora_pl.memory.estimate import estimate_memory
from svdlora_pl.memory.initialization import GradientInit, accumulator_bytes, gradient_init_of

REFERENCE = "configs/qwen2.5-math-7b-32gb.yaml"
LAYER_7B = [(3584, 3584), (512, 3584), (512, 3584), (3584, 3584), (18944, 3584), (18944, 3584), (3584, 18944)]


def test_sketch_and_dense_accumulators_by_formula():
    sketch, test = accumulator_bytes(LAYER_7B, 16, GradientInit())
    k, s = 56, 113
    assert sketch == 4 * sum(k * (out + inp) + s * s for out, inp in LAYER_7B)
    assert test == 4 * (3584 * (k + s) + 18944 * (k + s) + 3584 * (k + s) + 512 * (k + s) + 18944 * (k + s))
    dense, none = accumulator_bytes(LAYER_7B, 16, GradientInit(estimator="exact"))
    assert dense == 4 * sum(out * inp for out, inp in LAYER_7B) and none == 0
    assert dense / sketch > 40  # float32 dense against the sketch, one 7B decoder layer
    multi, _ = accumulator_bytes(LAYER_7B, 16, GradientInit(passes=2))
    assert multi == 4 * sum(k * (out + inp) for out, inp in LAYER_7B)


@pytest.mark.parametrize("estimator, fits", [("sketch", True), ("exact", False)])
def test_reference_config_initialization_phase(estimator, fits):
    args = ["-c", REFERENCE, "--model.initializer=svdlora_pl.initializers.GradientSVDInit",
            f"--model.initializer.estimator={estimator}"]  # fmt: skip
    report = estimate_memory(resolve_fit_config(args))
    init, plan = report["init_phase"], report["plan"]
    assert init["estimator"] == estimator and (init["total"] <= 32e9) is fits and report["fits"] is fits
    assert plan["total"] <= 32e9  # the training step itself fits either way
    assert init["held_inputs"] == 28 * 1024 * 2 * (3 * 3584 + 18944)  # checkpointing on: q/k/v, o, gate/up, down inputs
    unchecked = estimate_memory(resolve_fit_config([*args, "--model.gradient_checkpointing=false"]))
    assert unchecked["init_phase"]["held_inputs"] == 0  # autograd keeps them anyway


def test_only_gradient_svd_init_has_a_phase():
    assert gradient_init_of({"class_path": "svdlora_pl.initializers.RandomInit", "init_args": {}}) is None
    parsed = gradient_init_of({"class_path": "svdlora_pl.initializers.GradientSVDInit", "init_args": {"passes": 3}})
    assert parsed == GradientInit(passes=3)
    assert estimate_memory(resolve_fit_config(["-c", REFERENCE]))["init_phase"] is None
