"""The federated options: one-line errors naming the field, and the plan's JSON (what every client is sent)."""

from __future__ import annotations

import pytest

from svdlora_pl.errors import InputError
from svdlora_pl.federated.settings import ClientSettings, EvalSettings, Plan, SplitSettings, make_plan


def plan(**overrides) -> Plan:
    options = dict(
        output_dir="out", method="svd", ranks=[4, 8, 16], rounds=2, global_rank=None, client=ClientSettings(),
        split=SplitSettings(), evaluation=EvalSettings(), model_name_or_path="svdlora:tiny-qwen2",
        weighting="examples", seed=0, cpus_per_client=1.0, save_client_adapters=False,
    )  # fmt: skip
    options.update(overrides)
    return make_plan(**options)


def test_plan_round_trips_through_json():
    original = plan(
        client=ClientSettings(lr=0.01, target_modules=["q_proj"]), split=SplitSettings(topics=[["a"], ["b"], ["c"]])
    )
    assert Plan.from_json(original.to_json()) == original
    assert original.rank_of(2) == 16 and original.payload == "init" and plan(method="stack").payload == "fold"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"method": "mean"}, "method: must be one of stack, svd, zeropad, got 'mean'"),
        ({"ranks": [8]}, "ranks: the svd strategy needs at least 2 clients (one rank each), got 1"),
        ({"ranks": [4, 0]}, "ranks: client 1: must be an integer >= 1, got 0"),
        ({"rounds": 0}, "rounds: must be an integer >= 1, got 0"),
        ({"method": "stack", "global_rank": 4}, "global_rank: only used by method svd"),
        ({"global_rank": 0}, "global_rank: must be an integer >= 1, got 0"),
        ({"weighting": "size"}, "weighting: must be one of examples, equal, got 'size'"),
        ({"cpus_per_client": 0}, "cpus_per_client: must be a finite number > 0, got 0"),
        ({"split": SplitSettings(topics=[["a"], ["b"]])}, "split.topics: 2 topic lists for 3 clients (ranks)"),
    ],
)
def test_bad_options_name_their_field(overrides, message):
    with pytest.raises(InputError) as error:
        plan(**overrides)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ClientSettings(local_steps=0), "client.local_steps: must be an integer >= 1, got 0"),
        (lambda: ClientSettings(lr=-1.0), "client.lr: must be a finite number > 0, got -1.0"),
        (lambda: ClientSettings(dropout=1.0), "client.dropout: must be in [0, 1), got 1.0"),
        (lambda: ClientSettings(target_modules=[]), "client.target_modules: must name at least one module"),
        (lambda: SplitSettings(partition="random"), "split.partition: must be one of topic, iid, got 'random'"),
        (lambda: SplitSettings(partition="iid", topics=[["a"]]), "split.topics: only used with split.partition topic"),
        (lambda: SplitSettings(train_file="t.jsonl"), "split.val_file: needed with split.train_file"),
        (lambda: EvalSettings(limit_batches=0), "evaluation.limit_batches: must be an integer >= 1, got 0"),
    ],
)
def test_bad_settings_name_their_field(build, message):
    with pytest.raises(InputError) as error:
        build()
    assert str(error.value).startswith(message)


def test_a_partition_outside_the_run_is_refused():
    with pytest.raises(InputError, match="partition-id: 3 is not a client of this run"):
        plan().rank_of(3)
