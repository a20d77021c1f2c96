"""Run comparison metrics: hand-computed values on synthetic TensorBoard logs, the default and an explicit target
loss, improvements against the first run, and step-0 validation."""

from __future__ import annotations

import math

import pytest
from builders import LOSS_A, LOSS_B, curve, f32, make_run

from svdlora_pl.errors import InputError
from svdlora_pl.experiment.comparison import (
    build_comparison,
    improvement,
    run_metrics,
    steps_to_target,
    tail_mean,
    trapezoid_area,
)
from svdlora_pl.experiment.run_log import load_run, load_runs


def test_trapezoid_steps_target_tail_by_hand():
    a = curve(LOSS_A)
    assert trapezoid_area(a) == pytest.approx((4 + 3) / 2 + (3 + 2) / 2 + (2 + 1.5) / 2 + (1.5 + 1.2) / 2)  # 9.1
    assert trapezoid_area([(0, 1.0), (10, 3.0)]) == pytest.approx(20.0)  # uneven step spacing counts
    assert trapezoid_area([(3, 2.0)]) == 0.0
    assert steps_to_target(a, 2.0) == 3  # <= is a crossing
    assert steps_to_target(a, 1.0) is None
    assert steps_to_target([(1, 1.0), (2, 5.0), (3, 0.5)], 1.0) == 1  # raw first crossing, no smoothing
    twenty = [(s, float(s)) for s in range(1, 21)]
    assert tail_mean(twenty) == pytest.approx((19 + 20) / 2)  # ceil(10% of 20) = 2 points
    assert tail_mean(twenty[:11]) == pytest.approx((10 + 11) / 2)  # ceil(1.1) = 2
    assert tail_mean(twenty[:3]) == 3.0


def test_improvement_edge_cases():
    assert improvement(4.0, 3.0) == pytest.approx(25.0)
    assert improvement(2.0, 3.0) == pytest.approx(-50.0)
    assert improvement(0.0, 1.0) is None
    assert improvement(None, 1.0) is None
    assert improvement(1.0, None) is None
    assert improvement(1.0, math.nan) is None


def test_two_runs_hand_computed(tmp_path):
    make_run(tmp_path / "random", LOSS_A, val=[(0, 4.5), (5, 1.4)])
    make_run(tmp_path / "svd", LOSS_B, val=[(5, 1.3)])
    runs = load_runs([tmp_path / "random", tmp_path / "svd"])
    assert [r.label for r in runs] == ["random", "svd"]
    result = build_comparison(runs)
    a, b = (r["metrics"] for r in result["runs"])
    A, B = f32(LOSS_A), f32(LOSS_B)
    target = A[-1] * 1.05  # worst final train loss is random's 1.2
    assert result["target_loss"]["value"] == pytest.approx(target, rel=1e-12)
    assert "random" in result["target_loss"]["source"] and "1.05" in result["target_loss"]["source"]
    assert (a["initial_train_loss"], b["initial_train_loss"]) == (A[0], B[0])
    assert (a["initial_train_step"], a["first_step"], a["last_step"]) == (1, 1, 5)
    assert a["initial_val_loss"] == pytest.approx(4.5) and b["initial_val_loss"] is None
    assert a["initial_val"] == {"loss": pytest.approx(4.5), "token_accuracy": None, "perplexity": None}
    assert (a["final_train_loss"], b["final_train_loss"]) == (A[-1], B[-1])
    assert (a["final_val_loss"], b["final_val_loss"]) == (pytest.approx(1.4), pytest.approx(1.3))
    assert (a["steps_to_target"], b["steps_to_target"]) == (5, 4)  # 1.2 <= 1.26 at step 5; 1.1 <= 1.26 at step 4
    auc_a = sum((A[i] + A[i + 1]) / 2 for i in range(4))
    auc_b = sum((B[i] + B[i + 1]) / 2 for i in range(4))
    assert a["train_loss_auc"] == pytest.approx(auc_a, rel=1e-12) and auc_a == pytest.approx(9.1)
    assert b["train_loss_auc"] == pytest.approx(auc_b, rel=1e-12) and auc_b == pytest.approx(6.5)
    gains = result["improvement_pct"]["svd"]
    assert list(result["improvement_pct"]) == ["svd"] and result["reference_run"] == "random"
    assert gains["initial_train_loss"] == pytest.approx((4 - 3) / 4 * 100)  # 25 %
    assert gains["steps_to_target"] == pytest.approx((5 - 4) / 5 * 100)  # 20 %
    assert gains["final_train_loss"] == pytest.approx((A[-1] - B[-1]) / A[-1] * 100)  # 16.67 %
    assert gains["final_val_loss"] == pytest.approx((1.4 - 1.3) / 1.4 * 100, rel=1e-6)
    assert gains["train_loss_auc"] == pytest.approx((auc_a - auc_b) / auc_a * 100)  # 28.57 %
    assert gains["initial_val_loss"] is None  # svd has no step-0 validation


def test_explicit_target_never_reached(tmp_path):
    runs = [load_run(make_run(tmp_path / n, losses), n) for n, losses in (("a", LOSS_A), ("b", LOSS_B))]
    result = build_comparison(runs, target_loss=1.05)
    assert result["target_loss"] == {"value": 1.05, "source": "target_loss"}
    assert [r["metrics"]["steps_to_target"] for r in result["runs"]] == [None, 5]
    assert result["improvement_pct"]["b"]["steps_to_target"] is None
    with pytest.raises(InputError, match="target_loss: must be a finite number"):
        build_comparison(runs, target_loss=math.inf)


def test_run_metrics_step_zero_validation():
    scalars = {
        "train/loss": [(0, 2.0), (1, 1.0)],
        "val/loss": [(0, 2.5), (1, 1.5)],
        "val/token_accuracy": [(0, 0.25)],
        "val/perplexity": [(0, 12.0), (1, 4.0)],
    }
    m = run_metrics(scalars, target=1.5)
    assert m["initial_val"] == {"loss": 2.5, "token_accuracy": 0.25, "perplexity": 12.0}
    assert (m["initial_val_loss"], m["final_val_loss"], m["steps_to_target"], m["val_points"]) == (2.5, 1.5, 1, 2)
