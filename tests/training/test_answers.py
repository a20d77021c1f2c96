"""Tests for final-answer extraction, numeric normalization and AnswerExactMatch."""

from __future__ import annotations

import doctest
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
