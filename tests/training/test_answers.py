"""Tests for final-answer extraction, numeric normalization and AnswerExactMatch."""

from __future__ import annotations

import doctest
import subprocess
import sys
import threading
from fractions import Fraction

import pytest
import torch

from svdlora_pl.training import answers
from svdlora_pl.training.answers import AnswerExactMatch, answers_match, extract_final_answer, parse_number


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # rule 1: last complete \boxed{...}, braces balanced
        (r"so $P = \boxed{\frac{1}{6}}$.", r"\frac{1}{6}"),
        (r"first \boxed{2}, then \boxed{ 3/8 } final", "3/8"),
        (r"\boxed{\dfrac{5}{36}} and a truncated \boxed{\frac{1}{", r"\dfrac{5}{36}"),
        (r"empty \boxed{} but 7 at the end", "7"),
        (r"The answer is 4, i.e. \boxed{4}.", "4"),
        # rule 2: sentence after the last "answer is" / "Answer:"
        ("The answer is 1/6.", "1/6"),
        ("Answer: 25%", "25%"),
        ("The answer is 0.5. Then we stop.", "0.5"),
        ("the ANSWER IS -3!", "-3"),
        ("The final answer is: $\\frac{1}{6}$. I hope it is correct.", "$\\frac{1}{6}$"),
        ("Answer:\n 7", "7"),
        ("An answer is 2. Final answer: 5", "5"),
        # rule 2 fallback: a phrase that is not a number gives its last number-like token
        ("The answer is approximately 0.17.", "0.17"),
        ("The answer is about 1/6 or so", "1/6"),
        (r"The answer is $P = \frac{1}{6}$.", r"\frac{1}{6}"),
        ("The answer is 3 heads and 2 tails.", "2"),
        ("The answer is independent events.", "independent events"),
        # rule 3: last number-like token
        ("We get 3 heads in 4 flips, so 0.75.", "0.75"),
        ("The probability is 1/6.", "1/6"),
        ("There are 1,000 outcomes.", "1,000"),
        ("so x = -3 here", "-3"),
        ("compute 5-3", "3"),
        ("1 - 1/6", "1/6"),
        ("about 12.5% of the time", "12.5%"),
        (r"about 12.5\% of the time", r"12.5\%"),
        ("It is .5.", ".5"),
        (r"so p = -\tfrac{2}{3} overall", r"-\tfrac{2}{3}"),
        ("variables X1 and y2 only", None),
        ("no number at all", None),
        ("", None),
    ],
)
def test_extract_final_answer(text: str, expected: str | None) -> None:
    assert extract_final_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("42", Fraction(42)),
        ("-3", Fraction(-3)),
        ("+3", Fraction(3)),
        ("\u22122", Fraction(-2)),
        ("0.1667", Fraction(1667, 10000)),
        (".5", Fraction(1, 2)),
        ("0.5.", Fraction(1, 2)),
        ("3/8", Fraction(3, 8)),
        (" 3 / 8 ", Fraction(3, 8)),
        (r"\frac{1}{6}", Fraction(1, 6)),
        (r"\dfrac{5}{36}", Fraction(5, 36)),
        (r"\tfrac{-1}{2}", Fraction(-1, 2)),
        (r"-\frac{1}{2}", Fraction(-1, 2)),
        ("12.5%", Fraction(1, 8)),
        (r"25\%", Fraction(1, 4)),
        ("1,000", Fraction(1000)),
        ("1,234,567.5", Fraction(2469135, 2)),
        ("1{,}000", Fraction(1000)),
        ("$-3$", Fraction(-3)),
        (r"$$\frac{1}{6}$$", Fraction(1, 6)),
        (r"\(0.25\)", Fraction(1, 4)),
        ("  7  ", Fraction(7)),
        ("1,5", None),
        ("1/0", None),
        (r"\frac{\pi}{2}", None),
        ("about 3", None),
        ("abc", None),
        ("", None),
    ],
)
def test_parse_number(text: str, expected: Fraction | None) -> None:
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("0.5", "1/2", True),
        ("0.17", "1/6", True),
        ("0.167", "1/6", True),
        ("16.7%", "1/6", True),
        ("0.2", "1/6", False),
        ("0.16", "1/6", False),
        ("1/3", "2/6", True),
        ("33%", "1/3", True),
        ("34%", "1/3", False),
        ("0.13", "1/8", True),  # ties round half away from zero
        ("0.12", "1/8", False),
        ("-0.17", "-1/6", True),
        ("0.3", "0.3", True),
        ("1/6", "0.17", False),  # rounding tolerance applies to the prediction only
        ("1,000", "1000", True),
        (r"So the probability is \boxed{\frac{1}{6}}.", "1/6", True),
        ("The answer is 1/6.", r"There are 6 faces, so $P = \boxed{\dfrac{1}{6}}$", True),
        ("Answer: 25%", "Half of half, i.e. 1/4.", True),
        ("The answer is 1/5.", "1/6", False),
        ("The answer is approximately 0.17.", "1/6", True),
        ("The answer is about 1/6 or so", "1/6", True),
        ("The answer is roughly 0.2.", "1/6", False),
        ("The answer is Yes.", "yes", True),
        ("The answer is   Independent  events.", "independent events", True),
        ("The answer is yes.", "no", False),
        ("The answer is yes.", "1/2", False),
        ("", "", False),
    ],
)
def test_answers_match(prediction: str, reference: str, expected: bool) -> None:
    assert answers_match(prediction, reference) is expected


# Realistic generated solutions (Qwen2.5-Math style, chat text, plain prose) against bundled-style references: both
# rules of answers_match, math-verify (symbolic LaTeX) and the package's rounding rule, with negatives for each.
_REFERENCE_1_6 = "Of the 36 equally likely outcomes for two dice, 6 have sum 7, so 6/36 = 1/6. The answer is 1/6."
_GENERATED = [
    # math-verify: symbolic LaTeX the package's own parser cannot read
    (
        "We draw 2 of the 52 cards; 4 of the C(52,2) pairs... wait, C(4,2) = 6 pairs are both aces.\n"
        r"So the probability is $\boxed{\frac{\binom{4}{2}}{\binom{52}{2}}}$.",
        "The probability is 4/52 * 3/51 = 12/2652 = 1/221. The answer is 1/221.",
        True,
    ),
    (r"Each flip is heads with probability $\frac{1}{2}$, so three heads: $\boxed{2^{-3}}$.", "1/8", True),
    (r"The answer is \boxed{\left(\frac{1}{2}\right)^3}.", "1/8", True),
    (r"Half of the outcomes are even, so the probability is \boxed{\frac{1}{2} = 0.5}.", "1/2", True),
    (r"By the complement rule, $P = \boxed{1 - \frac{5}{6}}$.", _REFERENCE_1_6, True),
    (r"The answer is $\left(\frac{1}{2}\right)^3$.", "The answer is 1/8.", True),
    (
        "assistant\nThe die is fair, so $P(6) = \\frac{1}{6}$.\nThe final answer is $\\frac{1}{6}$.",
        r"\frac{1}{6}",
        True,
    ),
    (r"There are 10 of 32 sequences: $\boxed{\dfrac{10}{32}}$", "5/16", True),
    # the package's rounding rule, which math-verify lacks (it compares decimals to 6 places)
    ("The probability is 1/6, which is approximately 0.167.", _REFERENCE_1_6, True),
    (r"So the chance is about $16.67\%$.", _REFERENCE_1_6, True),
    (r"Therefore the probability is $\boxed{0.1667}$.", "1/6", True),
    ("The answer is approximately 0.17.", r"\frac{1}{6}", True),  # two places are enough
    (r"It is 12.5\%, i.e. \boxed{12.5\%}", "1/8", True),
    # negatives
    (r"Only one face of seven counts: $\boxed{\frac{1}{7}}$.", "1/6", False),
    (r"Two independent halves: \boxed{2^{-2}}", "1/8", False),
    ("The answer is roughly 0.2.", _REFERENCE_1_6, False),  # one place must be exact
    ("So the probability is about 0.16.", "1/6", False),
    (r"\boxed{16\%}", "1/6", False),
    (r"The answer is \boxed{\frac{1}{6}}", "0.17", False),  # rounding applies to the prediction only
    ("I am not sure how to solve this problem.", "1/6", False),
    ("", "1/6", False),
    (r"The answer is \boxed{}", "1/6", False),
]


@pytest.mark.parametrize(("prediction", "reference", "expected"), _GENERATED)
def test_answers_match_generated_solutions(prediction: str, reference: str, expected: bool) -> None:
    assert answers_match(prediction, reference) is expected


def test_math_verify_works_outside_the_main_thread() -> None:
    # math-verify's SIGALRM time limit would raise there; it must run without one instead.
    results: list[bool] = []
    worker = threading.Thread(target=lambda: results.append(answers_match(r"\boxed{2^{-3}}", "1/8")))
    worker.start()
    worker.join()
    assert results == [True]


def test_math_verify_failure_falls_back_to_the_package_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> list[object]:
        raise RuntimeError("checker bug")

    monkeypatch.setattr(answers, "_math_verify", lambda: (broken, broken, RuntimeError))
    assert answers_match(r"\boxed{2^{-3}}", "1/8") is False
    assert answers_match(r"\boxed{0.125}", "1/8") is True
    monkeypatch.setattr(answers, "_math_verify", lambda: None)  # math-verify not installed
    assert answers_match(r"\boxed{2^{-3}}", "1/8") is False
    assert answers_match(r"\boxed{0.167}", "1/6") is True


def test_import_does_not_load_math_verify() -> None:
    code = "import sys, svdlora_pl.training.answers; print('math_verify' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_metric_accumulates_across_updates_and_resets() -> None:
    metric = AnswerExactMatch()
    metric.update(["The answer is 1/6.", r"\boxed{0.3}"], ["1/6", "1/4"])
    metric.update(["Answer: 25%", "0.5"], ["0.25", "1/2"])
    assert metric.correct.item() == 3
    assert metric.total.item() == 4
    result = metric.compute()
    assert result.dtype == torch.float32
    assert result.item() == pytest.approx(0.75)

    metric.reset()
    assert metric.total.item() == 0
    metric.update(["7"], ["8"])
    assert metric.compute().item() == 0.0


def test_metric_compute_without_updates_is_zero() -> None:
    metric = AnswerExactMatch()
    with pytest.warns(UserWarning):  # torchmetrics warns on compute() before update()
        assert metric.compute().item() == 0.0


def test_metric_flags_and_states() -> None:
    assert AnswerExactMatch.higher_is_better is True
    assert AnswerExactMatch.is_differentiable is False
    assert AnswerExactMatch.full_state_update is False
    metric = AnswerExactMatch()
    assert set(metric.metric_state) == {"correct", "total"}


def test_metric_rejects_length_mismatch() -> None:
    metric = AnswerExactMatch()
    with pytest.raises(ValueError, match="same length.*2 preds and 1 targets"):
        metric.update(["1", "2"], ["1"])
    assert metric.total.item() == 0


def test_metric_rejects_bare_string() -> None:
    with pytest.raises(TypeError, match="sequences of strings"):
        AnswerExactMatch().update("1/2", "1/2")


def test_docstring_examples() -> None:
    result = doctest.testmod(answers)
    assert result.attempted > 0
    assert result.failed == 0
