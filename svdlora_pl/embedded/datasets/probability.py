"""Deterministic generator for the bundled probability-theory QA dataset.

Every record is a dict with the keys ``question``, ``answer``, ``final_answer`` and
``topic``. ``answer`` is a short worked solution ending with ``The answer is X.``
where ``X`` equals ``final_answer``. All values are computed exactly with
:class:`fractions.Fraction` and :func:`math.comb`; no floating point is involved.

Regenerate the committed files byte-for-byte with::

    python -m svdlora_pl.embedded.datasets.probability --output-dir svdlora_pl/datasets --seed 0
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from fractions import Fraction
from math import comb
from pathlib import Path

from svdlora_pl.io import atomic_write_text

Record = dict[str, str]
QuestionFn = Callable[[random.Random], tuple[str, str, Fraction]]

DEFAULT_N_TRAIN = 400
DEFAULT_N_VAL = 50
TRAIN_FILENAME = "probability_train.jsonl"
VAL_FILENAME = "probability_val.jsonl"
_MAX_ATTEMPTS = 100_000


def fmt(value: Fraction | int) -> str:
    """Format an exact value as an integer (``7``) or a reduced fraction (``3/8``)."""
    value = Fraction(value)
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _ratio(count: int, total: int) -> str:
    """Render ``count/total``, followed by its reduced form when the two differ."""
    raw, reduced = f"{count}/{total}", fmt(Fraction(count, total))
    return raw if raw == reduced else f"{raw} = {reduced}"


def _pick(rng: random.Random, templates: Sequence[str], **values: object) -> str:
    """Choose one wording template and fill it in."""
    return rng.choice(templates).format(**values)


def make_record(topic: str, question: str, work: str, value: Fraction) -> Record:
    """Assemble a dataset record whose answer ends with ``The answer is X.``."""
    final = fmt(value)
    return {"question": question, "answer": f"{work} The answer is {final}.", "final_answer": final, "topic": topic}


def dice_one_face(rng: random.Random) -> tuple[str, str, Fraction]:
    """One die shows a specific face."""
    face = rng.randint(1, 6)
    question = _pick(
        rng,
        (
            "What is the probability of rolling a {f} with one fair six-sided die?",
            "A fair six-sided die is rolled once. What is the probability that it shows {f}?",
            "If you roll a single fair die, what is the chance of getting a {f}?",
        ),
        f=face,
    )
    work = f"A fair die has 6 equally likely faces and exactly one of them is {face}, so the probability is 1/6."
    return question, work, Fraction(1, 6)


def dice_one_at_least(rng: random.Random) -> tuple[str, str, Fraction]:
    """One die shows at least ``k``."""
    k = rng.randint(2, 5)
    question = _pick(
        rng,
        (
            "A fair six-sided die is rolled once. What is the probability that the result is at least {k}?",
            "What is the probability of rolling {k} or higher with one fair die?",
            "If you roll a single fair die, what is the chance that it shows a number greater than or equal to {k}?",
        ),
        k=k,
    )
    work = f"The faces {k} through 6 are {7 - k} of the 6 equally likely outcomes, so the probability is {_ratio(7 - k, 6)}."
    return question, work, Fraction(7 - k, 6)


def _ways_to_roll(total: int) -> int:
    """Number of ordered outcomes of two dice with the given sum."""
    return max(0, 6 - abs(total - 7))


def dice_two_sum_equals(rng: random.Random) -> tuple[str, str, Fraction]:
    """Two dice sum to exactly ``s``."""
    s = rng.randint(2, 12)
    c = _ways_to_roll(s)
    question = _pick(
        rng,
        (
            "Two fair six-sided dice are rolled. What is the probability that their sum is {s}?",
            "If you roll two fair dice, what is the probability that the total equals {s}?",
            "What is the probability of getting a sum of {s} when rolling a pair of fair dice?",
        ),
        s=s,
    )
    work = f"Of the 36 equally likely outcomes for two dice, the number with sum {s} is {c}, so the probability is {_ratio(c, 36)}."
    return question, work, Fraction(c, 36)


def dice_two_sum_at_least(rng: random.Random) -> tuple[str, str, Fraction]:
    """Two dice sum to at least ``s``."""
    s = rng.randint(3, 12)
    c = sum(_ways_to_roll(t) for t in range(s, 13))
    question = _pick(
        rng,
        (
            "Two fair six-sided dice are rolled. What is the probability that their sum is at least {s}?",
            "If you roll two fair dice, what is the probability that the total is {s} or more?",
            "What is the probability of getting a sum of at least {s} when rolling a pair of fair dice?",
        ),
        s=s,
    )
    work = f"Of the 36 equally likely outcomes for two dice, the number with a sum of at least {s} is {c}, so the probability is {_ratio(c, 36)}."
    return question, work, Fraction(c, 36)


def dice_doubles(rng: random.Random) -> tuple[str, str, Fraction]:
    """Two dice show the same number (doubles) or different numbers."""
    same = rng.random() < 0.5
    question = _pick(
        rng,
        (
            "Two fair dice are rolled. What is the probability that {e}?",
            "What is the probability of {r} with two fair six-sided dice?",
            "If you roll a pair of fair dice, what is the chance of {c}?",
        ),
        e="both show the same number" if same else "they show different numbers",
        r="rolling doubles" if same else "not rolling doubles",
        c="getting doubles" if same else "getting two different numbers",
    )
    work = "Six of the 36 equally likely outcomes are doubles, so the probability "
    work += "is 6/36 = 1/6." if same else "of different numbers is 1 - 1/6 = 5/6."
    return question, work, Fraction(1, 6) if same else Fraction(5, 6)


def coins_exactly_k(rng: random.Random) -> tuple[str, str, Fraction]:
    """Exactly ``k`` heads in ``n`` fair flips."""
    n = rng.randint(2, 10)
    k = rng.randint(0, n)
    heads = "1 head" if k == 1 else f"{k} heads"
    question = _pick(
        rng,
        (
            "A fair coin is flipped {n} times. What is the probability of getting exactly {h}?",
            "If you toss {n} fair coins, what is the probability that exactly {k} of them land heads?",
            "What is the probability of exactly {h} in {n} flips of a fair coin?",
        ),
        n=n,
        k=k,
        h=heads,
    )
    ways = comb(n, k)
    work = f"There are C({n},{k}) = {ways} favourable sequences out of 2^{n} = {2**n} equally likely ones, so the probability is {_ratio(ways, 2**n)}."
    return question, work, Fraction(ways, 2**n)


def coins_at_least_one(rng: random.Random) -> tuple[str, str, Fraction]:
    """At least one head (or tail) in ``n`` fair flips."""
    n = rng.randint(2, 10)
    side, other = rng.choice([("head", "tail"), ("tail", "head")])
    question = _pick(
        rng,
        (
            "A fair coin is flipped {n} times. What is the probability of getting at least one {s}?",
            "If you toss {n} fair coins, what is the probability that at least one lands {s}s?",
            "What is the probability of at least one {s} in {n} flips of a fair coin?",
        ),
        n=n,
        s=side,
    )
    value = 1 - Fraction(1, 2**n)
    work = f"The complement is all {other}s, which has probability 1/{2**n}, so the probability is 1 - 1/{2**n} = {fmt(value)}."
    return question, work, value


_RANKS = ["ace", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "jack", "queen", "king"]
_SUITS = ["heart", "diamond", "club", "spade"]
_SINGLE_CARD = (
    [(("an " if r[0] in "ae" else "a ") + r, 4) for r in _RANKS]
    + [("a " + s, 13) for s in _SUITS]
    + [("a face card (jack, queen or king)", 12), ("a red card", 26), ("a black card", 26)]
)
_CARD_PAIRS = (
    [(r + ("es" if r == "six" else "s"), 4) for r in _RANKS] + [(s + "s", 13) for s in _SUITS] + [("face cards", 12)]
)


def cards_single_draw(rng: random.Random) -> tuple[str, str, Fraction]:
    """One card drawn from a 52-card deck belongs to a suit, rank or class."""
    desc, count = rng.choice(_SINGLE_CARD)
    question = _pick(
        rng,
        (
            "A single card is drawn from a well-shuffled standard 52-card deck. What is the probability that it is {d}?",
            "What is the probability of drawing {d} from a standard deck of 52 cards?",
            "If you pick one card at random from a standard 52-card deck, what is the chance that it is {d}?",
        ),
        d=desc,
    )
    work = f"The deck has {count} cards that qualify out of 52, so the probability is {_ratio(count, 52)}."
    return question, work, Fraction(count, 52)


def cards_two_draws(rng: random.Random) -> tuple[str, str, Fraction]:
    """Two cards drawn without replacement are both from one category."""
    plural, c = rng.choice(_CARD_PAIRS)
    question = _pick(
        rng,
        (
            "Two cards are drawn without replacement from a standard 52-card deck. What is the probability that both are {p}?",
            "What is the probability of drawing two {p} in a row, without replacement, from a well-shuffled 52-card deck?",
            "If you deal two cards from a standard deck without replacing the first, what is the chance that both cards are {p}?",
        ),
        p=plural,
    )
    work = f"The probability is {c}/52 * {c - 1}/51 = {_ratio(c * (c - 1), 52 * 51)}."
    return question, work, Fraction(c * (c - 1), 52 * 51)


def urns_two_draws(rng: random.Random) -> tuple[str, str, Fraction]:
    """Two balls drawn without replacement: both red, both blue, or one of each."""
    r, b = rng.randint(2, 9), rng.randint(2, 9)
    pairs = comb(r + b, 2)
    event, fav, how = rng.choice(
        [
            ("both are red", comb(r, 2), f"C({r},2) = {comb(r, 2)} are both red"),
            ("both are blue", comb(b, 2), f"C({b},2) = {comb(b, 2)} are both blue"),
            ("one is red and one is blue", r * b, f"{r}*{b} = {r * b} have one of each colour"),
        ]
    )
    question = _pick(
        rng,
        (
            "An urn contains {r} red balls and {b} blue balls. Two balls are drawn without replacement. What is the probability that {e}?",
            "A bag holds {r} red and {b} blue marbles. If you draw two marbles at random without replacement, what is the probability that {e}?",
            "Two balls are drawn at random, without replacement, from a box with {r} red and {b} blue balls. What is the chance that {e}?",
        ),
        r=r,
        b=b,
        e=event,
    )
    work = f"There are C({r + b},2) = {pairs} equally likely pairs, of which {how}, so the probability is {_ratio(fav, pairs)}."
    return question, work, Fraction(fav, pairs)


def binomial_exactly_k(rng: random.Random) -> tuple[str, str, Fraction]:
    """Exactly ``k`` successes in ``n`` independent trials with success probability ``p``."""
    n, den = rng.randint(3, 8), rng.randint(3, 6)
    p = Fraction(rng.randint(1, den - 1), den)
    k = rng.randint(0, n)
    question = _pick(
        rng,
        (
            "A biased coin lands heads with probability {p}. If it is flipped {n} times independently, what is the probability of exactly {h}?",
            "A basketball player makes each free throw with probability {p}, independently of other shots. If she takes {n} free throws, what is the probability that she makes exactly {k} of them?",
            "Each of {n} independent trials succeeds with probability {p}. What is the probability of exactly {s}?",
        ),
        p=fmt(p),
        n=n,
        k=k,
        h="1 head" if k == 1 else f"{k} heads",
        s="1 success" if k == 1 else f"{k} successes",
    )
    value = comb(n, k) * p**k * (1 - p) ** (n - k)
    work = f"By the binomial formula, the probability is C({n},{k}) * ({fmt(p)})^{k} * ({fmt(1 - p)})^{n - k} = {fmt(value)}."
    return question, work, value


def bayes_disease_test(rng: random.Random) -> tuple[str, str, Fraction]:
    """P(disease | positive test) from prevalence, sensitivity and false-positive rate."""
    prev = Fraction(rng.choice([1, 2, 3, 4, 5, 8, 10, 15, 20, 25]), 100)
    sens = Fraction(rng.randint(80, 99), 100)
    fpr = Fraction(rng.randint(1, 15), 100)
    show = (lambda v: f"{fmt(v * 100)}%") if rng.random() < 0.5 else fmt
    question = _pick(
        rng,
        (
            "A disease affects {a} of a population. A test detects the disease in {b} of people who have it and gives a false positive for {c} of people who do not. If a randomly chosen person tests positive, what is the probability that they have the disease?",
            "In a certain city, {a} of residents carry a virus. A screening test has sensitivity {b} and a false-positive rate of {c}. Given that a random resident tests positive, what is the probability that they carry the virus?",
            "The prevalence of a condition is {a}. A diagnostic test is positive for {b} of patients with the condition and for {c} of patients without it. What is the probability that a patient who tests positive actually has the condition?",
        ),
        a=show(prev),
        b=show(sens),
        c=show(fpr),
    )
    joint = prev * sens
    positive = joint + (1 - prev) * fpr
    work = (
        f"P(positive) = {fmt(prev)} * {fmt(sens)} + {fmt(1 - prev)} * {fmt(fpr)} = {fmt(positive)}. "
        f"By Bayes' theorem, P(disease | positive) = ({fmt(joint)}) / ({fmt(positive)}) = {fmt(joint / positive)}."
    )
    return question, work, joint / positive


def expectation_die(rng: random.Random) -> tuple[str, str, Fraction]:
    """Expected value of one roll of a fair ``s``-sided die."""
    s = rng.choice([4, 6, 8, 10, 12, 20])
    question = _pick(
        rng,
        (
            "What is the expected value of a single roll of a fair {s}-sided die?",
            "A fair die with faces numbered 1 to {s} is rolled once. What is the expected value of the number shown?",
            "If you roll a fair {s}-sided die numbered 1 through {s}, what is the average result in the long run?",
        ),
        s=s,
    )
    value = Fraction(s + 1, 2)
    work = (
        f"Each face from 1 to {s} has probability 1/{s}, so the expectation is (1 + 2 + ... + {s})/{s} = {fmt(value)}."
    )
    return question, work, value


def expectation_heads(rng: random.Random) -> tuple[str, str, Fraction]:
    """Expected number of heads in ``n`` fair flips."""
    n = rng.randint(2, 30)
    question = _pick(
        rng,
        (
            "A fair coin is flipped {n} times. What is the expected number of heads?",
            "What is the expected number of heads when tossing {n} fair coins?",
            "If you flip a fair coin {n} times, how many heads do you expect on average?",
        ),
        n=n,
    )
    value = Fraction(n, 2)
    work = f"By linearity of expectation each flip contributes 1/2 of a head on average, so the expectation is {n} * 1/2 = {fmt(value)}."
    return question, work, value


def expectation_game(rng: random.Random) -> tuple[str, str, Fraction]:
    """Expected payoff of a die game: win ``a`` on a roll of at least ``k``, else lose ``b``."""
    k, a, b = rng.randint(2, 6), rng.randint(1, 20), rng.randint(1, 10)
    question = _pick(
        rng,
        (
            "In a game you roll a fair six-sided die. If it shows {k} or higher you win {a} dollars; otherwise you lose {b} dollars. What are your expected winnings per game?",
            "A player rolls a fair die and wins ${a} when the result is at least {k}, but loses ${b} otherwise. What is the expected value of the game for the player?",
            "You roll one fair die: a result of {k} or more earns {a} points and anything lower costs {b} points. What is the expected number of points per roll?",
        ),
        k=k,
        a=a,
        b=b,
    )
    win = Fraction(7 - k, 6)
    value = win * a - (1 - win) * b
    work = f"You win with probability {fmt(win)} and lose with probability {fmt(1 - win)}, so the expectation is {fmt(win)} * {a} - {fmt(1 - win)} * {b} = {fmt(value)}."
    return question, work, value


#: Registry of ``(topic, question generator)`` pairs; topics are cycled in this order.
QUESTION_TYPES: list[tuple[str, QuestionFn]] = [
    *[
        ("dice", fn)
        for fn in (dice_one_face, dice_one_at_least, dice_two_sum_equals, dice_two_sum_at_least, dice_doubles)
    ],
    *[("coins", fn) for fn in (coins_exactly_k, coins_at_least_one)],
    *[("cards", fn) for fn in (cards_single_draw, cards_two_draws)],
    ("urns", urns_two_draws),
    ("binomial", binomial_exactly_k),
    ("bayes", bayes_disease_test),
    *[("expectation", fn) for fn in (expectation_die, expectation_heads, expectation_game)],
]
TOPICS: tuple[str, ...] = tuple(dict.fromkeys(topic for topic, _ in QUESTION_TYPES))


def _sample_split(n: int, rng: random.Random, seen: set[str]) -> list[Record]:
    """Draw ``n`` records with unseen questions, cycling through topics evenly, then shuffle."""
    by_topic = {t: [fn for topic, fn in QUESTION_TYPES if topic == t] for t in TOPICS}
    records: list[Record] = []
    attempts = 0
    while len(records) < n:
        attempts += 1
        if attempts > _MAX_ATTEMPTS:
            raise RuntimeError(f"could only generate {len(records)} of {n} unique questions")
        topic = TOPICS[len(records) % len(TOPICS)]
        question, work, value = rng.choice(by_topic[topic])(rng)
        if question not in seen:
            seen.add(question)
            records.append(make_record(topic, question, work, value))
    rng.shuffle(records)
    return records


def generate(n_train: int, n_val: int, seed: int = 0) -> tuple[list[Record], list[Record]]:
    """Generate disjoint ``(train, val)`` record lists deterministically from ``seed``."""
    rng = random.Random(seed)
    seen: set[str] = set()
    train = _sample_split(n_train, rng, seen)
    val = _sample_split(n_val, rng, seen)
    return train, val


def write_jsonl(path: Path, records: Sequence[Record]) -> None:
    """Atomically write records as UTF-8 JSONL (sorted keys, one record per line)."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records))


def write_dataset(
    output_dir: Path = Path(__file__).parent, seed: int = 0, n_train: int = DEFAULT_N_TRAIN, n_val: int = DEFAULT_N_VAL
) -> None:
    """Generate the bundled probability QA dataset and write its train and validation JSONL files.

    Args:
        output_dir: Directory of the two files (default: the package's own, which this reproduces byte for byte).
        seed: Seed of the generator.
        n_train: Training records.
        n_val: Validation records (disjoint from the training ones).
    """
    train, val = generate(n_train, n_val, seed=seed)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(output_dir / TRAIN_FILENAME, train)
    write_jsonl(output_dir / VAL_FILENAME, val)
    print(f"wrote {len(train)} train and {len(val)} val records to {output_dir}")


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m svdlora_pl.embedded.datasets.probability [--output_dir DIR] ...``: :func:`write_dataset`."""
    from jsonargparse import auto_cli

    auto_cli(write_dataset, args=None if argv is None else list(argv))


if __name__ == "__main__":
    main()
