"""The clients' shards: non-IID by topic (default round-robin or given), IID, and the shards that are refused."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from svdlora_pl.embedded.datasets import BUNDLED_TRAIN
from svdlora_pl.errors import InputError
from svdlora_pl.federated.settings import SplitSettings
from svdlora_pl.federated.split import make_shards

BUNDLED = [json.loads(line) for line in BUNDLED_TRAIN.read_text().splitlines()]
TOPICS_IN_ORDER = list(dict.fromkeys(r["topic"] for r in BUNDLED))


def write(tmp_path, records) -> str:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_default_topic_split_deals_the_topics_round_robin():
    shards = make_shards(SplitSettings(), 3, seed=0)
    assert [list(s.topics) for s in shards] == [TOPICS_IN_ORDER[k::3] for k in range(3)]
    for shard in shards:
        assert {r["topic"] for r in shard.records} == set(shard.topics)
        assert len(shard.records) == sum(Counter(r["topic"] for r in BUNDLED)[t] for t in shard.topics)
    assert sum(len(s.records) for s in shards) == len(BUNDLED) == 400  # disjoint and complete


def test_given_topics_and_unused_topics():
    shards = make_shards(SplitSettings(topics=[["dice"], ["coins", "cards"]]), 2, seed=0)
    assert [set(r["topic"] for r in s.records) for s in shards] == [{"dice"}, {"coins", "cards"}]
    assert len(shards[0].records) == sum(r["topic"] == "dice" for r in BUNDLED)


def test_iid_split_is_seeded_and_even():
    a = make_shards(SplitSettings(partition="iid"), 3, seed=1)
    b = make_shards(SplitSettings(partition="iid"), 3, seed=1)
    c = make_shards(SplitSettings(partition="iid"), 3, seed=2)
    assert [s.records for s in a] == [s.records for s in b] != [s.records for s in c]
    assert sorted(len(s.records) for s in a) == [133, 133, 134] and all(not s.topics for s in a)


def test_shard_writes_jsonl_the_datamodule_reads(tmp_path):
    shard = make_shards(SplitSettings(), 3, seed=0)[1]
    path = shard.write_jsonl(tmp_path / "shard.jsonl")
    assert [json.loads(line) for line in path.read_text().splitlines()] == list(shard.records)


@pytest.mark.parametrize(
    "settings, clients, message",
    [
        (
            SplitSettings(),
            8,
            r"split: client 7's shard is empty after the topic split of .* \(7 topics for 8 clients\)",
        ),
        (SplitSettings(topics=[["dice"], []]), 2, "split: client 1's shard is empty"),
        (SplitSettings(topics=[["dice"], ["poker"]]), 2, "split.topics: client 1: topic 'poker' is not in"),
        (SplitSettings(topics=[["dice"], ["dice"]]), 2, "split.topics: topic 'dice' is given to clients 0 and 1"),
    ],
)
def test_bad_splits_are_one_line_errors(settings, clients, message):
    with pytest.raises(InputError, match=message):
        make_shards(settings, clients, seed=0)


def test_records_without_a_topic_need_an_iid_split(tmp_path):
    train = write(tmp_path, [{"question": "q", "answer": "a", "topic": "x"}, {"question": "q2", "answer": "a2"}])
    with pytest.raises(InputError, match=r"train.jsonl: record 1 \(line 2\): no 'topic' field: .* \(or use iid\)"):
        make_shards(SplitSettings(train_file=train, val_file=train), 2, seed=0)
    shards = make_shards(SplitSettings(train_file=train, val_file=train, partition="iid"), 2, seed=0)
    assert sorted(len(s.records) for s in shards) == [1, 1]
    with pytest.raises(InputError, match=r"split: client 2's shard is empty after the iid split .* \(2 records\)"):
        make_shards(SplitSettings(train_file=train, val_file=train, partition="iid"), 3, seed=0)


def test_a_missing_train_file_names_the_field(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match=r"nope.jsonl: file not found \(split.train_file\)"):
        make_shards(SplitSettings(train_file=missing, val_file=missing), 2, seed=0)
