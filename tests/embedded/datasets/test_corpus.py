"""Tests for the bundled pretraining corpus and its deterministic generator."""

from __future__ import annotations

import json
import math
import random
import re
from fractions import Fraction
from pathlib import Path

import pytest

from svdlora_pl.embedded.datasets import BUNDLED_TRAIN, BUNDLED_VAL, corpus
from svdlora_pl.embedded.datasets.corpus import CORPUS_HELDOUT, CORPUS_TRAIN, generate_corpus, read_paragraphs
from svdlora_pl.embedded.datasets.corpus_topics import TOPICS, words


@pytest.fixture(scope="module")
def train() -> list[str]:
    return read_paragraphs(CORPUS_TRAIN)


@pytest.fixture(scope="module")
def heldout() -> list[str]:
    return read_paragraphs(CORPUS_HELDOUT)


@pytest.fixture(scope="module")
def text(train: list[str], heldout: list[str]) -> str:
    return "\n".join(train + heldout)


@pytest.fixture(scope="module")
def qa() -> list[dict[str, str]]:
    return [json.loads(line) for path in (BUNDLED_TRAIN, BUNDLED_VAL) for line in path.read_text().splitlines()]


def _sentences(text: str) -> set[str]:
    """Sentences with every number masked, so a template shows up whatever numbers it was filled with."""
    masked = re.sub(r"\d+", "#", text)
    return {s.strip() for s in re.split(r"(?<=[.?!])\s+|\n", masked) if s.strip()}


def test_regeneration_matches_committed_files(tmp_path: Path) -> None:
    corpus.main(["--output_dir", str(tmp_path), "--seed", "0"])
    assert (tmp_path / CORPUS_TRAIN.name).read_bytes() == CORPUS_TRAIN.read_bytes()
    assert (tmp_path / CORPUS_HELDOUT.name).read_bytes() == CORPUS_HELDOUT.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CORPUS_TRAIN.name, CORPUS_HELDOUT.name])


def test_generate_is_deterministic_and_seed_dependent() -> None:
    assert generate_corpus(30, 5, seed=3) == generate_corpus(30, 5, seed=3)
    assert generate_corpus(30, 5, seed=3) != generate_corpus(30, 5, seed=4)


def test_file_format_size_and_disjoint_splits(train: list[str], heldout: list[str]) -> None:
    assert (len(train), len(heldout)) == (corpus.DEFAULT_N_TRAIN, corpus.DEFAULT_N_HELDOUT)
    assert 100_000 < CORPUS_TRAIN.stat().st_size < 1_000_000  # a few hundred KB
    for path in (CORPUS_TRAIN, CORPUS_HELDOUT):
        raw = path.read_bytes().decode("ascii")
        assert raw.endswith(".\n") and "\n\n" not in raw and "  " not in raw
    assert len(set(train)) == len(train) and len(set(heldout)) == len(heldout)
    assert not set(train) & set(heldout)


def test_no_question_answer_or_chat_text(text: str, qa: list[dict[str, str]]) -> None:
    assert "?" not in text and "<|" not in text and "The answer is" not in text
    assert not re.search(r"\b(?:question|answer|user|assistant|system)\b", text, flags=re.IGNORECASE)
    qa_sentences = set().union(*(_sentences(r["question"] + " " + r["answer"]) for r in qa))
    shared = _sentences(text) & qa_sentences
    assert not shared, sorted(shared)[:5]


def test_covers_the_vocabulary_of_the_qa_answers(text: str, qa: list[dict[str, str]]) -> None:
    corpus_words = set(re.findall(r"[a-z]+", text.lower()))
    answer_words = [w for r in qa for w in re.findall(r"[a-z]+", r["answer"].lower())]
    covered = sum(w in corpus_words for w in answer_words) / len(answer_words)
    assert covered > 0.85  # measured 0.905; "answer" itself is deliberately absent


def test_words_spells_numbers() -> None:
    expected = {0: "zero", 7: "seven", 13: "thirteen", 20: "twenty", 42: "forty-two", 100: "one hundred"}
    expected |= {315: "three hundred and fifteen", 999: "nine hundred and ninety-nine"}
    assert {n: words(n) for n in expected} == expected


def _integer_value(expression: str) -> int:
    """Value of ``a + b * c - d``-style integer arithmetic (products first), computed term by term."""
    total, sign = 0, 1
    for term in re.split(r" ([-+]) ", expression):
        if term in "+-":
            sign = 1 if term == "+" else -1
        else:
            total += sign * math.prod(int(factor) for factor in term.split(" * "))
    return total


def test_stated_arithmetic_is_true(text: str) -> None:
    """Every equation of a few kinds, re-checked independently with Python integers and Fractions."""
    checks = 0
    for expression, value in re.findall(r"(?<![/\d] )(?<![/\d])((?:\d+ [-+*] )+\d+) = (\d+)\b(?!/)", text):
        assert _integer_value(expression) == int(value), expression
        checks += 1
    for n, f in re.findall(r"(\d+)! = (\d+)", text):
        assert math.factorial(int(n)) == int(f)
        checks += 1
    for n, k, c in re.findall(r"C\((\d+),(\d+)\) = (\d+)", text):
        assert math.comb(int(n), int(k)) == int(c)
        checks += 1
    for n, p in re.findall(r"2\^(\d+) = (\d+)", text):
        assert 2 ** int(n) == int(p)
        checks += 1
    for p, q in re.findall(r"(\d+/\d+) reduces to (\d+/\d+)", text):
        assert Fraction(p) == Fraction(q) and str(Fraction(q)) == q  # equal, and stated in lowest terms
        checks += 1
    for x, op, y, z in re.findall(r"(\d+/\d+) ([-+*]) (\d+/\d+) = (\d+/\d+)", text):
        expected = {"+": Fraction(x) + Fraction(y), "-": Fraction(x) - Fraction(y), "*": Fraction(x) * Fraction(y)}
        assert expected[op] == Fraction(z)
        checks += 1
    for n, sq in re.findall(r"The square of (\d+) is (\d+)", text):
        assert int(n) ** 2 == int(sq)
        checks += 1
    for n, spelled in re.findall(r"Written in words, (\d+) is ([a-z -]+)\.", text):
        assert words(int(n)) == spelled
        checks += 1
    assert checks > 500  # 716 equations in the committed corpus


def test_integer_value_helper() -> None:
    assert _integer_value("2 + 3 * 4 - 5") == 9 and _integer_value("7") == 7


def test_every_topic_is_represented(text: str) -> None:
    corpus_sentences = _sentences(text)
    for topic in TOPICS:
        drawn = set().union(*(_sentences(" ".join(topic(random.Random(seed)))) for seed in range(20)))
        assert drawn & corpus_sentences, topic.__name__


def test_write_paragraphs_is_atomic_and_round_trips(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old\n", encoding="utf-8")
    corpus.write_paragraphs(target, ["One line.", "Two lines."])
    assert target.read_text(encoding="utf-8") == "One line.\nTwo lines.\n"
    assert read_paragraphs(target) == ["One line.", "Two lines."]
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
