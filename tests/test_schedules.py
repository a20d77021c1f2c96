"""Learning-rate schedules: warmup, cosine/linear/constant decay, and a real optimizer driven by the scheduler."""

from __future__ import annotations

import math

import pytest
import torch

from svdlora_pl.schedules import ScheduleKind, lr_factor, warmup_schedule


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_warmup_is_linear_from_one_step(kind: ScheduleKind) -> None:
    got = [lr_factor(s, 4, 20, kind, 0.1) for s in range(4)]
    assert got == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lr_factor(4, 4, 20, kind, 0.1) == pytest.approx(1.0)  # decay starts from the peak


@pytest.mark.parametrize("min_ratio", [0.0, 0.1, 0.5])
def test_cosine_midpoint_and_end(min_ratio: float) -> None:
    # warmup 10, total 110: decay spans 100 steps, midpoint at step 60, end at step 110
    assert lr_factor(60, 10, 110, "cosine", min_ratio) == pytest.approx((1 + min_ratio) / 2)
    assert lr_factor(35, 10, 110, "cosine", min_ratio) == pytest.approx(
        min_ratio + (1 - min_ratio) * (1 + math.sqrt(0.5)) / 2  # p = 1/4: cos(pi/4) = sqrt(1/2)
    )
    assert lr_factor(110, 10, 110, "cosine", min_ratio) == pytest.approx(min_ratio)
    assert lr_factor(500, 10, 110, "cosine", min_ratio) == pytest.approx(min_ratio)  # clipped past the end


def test_linear_and_constant() -> None:
    assert [lr_factor(s, 0, 4, "linear", 0.0) for s in range(6)] == pytest.approx([1, 0.75, 0.5, 0.25, 0, 0])
    assert [lr_factor(s, 0, 4, "linear", 0.2) for s in (0, 2, 4)] == pytest.approx([1.0, 0.6, 0.2])
    assert [lr_factor(s, 2, 10, "constant", 0.3) for s in range(5)] + [lr_factor(50, 2, 10, "constant", 0.3)] == (
        pytest.approx([0.5, 1, 1, 1, 1, 1])
    )


def test_zero_warmup_starts_at_peak() -> None:
    assert lr_factor(0, 0, 10, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_factor(5, 0, 10, "cosine", 0.0) == pytest.approx(0.5)
    assert lr_factor(0, 0, 0, "cosine", 0.0) == pytest.approx(1.0)  # degenerate total: no division by zero


def test_warmup_schedule_drives_sgd() -> None:
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.2)
    scheduler = warmup_schedule(optimizer, warmup_steps=2, total_steps=6, kind="cosine", min_ratio=0.1)
    seen = []
    for _ in range(7):
        seen.append(optimizer.param_groups[0]["lr"])
        weight.sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    # factors: warmup 1/2, 1; then cosine over 4 steps, p = 0, 1/4, 1/2, 3/4, 1: 0.1 + 0.9 * (1 + cos(pi p)) / 2
    c = math.sqrt(0.5)
    factors = [0.5, 1.0, 1.0, 0.1 + 0.9 * (1 + c) / 2, 0.55, 0.1 + 0.9 * (1 - c) / 2, 0.1]
    assert seen == pytest.approx([0.2 * f for f in factors])
    # SGD with grad 1 moves each weight by the sum of the learning rates actually used
    torch.testing.assert_close(weight.detach(), torch.full((3,), 1 - 0.2 * sum(factors)))
