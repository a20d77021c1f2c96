"""Study statistics, pinned: ``summary`` (n, mean, ddof-1 std, None and non-finite values dropped), the t quantile,
``paired_difference`` (pairing by seed, Student's t interval against hand and numpy values with the quantile
hard-coded, ``relative_pct``) and ``verdict`` for lower- and higher-is-better."""

from __future__ import annotations

import math

import numpy as np
import pytest

from svdlora_pl.experiment.statistics import paired_difference, summary, t_quantile, verdict

# t(0.975, df), exact to double precision (df 1: tan(0.475 pi); df 2: 0.95 / sqrt(2 * 0.975 * 0.025); df 4: the
# closed form for 4 degrees of freedom), checked against mpmath at 40 digits
T975 = {1: 12.706204736174705, 2: 4.302652729749464, 4: 2.7764451051977943}
NO_INTERVAL = "n/a (fewer than 2 paired seeds)"


def by_numpy(differences: list[float], reference: list[float]) -> dict[str, object]:
    """mean, ddof-1 std, the 95 % t interval and the relative difference of paired differences, by numpy."""
    d = np.array(differences, dtype=np.float64)
    mean, std = float(d.mean()), float(d.std(ddof=1))
    half = T975[len(d) - 1] * std / math.sqrt(len(d))
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half],
            "relative_pct": 100.0 * mean / float(np.mean(reference))}  # fmt: skip


# ------------------------------------------------------------------------------------------------ summary
def test_summary_n_mean_and_sample_std():
    stats = summary([1.0, 2.0, 4.0])
    assert stats["n"] == 3
    assert stats["mean"] == pytest.approx(7 / 3, rel=1e-15)
    assert stats["std"] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert stats["std"] == pytest.approx(float(np.std([1.0, 2.0, 4.0], ddof=1)), rel=1e-12)  # ddof 1, not 0
    assert stats["std"] == pytest.approx(1.5275252316519468, rel=1e-12)
    assert stats["values"] == [1.0, 2.0, 4.0]
    assert summary([2.5, 2.5])["std"] == 0.0


def test_summary_drops_none_and_non_finite_and_keeps_the_values_as_given():
    stats = summary([1.0, None, 3.0])
    assert (stats["n"], stats["mean"]) == (2, 2.0)
    assert stats["std"] == pytest.approx(math.sqrt(2.0), rel=1e-15)
    assert stats["values"] == [1.0, None, 3.0]

    stats = summary([2.0, math.nan, math.inf, -math.inf, None])
    assert (stats["n"], stats["mean"], stats["std"]) == (1, 2.0, None)  # one value: no std
    assert len(stats["values"]) == 5

    for empty in ([], [None], [math.nan, math.inf]):
        assert summary(empty)["n"] == 0
        assert summary(empty)["mean"] is None
        assert summary(empty)["std"] is None

    stats = summary([3, 5])  # integers (steps to target) are averaged as floats
    assert (stats["n"], stats["mean"]) == (2, 4.0)
    assert stats["std"] == pytest.approx(math.sqrt(2.0))


def test_t_quantile_matches_the_exact_values():
    for df, value in T975.items():
        assert t_quantile(df) == pytest.approx(value, rel=1e-12)


# ------------------------------------------------------------------------------------------------ paired_difference
def test_paired_difference_three_seeds_by_hand():
    arm = {0: 1.2, 1: 1.0, 2: 1.5}
    reference = {0: 1.5, 1: 1.4, 2: 1.6}
    diff = paired_difference(arm, reference)
    assert diff["n"] == 3
    assert diff["seeds"] == [0, 1, 2]
    assert diff["differences"] == pytest.approx([-0.3, -0.4, -0.1], rel=1e-12)
    # d = [-0.3, -0.4, -0.1]: mean -0.8/3, sd = sqrt(0.07/3) = 0.15275, half width t(2) * sd / sqrt(3) = 0.37946
    mean = -0.8 / 3
    std = math.sqrt(((-0.3 - mean) ** 2 + (-0.4 - mean) ** 2 + (-0.1 - mean) ** 2) / 2)
    half = 4.302652729749464 * std / math.sqrt(3)
    assert diff["mean"] == pytest.approx(mean, rel=1e-12)
    assert diff["std"] == pytest.approx(std, rel=1e-12)
    assert diff["ci95"] == pytest.approx([mean - half, mean + half], rel=1e-9)
    assert diff["ci95"] == pytest.approx([-0.6461250, 0.1127916], abs=1e-6)  # pinned
    assert diff["relative_pct"] == pytest.approx(100 * mean / (4.5 / 3), rel=1e-12)
    expected = by_numpy([-0.3, -0.4, -0.1], [1.5, 1.4, 1.6])
    for key, value in expected.items():
        assert diff[key] == pytest.approx(value, rel=1e-9), key
    assert verdict(diff["ci95"], lower_is_better=True) == "no detectable difference"  # the interval holds 0


def test_paired_difference_five_seeds_df4_and_a_clear_verdict():
    reference = {s: 2.0 + 0.1 * s for s in range(5)}
    offsets = [-0.30, -0.25, -0.35, -0.28, -0.32]
    arm = {s: reference[s] + offsets[s] for s in range(5)}
    diff = paired_difference(arm, reference)
    assert diff["n"] == 5
    expected = by_numpy([arm[s] - reference[s] for s in range(5)], list(reference.values()))
    for key, value in expected.items():
        assert diff[key] == pytest.approx(value, rel=1e-9), key
    assert diff["ci95"] == pytest.approx([-0.3472812, -0.2527188], abs=1e-6)  # mean -0.30, t(4) = 2.776
    assert verdict(diff["ci95"], lower_is_better=True) == "helps"
    assert verdict(diff["ci95"], lower_is_better=False) == "hurts"


def test_paired_difference_pairs_by_seed():
    # seed 2 only in the reference, seed 3 only in the arm: both dropped, two pairs remain (df 1)
    arm = {0: 1.0, 1: 2.0, 3: 5.0}
    reference = {0: 0.5, 1: 1.0, 2: 9.0}
    diff = paired_difference(arm, reference)
    assert diff["n"] == 2
    assert diff["seeds"] == [0, 1]
    assert diff["differences"] == [0.5, 1.0]
    half = 12.706204736174705 * float(np.std([0.5, 1.0], ddof=1)) / math.sqrt(2)
    assert diff["mean"] == 0.75
    assert diff["ci95"] == pytest.approx([0.75 - half, 0.75 + half], rel=1e-9)
    assert diff["ci95"] == pytest.approx([-2.4265511840, 3.9265511840], abs=1e-8)
    assert diff["relative_pct"] == pytest.approx(100 * 0.75 / 0.75)  # reference mean over the paired seeds only

    # the order of the seeds in the mappings does not matter: pairs are matched by seed, not by position
    shuffled = paired_difference({1: 2.0, 0: 1.0}, {0: 0.5, 1: 1.0})
    assert shuffled["differences"] == [0.5, 1.0]


def test_paired_difference_drops_missing_and_non_finite_values():
    arm = {0: 1.0, 1: None, 2: 3.0, 3: math.nan, 4: 2.0}
    reference = {0: 2.0, 1: 1.0, 2: 3.5, 3: 1.0, 4: math.inf}
    diff = paired_difference(arm, reference)
    assert diff["seeds"] == [0, 2]
    assert diff["differences"] == [-1.0, -0.5]
    assert diff["mean"] == -0.75
    assert diff["relative_pct"] == pytest.approx(100 * -0.75 / 2.75)


def test_paired_difference_fewer_than_two_pairs_has_no_interval():
    one = paired_difference({0: 1.0, 1: 5.0}, {0: 2.0})
    assert (one["n"], one["seeds"], one["mean"], one["std"], one["ci95"]) == (1, [0], -1.0, None, None)
    assert one["relative_pct"] == pytest.approx(-50.0)
    assert verdict(one["ci95"], lower_is_better=True) == NO_INTERVAL

    none = paired_difference({0: 1.0}, {1: 2.0})
    assert (none["n"], none["seeds"], none["mean"], none["ci95"], none["relative_pct"]) == (0, [], None, None, None)
    assert none["differences"] == []


def test_relative_pct_is_against_the_reference_mean_and_null_when_it_is_zero():
    diff = paired_difference({0: 3.0, 1: 5.0}, {0: 2.0, 1: 4.0})
    assert diff["relative_pct"] == pytest.approx(100 * 1.0 / 3.0)  # mean difference 1 over reference mean 3
    assert paired_difference({0: 1.0, 1: 2.0}, {0: -1.0, 1: 1.0})["relative_pct"] is None  # reference mean 0


# ------------------------------------------------------------------------------------------------ verdict
def test_verdict_lower_and_higher_is_better():
    assert verdict([-0.5, -0.1], lower_is_better=True) == "helps"
    assert verdict([0.1, 0.5], lower_is_better=True) == "hurts"
    assert verdict([-0.5, -0.1], lower_is_better=False) == "hurts"  # e.g. exact match went down
    assert verdict([0.1, 0.5], lower_is_better=False) == "helps"


def test_verdict_interval_containing_zero():
    for interval in ([-0.1, 0.2], [0.0, 0.3], [-0.3, 0.0], [0.0, 0.0]):
        assert verdict(interval, lower_is_better=True) == "no detectable difference", interval
        assert verdict(interval, lower_is_better=False) == "no detectable difference", interval
    assert verdict(None, lower_is_better=True) == NO_INTERVAL
    assert verdict(None, lower_is_better=False) == NO_INTERVAL
