"""The clients' shards of the training records: non-IID by topic (whole problem types per client) or IID.

The bundled probability QA records carry a ``topic`` (dice, coins, cards, urns, binomial, bayes, expectation; see
:func:`svdlora_pl.embedded.datasets.probability.make_record`). With ``partition: topic`` client k holds every record
of its topics: those ``split.topics[k]`` names, or by default the topics in order of first appearance dealt
round-robin (3 clients on the bundled set: urns+cards+binomial (171 records), coins+dice (115), expectation+bayes
(114)). With ``partition:
iid`` a shuffle seeded by the run's seed is cut into equal parts. The split is a pure function of the file, the
settings and the number of clients, so the server and every client compute the same shards independently; a shard
that ends up empty is refused before any training.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svdlora_pl.errors import InputError
from svdlora_pl.federated.settings import SplitSettings
from svdlora_pl.training.records import read_objects


@dataclass(frozen=True)
class Shard:
    """One client's part of the training records.

    Attributes:
        client: The client's partition id.
        topics: The topics it holds (empty for an IID split).
        records: Its records, as read from the file.
    """

    client: int
    topics: tuple[str, ...]
    records: tuple[dict[str, Any], ...]

    def write_jsonl(self, path: Path) -> Path:
        """Write the records as a JSONL file (what :class:`~svdlora_pl.training.datamodule.QADataModule` reads)."""
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.records), encoding="utf-8")
        return path


def train_path(split: SplitSettings) -> Path:
    """The training file: ``split.train_file`` or the bundled probability QA training split."""
    from svdlora_pl.embedded.datasets import BUNDLED_TRAIN

    return Path(split.train_file) if split.train_file is not None else BUNDLED_TRAIN


def val_path(split: SplitSettings) -> Path:
    """The validation file: ``split.val_file`` or the bundled probability QA validation split."""
    from svdlora_pl.embedded.datasets import BUNDLED_VAL

    return Path(split.val_file) if split.val_file is not None else BUNDLED_VAL


def _objects(split: SplitSettings) -> tuple[Path, list[tuple[str, dict[str, Any]]]]:
    path = train_path(split)
    try:
        objects = read_objects(path)
    except InputError as error:
        raise InputError(f"{error} (split.train_file)") from None
    for where, value in objects:
        if not isinstance(value, dict):
            raise InputError(f"{path}: {where}: must be a JSON object (split.train_file)")
    if not objects:
        raise InputError(f"{path}: no records (split.train_file)")
    return path, objects


def _topic_of(path: Path, where: str, record: dict[str, Any], field: str) -> str:
    topic = record.get(field)
    if not isinstance(topic, str) or not topic:
        raise InputError(
            f"{path}: {where}: no {field!r} field: split.partition topic needs one in every record (or use iid)"
        )
    return topic


def _topic_assignment(path: Path, found: list[str], split: SplitSettings, clients: int) -> list[list[str]]:
    """The topics of each client: the given lists (checked against the file) or ``found`` dealt round-robin."""
    if split.topics is None:
        return [found[k::clients] for k in range(clients)]
    owner: dict[str, int] = {}
    for k, names in enumerate(split.topics):
        for name in names:
            if name not in found:
                raise InputError(f"split.topics: client {k}: topic {name!r} is not in {path} ({', '.join(found)})")
            if name in owner:
                raise InputError(f"split.topics: topic {name!r} is given to clients {owner[name]} and {k}")
            owner[name] = k
    return [list(names) for names in split.topics]


def make_shards(split: SplitSettings, clients: int, seed: int) -> list[Shard]:
    """Every client's shard (client k = partition id k); InputError naming the client whose shard is empty.

    Args:
        split: The split settings.
        clients: Number of clients (the length of ``ranks``).
        seed: Seed of the IID shuffle.
    """
    path, objects = _objects(split)
    if split.partition == "iid":
        order = list(range(len(objects)))
        random.Random(seed).shuffle(order)
        parts = [order[k::clients] for k in range(clients)]
        shards = [Shard(k, (), tuple(objects[i][1] for i in sorted(part))) for k, part in enumerate(parts)]
        how = f"{len(objects)} records"
    else:
        topics = [_topic_of(path, where, value, split.topic_field) for where, value in objects]
        found = list(dict.fromkeys(topics))
        assignment = _topic_assignment(path, found, split, clients)
        shards = [
            Shard(k, tuple(names), tuple(v for (_, v), t in zip(objects, topics, strict=True) if t in names))
            for k, names in enumerate(assignment)
        ]
        how = f"{len(found)} topics for {clients} clients"
    for shard in shards:
        if not shard.records:
            raise InputError(
                f"split: client {shard.client}'s shard is empty after the {split.partition} split of {path} ({how}); "
                "give split.topics or fewer clients"
            )
    return shards
