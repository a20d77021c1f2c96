"""Deterministic generator for the bundled pretraining corpus of the embedded tiny model.

The corpus is plain expository English about numbers, arithmetic, fractions, counting, sets and simple
everyday facts (days, money, games, coins, dice, cards, bags of marbles, screening tests): the vocabulary
the probability QA answers use, but written as prose paragraphs. The sentences come from
:mod:`svdlora_pl.embedded.datasets.corpus_topics`; a paragraph is a random selection of one topic's sentences in random
order, sometimes followed by a sentence or two of another topic. It holds no questions, no question/answer pairs, no chat markup and none
of the QA dataset's sentence templates, so pretraining on it teaches the language, not the task.

Files: one paragraph per line, UTF-8, ending with a newline. ``corpus_train.txt`` is what the tiny model is
pretrained on; ``corpus_heldout.txt`` (disjoint paragraphs from the same generator) measures the held-out
loss. Regenerate both byte-for-byte with::

    python -m svdlora_pl.embedded.datasets.corpus --output-dir svdlora_pl/datasets --seed 0
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from svdlora_pl.embedded.datasets.corpus_topics import ORDERED, TOPICS
from svdlora_pl.io import atomic_write_text

DEFAULT_N_TRAIN = 1300
DEFAULT_N_HELDOUT = 70
TRAIN_FILENAME = "corpus_train.txt"
HELDOUT_FILENAME = "corpus_heldout.txt"
CORPUS_TRAIN: Path = Path(__file__).parent / TRAIN_FILENAME
CORPUS_HELDOUT: Path = Path(__file__).parent / HELDOUT_FILENAME
_MAX_ATTEMPTS = 100_000
_MIX_PROBABILITY = 0.3


def paragraph(rng: random.Random) -> str:
    """One paragraph: 3 to 6 sentences of a random topic in random order, sometimes with a sentence or two of
    another topic appended (ordered topics such as stories keep their order and give a prefix)."""
    topic = rng.choice(TOPICS)
    sentences = topic(rng)
    if topic in ORDERED:
        chosen = sentences[: rng.randint(3, len(sentences))]
    else:
        chosen = rng.sample(sentences, rng.randint(3, min(6, len(sentences))))
    if rng.random() < _MIX_PROBABILITY:
        other = rng.choice([t for t in TOPICS if t is not topic and t not in ORDERED])
        chosen += rng.sample(other(rng), rng.randint(1, 2))
    return " ".join(chosen)


def _sample(n: int, rng: random.Random, seen: set[str]) -> list[str]:
    """``n`` new paragraphs; a duplicate of anything in ``seen`` is redrawn."""
    paragraphs: list[str] = []
    attempts = 0
    while len(paragraphs) < n:
        attempts += 1
        if attempts > _MAX_ATTEMPTS:
            raise RuntimeError(f"could not draw {n} distinct paragraphs in {_MAX_ATTEMPTS} attempts")
        text = paragraph(rng)
        if text not in seen:
            seen.add(text)
            paragraphs.append(text)
    return paragraphs


def generate_corpus(n_train: int, n_heldout: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Disjoint ``(train, heldout)`` paragraph lists, generated deterministically from ``seed``."""
    rng = random.Random(seed)
    seen: set[str] = set()
    train = _sample(n_train, rng, seen)
    heldout = _sample(n_heldout, rng, seen)
    return train, heldout


def write_paragraphs(path: Path, paragraphs: Sequence[str]) -> None:
    """Atomically write paragraphs as UTF-8 text, one per line."""
    atomic_write_text(path, "".join(p + "\n" for p in paragraphs))


def read_paragraphs(path: Path) -> list[str]:
    """The paragraphs of a corpus file written by :func:`write_paragraphs`."""
    return path.read_text(encoding="utf-8").splitlines()


def write_corpus(
    output_dir: Path = Path(__file__).parent, seed: int = 0, n_train: int = DEFAULT_N_TRAIN,
    n_heldout: int = DEFAULT_N_HELDOUT,
) -> None:  # fmt: skip
    """Generate the bundled pretraining corpus of the tiny model and write its train and held-out files.

    Args:
        output_dir: Directory of the two files (default: the package's own, which this reproduces byte for byte).
        seed: Seed of the generator.
        n_train: Training paragraphs.
        n_heldout: Held-out paragraphs.
    """
    train, heldout = generate_corpus(n_train, n_heldout, seed=seed)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_paragraphs(output_dir / TRAIN_FILENAME, train)
    write_paragraphs(output_dir / HELDOUT_FILENAME, heldout)
    print(f"wrote {len(train)} train and {len(heldout)} held-out paragraphs to {output_dir}")


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m svdlora_pl.embedded.datasets.corpus [--output_dir DIR] [--seed N] ...``: :func:`write_corpus`."""
    from jsonargparse import auto_cli

    auto_cli(write_corpus, args=None if argv is None else list(argv))


if __name__ == "__main__":
    main()
