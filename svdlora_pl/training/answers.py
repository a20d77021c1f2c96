"""Final-answer extraction, numeric normalization and an exact-match metric.

A generated solution is scored by pulling one *final answer* out of it and comparing that answer with the reference
answer.  The rules are:

Extraction (:func:`extract_final_answer`), first rule that yields something wins:

1. **Boxed.**  The content of the last complete ``\\boxed{...}`` (Qwen-Math style).  Braces are matched, so
   ``\\boxed{\\frac{1}{6}}`` gives ``\\frac{1}{6}``.  An unclosed (truncated) or empty box is ignored.
2. **Answer phrase.**  The text after the last ``answer is`` or ``answer:`` (case-insensitive; ``The final answer
   is:`` also works), up to the end of the sentence: a ``.`` followed by whitespace or the end of the text, a ``!``,
   a ``?`` or a line break.  A ``.`` between digits is a decimal point, not the end of the sentence, so ``The answer
   is 0.5.`` gives ``0.5``.  When that sentence as a whole is not a number but contains one, the last number-like
   token in it (as in rule 3) is the answer, so ``The answer is approximately 0.17.`` gives ``0.17``; a sentence
   with no number in it is kept whole (textual answers such as ``The answer is yes.``).
3. **Last number.**  The last number-like token in the text: an integer (``-3``, ``1,000``), a decimal (``0.1667``,
   ``.5``), a fraction ``a/b``, a percentage (``12.5%`` or ``12.5\\%``) or a LaTeX fraction ``\\frac{a}{b}`` /
   ``\\dfrac{a}{b}`` / ``\\tfrac{a}{b}``.  A ``.`` is only a decimal point when a digit follows it, so a
   sentence-final period is never part of the token.  A leading ``-``/``+`` counts as a sign only when it is
   directly attached to the number and does not follow a word character or a closing bracket (``5-3`` yields
   ``3``, ``x = -3`` yields ``-3``).  Digits glued to a preceding letter (``X1``) are not numbers.

   If nothing is found, the result is ``None``.

Numbers (:func:`parse_number`) are parsed to an exact :class:`fractions.Fraction` after removing surrounding
whitespace, ``$...$`` / ``$$...$$`` / ``\\(...\\)`` / ``\\[...\\]`` math delimiters, LaTeX spacing commands (``\\,``
``\\;`` ``\\!``), the LaTeX thousands separator ``{,}`` and one trailing period.  Accepted forms, each optionally
signed (``-``, ``+`` or the Unicode minus ``−``): integers with optional ``,`` thousands separators in groups of
three (``1,000``; ``1,5`` is rejected), decimals, ``a/b``, LaTeX fractions whose numerator and denominator are
themselves plain numbers, and percentages (``12.5%`` is ``1/8``).  A zero denominator or anything else gives
``None``.

Matching (:func:`answers_match`) extracts the final answer from both the prediction and the reference (so the
reference may be a worked solution or a bare answer; a text with no extractable answer is used whole).  The pair
matches when **either** of two rules says so:

* **The package's rule.**  If both answers parse as numbers, they match when the values are exactly equal, or when
  the prediction was written as a decimal or percentage with ``d >= 2`` decimal places *of the value* (``0.17`` has
  2, ``33%`` = 0.33 has 2, ``16.7%`` = 0.167 has 3) and the reference rounded to ``d`` places (half away from zero)
  equals the prediction.  So ``0.167`` and ``16.7%`` match ``1/6``, but ``0.2`` does not: one-place decimals must
  be exact.  Otherwise the answers are compared as strings after normalization: math delimiters removed,
  lower-cased, runs of whitespace collapsed to one space, surrounding whitespace and one trailing period removed.
  Empty answers never match.
* **math-verify.**  Hugging Face's LaTeX-aware symbolic checker finds them equal.  It reads the reference's final
  answer as ``\\boxed{answer}`` and, of the prediction, the last complete box, else the sentence after the last
  ``answer is`` / ``answer:``, else the whole text; so ``\\boxed{2^{-3}}``, ``\\boxed{\\left(\\frac{1}{2}\\right)^3}``
  and ``\\boxed{\\frac{1}{8} = 0.125}`` match ``1/8``.  It compares decimals to 6 places, without the rounding rule.
  It is imported on the first match, not with this module.  Its ``SIGALRM`` time limit (a few seconds a parse or
  comparison) is used in the main thread only; other threads run without one.  An error, a time-out or a missing
  ``math_verify`` package means "no match by math-verify": matching never raises.

:class:`AnswerExactMatch` accumulates the fraction of matching pairs as a
:mod:`torchmetrics` metric.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from typing import Any

import torch
from torchmetrics import Metric

__all__ = ["AnswerExactMatch", "answers_match", "extract_final_answer", "parse_number"]

logger = logging.getLogger(__name__)
_MATH_VERIFY_TIMEOUT_S = 5  # seconds a math-verify parse or comparison may take (main thread only)

# --- regex building blocks (each defined once, composed below) -------------

_SIGN = "[-+\u2212]"
# Integer part: thousands-separated groups of three, or a plain digit run.
_INTEGER = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)"
# Unsigned decimal; the point must be followed by a digit.
_UNSIGNED = rf"(?:{_INTEGER}(?:\.\d+)?|\.\d+)"
_SIGNED = rf"\s*{_SIGN}?\s*{_UNSIGNED}\s*"
_LATEX_FRAC = rf"\\[dt]?frac\s*\{{(?P<frac_num>{_SIGNED})\}}\s*\{{(?P<frac_den>{_SIGNED})\}}"
_SLASH_FRAC = rf"(?P<slash_num>{_UNSIGNED})\s*/\s*(?P<slash_den>{_UNSIGNED})"
_PERCENT = rf"(?P<percent>{_UNSIGNED})\s*\\?%"
_DECIMAL = rf"(?P<decimal>{_UNSIGNED})"
_NUMBER_BODY = f"(?:{_LATEX_FRAC}|{_SLASH_FRAC}|{_PERCENT}|{_DECIMAL})"

# A whole string that is exactly one (optionally signed) number.
_FULL_NUMBER_RE = re.compile(rf"(?P<sign>{_SIGN})?\s*{_NUMBER_BODY}")
# A number-like token inside running text (see rule 3 in the module docstring).
_NUMBER_TOKEN_RE = re.compile(rf"(?:(?<![\w.)\]}}])(?P<sign>{_SIGN})|(?<![\w.])){_NUMBER_BODY}")

_BOXED_RE = re.compile(r"\\boxed\s*\{")
_ANSWER_PHRASE_RE = re.compile(
    r"\banswer(?:\s+is\b\s*:?|\s*:)\s*(?P<answer>[^\n]*?)\s*(?=\.(?:\s|$)|[!?\n]|$)",
    re.IGNORECASE,
)
_MATH_DELIMITERS_RE = re.compile(
    r"^(?:\$\$(?P<a>[^$]*)\$\$|\$(?P<b>[^$]*)\$|\\\((?P<c>.*)\\\)|\\\[(?P<d>.*)\\\])$", re.DOTALL
)
_LATEX_NOISE_RE = re.compile(r"\\[,;!]|\{,\}")
_WHITESPACE_RE = re.compile(r"\s+")


@dataclass(frozen=True)
class _Number:
    """A parsed answer: its exact value and, for decimals/percentages, its decimal places."""

    value: Fraction
    places: int | None  # None for fractions (no rounding tolerance)


# --- extraction -----------------------------------------------------------


def _boxed_content(text: str) -> str | None:
    """Content of the last complete, non-empty ``\\boxed{...}``."""
    for match in reversed(list(_BOXED_RE.finditer(text))):
        depth = 1
        for index in range(match.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[index], 0)
            if depth == 0:
                content = text[match.end() : index].strip()
                if content:
                    return content
                break
    return None


def _answer_sentence(text: str) -> str | None:
    """The sentence following the last non-empty ``answer is`` / ``answer:``."""
    for match in reversed(list(_ANSWER_PHRASE_RE.finditer(text))):
        if match.group("answer"):
            return match.group("answer")
    return None


def _answer_phrase_content(text: str) -> str | None:
    """Sentence following the last non-empty ``answer is`` / ``answer:``.

    A sentence that does not parse as a number gives its last number-like token
    instead ("approximately 0.17" -> "0.17"), or itself when it holds none.
    """
    answer = _answer_sentence(text)
    if answer is None or _parse(answer) is not None:
        return answer
    return _last_number_token(answer) or answer


def _last_number_token(text: str) -> str | None:
    """The last number-like token in running text."""
    tokens = [match.group(0) for match in _NUMBER_TOKEN_RE.finditer(text)]
    return tokens[-1].strip() if tokens else None


def extract_final_answer(text: str) -> str | None:
    """Return the final answer of a generated solution, or ``None``.

    Tries, in order: the last ``\\boxed{...}``, the sentence after the last
    ``answer is`` / ``answer:``, the last number-like token.

    >>> extract_final_answer(r"so $P = \\boxed{\\frac{1}{6}}$")
    '\\\\frac{1}{6}'
    >>> extract_final_answer("Thus the answer is 1/6. Done")
    '1/6'
    >>> extract_final_answer("We get 3 heads out of 4 flips, i.e. 0.75.")
    '0.75'
    >>> extract_final_answer("no idea") is None
    True
    """
    for extractor in (_boxed_content, _answer_phrase_content, _last_number_token):
        answer = extractor(text)
        if answer is not None:
            return answer
    return None


# --- numeric parsing ------------------------------------------------------


def _strip_math_delimiters(text: str) -> str:
    """Remove surrounding whitespace and one pair of enclosing math delimiters."""
    text = text.strip()
    match = _MATH_DELIMITERS_RE.match(text)
    if match is None:
        return text
    return next(group for group in match.groups() if group is not None).strip()


def _decimal(text: str) -> Fraction:
    """Exact value of an unsigned decimal literal, thousands separators allowed."""
    return Fraction(text.replace(",", ""))


def _decimal_places(text: str) -> int:
    """Number of digits after the decimal point of a decimal literal."""
    _, _, fraction_digits = text.partition(".")
    return len(fraction_digits)


def _signed_decimal(text: str) -> Fraction:
    """Exact value of a signed decimal (a LaTeX-fraction numerator/denominator)."""
    text = text.strip()
    negative = text[0] in "-\u2212"
    magnitude = _decimal(text.lstrip("-+\u2212 \t"))
    return -magnitude if negative else magnitude


def _ratio(numerator: Fraction, denominator: Fraction) -> Fraction | None:
    """``numerator / denominator``, or ``None`` for a zero denominator."""
    return None if denominator == 0 else numerator / denominator


def _parse(text: str) -> _Number | None:
    """Parse one answer string to an exact value plus its written precision."""
    cleaned = _LATEX_NOISE_RE.sub("", _strip_math_delimiters(text))
    cleaned = cleaned.removesuffix(".").strip()
    match = _FULL_NUMBER_RE.fullmatch(cleaned)
    if match is None:
        return None
    groups = match.groupdict()
    places: int | None = None
    if groups["frac_num"] is not None:
        value = _ratio(_signed_decimal(groups["frac_num"]), _signed_decimal(groups["frac_den"]))
    elif groups["slash_num"] is not None:
        value = _ratio(_decimal(groups["slash_num"]), _decimal(groups["slash_den"]))
    elif groups["percent"] is not None:
        value = _decimal(groups["percent"]) / 100
        places = _decimal_places(groups["percent"]) + 2
    else:
        value = _decimal(groups["decimal"])
        places = _decimal_places(groups["decimal"])
    if value is None:
        return None
    if groups["sign"] in ("-", "\u2212"):
        value = -value
    return _Number(value=value, places=places)


def parse_number(text: str) -> Fraction | None:
    """Parse one answer string to an exact rational, or ``None``.

    >>> parse_number("12.5%")
    Fraction(1, 8)
    >>> parse_number(r"$-\\dfrac{3}{8}$")
    Fraction(-3, 8)
    >>> parse_number("1,000")
    Fraction(1000, 1)
    >>> parse_number("about 3") is None
    True
    """
    number = _parse(text)
    return None if number is None else number.value


# --- matching -------------------------------------------------------------


def _round_half_away(value: Fraction, places: int) -> Fraction:
    """Round to ``places`` decimal places, halves away from zero, exactly."""
    scale = 10**places
    magnitude = int(abs(value) * scale + Fraction(1, 2))
    return Fraction(magnitude if value >= 0 else -magnitude, scale)


def _numbers_match(prediction: _Number, reference: _Number) -> bool:
    if prediction.value == reference.value:
        return True
    if prediction.places is None or prediction.places < 2:
        return False
    return _round_half_away(reference.value, prediction.places) == prediction.value


def _normalize_text(text: str) -> str:
    """Lower-case, collapse whitespace, drop math delimiters and one trailing period."""
    text = _WHITESPACE_RE.sub(" ", _strip_math_delimiters(text).lower()).strip()
    return text.removesuffix(".").strip()


def _package_rule_match(predicted: str, expected: str) -> bool:
    """The package's own rule on two extracted answers: numbers with rounding, else normalized strings."""
    predicted_number, expected_number = _parse(predicted), _parse(expected)
    if predicted_number is not None and expected_number is not None:
        return _numbers_match(predicted_number, expected_number)
    predicted_text, expected_text = _normalize_text(predicted), _normalize_text(expected)
    return bool(predicted_text) and predicted_text == expected_text


_MathVerify = tuple[Callable[..., list[Any]], Callable[..., bool], type[BaseException]]


@cache
def _math_verify() -> _MathVerify | None:
    """``(parse, verify, TimeoutException)`` of math-verify, imported on first use; ``None`` if it is missing."""
    try:
        from math_verify import parse, verify
        from math_verify.errors import TimeoutException
    except ImportError:
        logger.warning("math-verify is not installed: answers are matched with the package's own rule only")
        return None
    return parse, verify, TimeoutException


def _math_verify_span(prediction: str) -> str:
    """The part of a generated solution math-verify reads: last box, else answer sentence, else all of it."""
    boxed = _boxed_content(prediction)
    if boxed is not None:
        return rf"\boxed{{{boxed}}}"
    return _answer_sentence(prediction) or prediction


def _math_verify_match(prediction: str, expected: str) -> bool:
    """Whether math-verify finds the prediction equal to the reference's final answer; ``False`` on any failure."""
    span, gold_text = _math_verify_span(prediction).strip(), _strip_math_delimiters(expected)
    loaded = _math_verify() if span and gold_text else None
    if loaded is None:
        return False
    parse, verify, timeout_error = loaded
    # math-verify times out with signal.alarm, which only the main thread may use.
    timeout = _MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    try:
        gold = parse(rf"\boxed{{{gold_text}}}", parsing_timeout=timeout, raise_on_error=False)
        answer = parse(span, parsing_timeout=timeout, raise_on_error=False) if gold else []
        return bool(answer) and bool(verify(gold, answer, timeout_seconds=timeout, raise_on_error=False))
    except (Exception, timeout_error):  # a checker failure is "no match", never an error
        logger.debug("math-verify failed on %r vs %r", span, gold_text, exc_info=True)
        return False


def answers_match(prediction: str, reference: str) -> bool:
    """Whether a generated solution's final answer matches the reference.

    True when the package's rule (exact value, decimals rounded to the digits written, or normalized text) or
    math-verify says the answers are equal; see the module docstring.

    >>> answers_match(r"... so the probability is \\boxed{\\frac{1}{2}}", "0.5")
    True
    >>> answers_match("The answer is 0.17.", "1/6")
    True
    >>> answers_match("The answer is 0.2.", "1/6")
    False
    >>> answers_match(r"The answer is $\\boxed{2^{-3}}$.", "The answer is 1/8.")
    True
    """
    predicted = extract_final_answer(prediction) or prediction
    expected = extract_final_answer(reference) or reference
    return _package_rule_match(predicted, expected) or _math_verify_match(prediction, expected)


# --- metric ---------------------------------------------------------------


class AnswerExactMatch(Metric):
    """Fraction of generated solutions whose final answer matches the reference.

    Each pair is scored with :func:`answers_match` (see the module docstring
    for the extraction and normalization rules).  States are summed across
    processes, so the metric is correct under DDP.

    Example:
        >>> metric = AnswerExactMatch()
        >>> metric.update(["The answer is 1/6.", r"\\boxed{0.3}"], ["1/6", "1/4"])
        >>> metric.update(["Answer: 25%"], ["0.25"])
        >>> metric.compute()
        tensor(0.6667)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: torch.Tensor
    total: torch.Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], targets: Sequence[str]) -> None:
        """Score a batch of generated solutions against their references."""
        if isinstance(preds, str) or isinstance(targets, str):
            raise TypeError("preds and targets must be sequences of strings, not a single string")
        if len(preds) != len(targets):
            raise ValueError(
                f"preds and targets must have the same length, got {len(preds)} preds and {len(targets)} targets"
            )
        self.correct += sum(answers_match(pred, target) for pred, target in zip(preds, targets, strict=True))
        self.total += len(preds)

    def compute(self) -> torch.Tensor:
        """Accuracy as a float tensor; 0 when nothing has been scored yet."""
        return self.correct.float() / self.total.clamp(min=1)
