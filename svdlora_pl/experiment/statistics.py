"""The statistics of a study: mean ± std over seeds, paired differences with a t confidence interval, verdicts.

Usage::

    from svdlora_pl.experiment.statistics import paired_difference, summary, verdict

    summary([1.21, 1.25, 1.19])                        # {"n": 3, "mean": ..., "std": ..., "values": [...]}
    diff = paired_difference({0: 1.2, 1: 1.3}, {0: 1.4, 1: 1.5})   # arm - reference, paired by seed
    verdict(diff["ci95"], lower_is_better=True)         # "helps" | "no detectable difference" | "hurts" | "n/a ..."

The interval of a paired difference is Student's t interval of the per-seed differences d_s = arm_s − reference_s:
mean(d) ± t(0.975, n − 1) · sd(d) / √n, with sd the sample standard deviation (ddof 1); it needs n >= 2 seeds where
both arms have a value. With n = 3 the t quantile is 4.30, so only a difference that is large next to its spread
across seeds is called: the verdict is "helps" when the whole interval is on the better side of zero, "hurts" when
it is on the worse side, "no detectable difference" when it contains zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

CONFIDENCE = 0.95
METHOD = (
    "paired over seeds: d_s = arm - reference at the same seed; mean(d) +/- t(0.975, n-1) * sd(d) / sqrt(n) "
    "(Student's t interval, sd with ddof 1)"
)


def summary(values: Sequence[float | None]) -> dict[str, Any]:
    """n, mean and sample standard deviation (ddof 1; null for n < 2) of the finite values; the values as given."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(finite)
    mean = sum(finite) / n if n else None
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1)) if n >= 2 and mean is not None else None
    return {"n": n, "mean": mean, "std": std, "values": list(values)}


def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided ``confidence`` quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, df))


def paired_difference(arm: Mapping[int, float | None], reference: Mapping[int, float | None]) -> dict[str, Any]:
    """arm − reference, paired by seed over the seeds where both are finite: n, mean, std, the 95 % interval (null for
    n < 2) and the mean difference relative to the reference's mean over those seeds (percent)."""
    seeds = sorted(
        s for s in arm.keys() & reference.keys()
        if arm[s] is not None and reference[s] is not None and math.isfinite(arm[s]) and math.isfinite(reference[s])
    )  # fmt: skip
    differences = [float(arm[s]) - float(reference[s]) for s in seeds]  # type: ignore[arg-type]
    stats = summary(differences)
    ci = None
    if stats["n"] >= 2:
        half = t_quantile(stats["n"] - 1) * stats["std"] / math.sqrt(stats["n"])
        ci = [stats["mean"] - half, stats["mean"] + half]
    base = summary([reference[s] for s in seeds])["mean"]
    relative = None if not seeds or not base else 100.0 * stats["mean"] / base
    return {"n": stats["n"], "seeds": seeds, "mean": stats["mean"], "std": stats["std"], "ci95": ci,
            "relative_pct": relative, "differences": differences}  # fmt: skip


def verdict(ci95: Sequence[float] | None, lower_is_better: bool) -> str:
    """What the interval says about the arm against the reference (see the module docstring)."""
    if ci95 is None:
        return "n/a (fewer than 2 paired seeds)"
    low, high = ci95
    if low <= 0 <= high:
        return "no detectable difference"
    better = high < 0 if lower_is_better else low > 0
    return "helps" if better else "hurts"
