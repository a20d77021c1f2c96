"""Tests for the bundled probability QA dataset and its deterministic generator."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections import Counter
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import pytest

from svdlora_pl.embedded.datasets import BUNDLED_TRAIN, BUNDLED_VAL, generate, probability

FIELDS = {"question", "answer", "final_answer", "topic"}
EXPECTED_TOPICS = {"dice", "coins", "cards", "urns", "binomial", "bayes", "expectation"}


def _load(path: Path) -> list[dict[str, str]]:
    """Read a JSONL file into a list of dicts."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def train() -> list[dict[str, str]]:
    return _load(BUNDLED_TRAIN)


@pytest.fixture(scope="module")
def val() -> list[dict[str, str]]:
    return _load(BUNDLED_VAL)


@pytest.fixture(scope="module")
def records(train: list[dict[str, str]], val: list[dict[str, str]]) -> list[dict[str, str]]:
    return train + val


def _by_topic(records: list[dict[str, str]], topic: str) -> list[dict[str, str]]:
    return [r for r in records if r["topic"] == topic]


def test_regeneration_matches_committed_files(tmp_path: Path) -> None:
    probability.main(["--output_dir", str(tmp_path), "--seed", "0"])
    assert (tmp_path / BUNDLED_TRAIN.name).read_bytes() == BUNDLED_TRAIN.read_bytes()
    assert (tmp_path / BUNDLED_VAL.name).read_bytes() == BUNDLED_VAL.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([BUNDLED_TRAIN.name, BUNDLED_VAL.name])


def test_generate_is_deterministic_and_seed_dependent() -> None:
    assert generate(40, 10, seed=3) == generate(40, 10, seed=3)
    assert generate(40, 10, seed=3) != generate(40, 10, seed=4)
    train, val = generate(probability.DEFAULT_N_TRAIN, probability.DEFAULT_N_VAL, seed=0)
    assert train == _load(BUNDLED_TRAIN) and val == _load(BUNDLED_VAL)


def test_file_format(train: list[dict[str, str]], val: list[dict[str, str]]) -> None:
    assert len(train) == 400 and len(val) == 50
    for path in (BUNDLED_TRAIN, BUNDLED_VAL):
        text = path.read_bytes().decode("utf-8")
        assert text.endswith("\n") and not text.endswith("\n\n")
        for line in text.splitlines():
            assert line == json.dumps(json.loads(line), ensure_ascii=False, sort_keys=True)


def test_record_schema_and_answer_suffix(records: list[dict[str, str]]) -> None:
    for r in records:
        assert set(r) == FIELDS and all(isinstance(v, str) and v for v in r.values())
        assert r["answer"].endswith(f"The answer is {r['final_answer']}.")
        assert r["answer"].count("The answer is") == 1
        assert re.fullmatch(r"-?\d+(/\d+)?", r["final_answer"])
        value = Fraction(r["final_answer"])
        assert probability.fmt(value) == r["final_answer"]  # reduced form
        if r["topic"] != "expectation":
            assert 0 <= value <= 1, r


def test_topics_are_balanced(train: list[dict[str, str]], val: list[dict[str, str]]) -> None:
    for split in (train, val):
        counts = Counter(r["topic"] for r in split)
        assert set(counts) == EXPECTED_TOPICS
        assert max(counts.values()) - min(counts.values()) <= 1


def test_train_val_disjoint_and_unique(train: list[dict[str, str]], val: list[dict[str, str]]) -> None:
    train_q = [r["question"] for r in train]
    val_q = [r["question"] for r in val]
    assert len(set(train_q)) == len(train_q) and len(set(val_q)) == len(val_q)
    assert not set(train_q) & set(val_q)


def _first_int(pattern: str, text: str) -> int:
    """Return the first non-empty group of ``pattern`` in ``text`` as an int."""
    match = re.search(pattern, text)
    assert match, (pattern, text)
    return int(next(g for g in match.groups() if g))


def _dice_oracle(question: str) -> Fraction:
    """Brute-force the probability for a dice question by enumerating outcomes."""
    q = question.lower()
    if "two" in q or "pair" in q:
        rolls = list(itertools.product(range(1, 7), repeat=2))
        if re.search(r"at least \d|\d or more", q):
            hits = [r for r in rolls if sum(r) >= _first_int(r"at least (\d+)|(\d+) or more", q)]
        elif re.search(r"(?:sum is|total equals|sum of) \d", q):
            hits = [r for r in rolls if sum(r) == _first_int(r"(?:sum is|total equals|sum of) (\d+)", q)]
        elif re.search(r"different|not rolling|differ", q):
            hits = [r for r in rolls if r[0] != r[1]]
        else:
            hits = [r for r in rolls if r[0] == r[1]]
        return Fraction(len(hits), len(rolls))
    faces = range(1, 7)
    if re.search(r"at least \d|\d or higher|greater than or equal to \d", q):
        k = _first_int(r"at least (\d)|(\d) or higher|greater than or equal to (\d)", q)
        return Fraction(sum(1 for f in faces if f >= k), len(faces))
    face = _first_int(r"(?:a|shows) (\d)\b", q)
    return Fraction(sum(1 for f in faces if f == face), len(faces))


def test_dice_by_brute_force(records: list[dict[str, str]]) -> None:
    dice = _by_topic(records, "dice")
    assert len(dice) > 50
    for r in dice:
        assert Fraction(r["final_answer"]) == _dice_oracle(r["question"]), r


def test_coins_by_brute_force(records: list[dict[str, str]]) -> None:
    coins = _by_topic(records, "coins")
    assert len(coins) > 50
    for r in coins:
        q = r["question"]
        n = int(re.search(r"(\d+) (?:times|fair coins|flips)", q).group(1))
        flips = list(itertools.product("HT", repeat=n))
        if m := re.search(r"exactly (\d+)", q):
            hits = sum(1 for f in flips if f.count("H") == int(m.group(1)))
        else:
            side = re.search(r"at least one (?:lands )?(head|tail)", q).group(1)[0].upper()
            hits = sum(1 for f in flips if side in f)
        assert Fraction(r["final_answer"]) == Fraction(hits, len(flips)), r


def test_bayes_by_direct_formula(records: list[dict[str, str]]) -> None:
    bayes = _by_topic(records, "bayes")
    assert len(bayes) > 50
    for r in bayes:
        raw = re.findall(r"\d+/\d+|\d+%", r["question"])
        assert len(raw) == 3, r
        prev, sens, fpr = (Fraction(x[:-1]) / 100 if x.endswith("%") else Fraction(x) for x in raw)
        expected = prev * sens / (prev * sens + (1 - prev) * fpr)
        assert Fraction(r["final_answer"]) == expected, r


def test_urns_by_enumeration(records: list[dict[str, str]]) -> None:
    urns = _by_topic(records, "urns")
    assert len(urns) > 50
    for r in urns:
        red, blue = map(int, re.search(r"(\d+) red (?:balls |marbles )?and (\d+) blue", r["question"]).groups())
        balls = ["R"] * red + ["B"] * blue
        draws = list(itertools.permutations(range(len(balls)), 2))
        colours = [sorted(balls[i] + balls[j]) for i, j in draws]
        want = sorted("RR" if "both are red" in r["question"] else "BB" if "both are blue" in r["question"] else "BR")
        assert Fraction(r["final_answer"]) == Fraction(colours.count(want), len(draws)), r


RANKS = ["ace", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "jack", "queen", "king"]
SUITS = ["heart", "diamond", "club", "spade"]  # the first two are red
DECK = list(itertools.product(range(13), range(4)))  # (rank index, suit index)


def _card_predicate(desc: str) -> Callable[[tuple[int, int]], bool]:
    """Turn a card description such as ``an ace``, ``hearts`` or ``face cards`` into a predicate."""
    if "face" in desc:
        return lambda card: card[0] >= 10
    if re.search(r"\b(red|black)\b", desc):
        return lambda card: (card[1] < 2) == ("red" in desc)
    for i, suit in enumerate(SUITS):
        if suit in desc:
            return lambda card: card[1] == i
    for i, rank in enumerate(RANKS):
        if re.fullmatch(rf"(?:an? )?{rank}(?:e?s)?", desc):
            return lambda card: card[0] == i
    raise AssertionError(f"unknown card description {desc!r}")


def test_cards_by_enumeration(records: list[dict[str, str]]) -> None:
    cards = _by_topic(records, "cards")
    assert len(cards) > 50
    pairs = list(itertools.permutations(DECK, 2))
    for r in cards:
        q = r["question"]
        if "without replac" in q:
            pred = _card_predicate(re.search(r"(?:both are|both cards are|drawing two) (\w+(?: cards)?)", q).group(1))
            expected = Fraction(sum(1 for a, b in pairs if pred(a) and pred(b)), len(pairs))
        else:
            pred = _card_predicate(
                re.search(r"(?:it is|drawing) (.+?)(?: from a standard deck of 52 cards)?\?$", q).group(1)
            )
            expected = Fraction(sum(1 for c in DECK if pred(c)), len(DECK))
        assert Fraction(r["final_answer"]) == expected, r


def test_binomial_by_enumeration(records: list[dict[str, str]]) -> None:
    binomial = _by_topic(records, "binomial")
    assert len(binomial) > 50
    for r in binomial:
        q = r["question"]
        p = Fraction(re.search(r"probability (\d+/\d+)", q).group(1))
        n = int(re.search(r"(\d+) (?:times|free throws|independent trials)", q).group(1))
        k = int(re.search(r"exactly (\d+)", q).group(1))
        total = sum(
            (p ** sum(o)) * ((1 - p) ** (n - sum(o))) for o in itertools.product((0, 1), repeat=n) if sum(o) == k
        )
        assert Fraction(r["final_answer"]) == total, r


def _expectation_oracle(question: str) -> Fraction:
    """Average the payoff over all equally likely outcomes of an expectation question."""
    if m := re.search(r"(\d+)-sided|numbered 1 to (\d+)", question):
        faces = range(1, int(m.group(1) or m.group(2)) + 1)
        return Fraction(sum(faces), len(faces))
    if "heads" in question:
        n = int(re.search(r"(\d+) (?:times|fair coins)", question).group(1))
        return sum(Fraction(k * math.comb(n, k), 2**n) for k in range(n + 1))  # E[X] = sum k P(X = k)
    k, a, b = (
        _first_int(pattern, question)
        for pattern in (
            r"(\d+) or (?:higher|more)|at least (\d+)",
            r"(?:win|wins|earns) \$?(\d+)",
            r"(?:lose|loses|costs) \$?(\d+)",
        )
    )
    return Fraction(sum(a if roll >= k else -b for roll in range(1, 7)), 6)


def test_expectation_by_enumeration(records: list[dict[str, str]]) -> None:
    expectation = _by_topic(records, "expectation")
    assert len(expectation) > 50
    for r in expectation:
        assert Fraction(r["final_answer"]) == _expectation_oracle(r["question"]), r


def test_write_jsonl_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("old\n", encoding="utf-8")
    record = {"topic": "x", "question": "é?", "answer": "a The answer is 1.", "final_answer": "1"}
    probability.write_jsonl(target, [record])
    assert target.read_text(encoding="utf-8") == json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]
