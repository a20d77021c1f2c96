"""LoRA factors as Flower records, both ways."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("flwr", reason="needs the flower extra: pip install -e '.[flower]'")

from flwr.app import ArrayRecord  # noqa: E402

from svdlora_pl.errors import InputError  # noqa: E402
from svdlora_pl.federated.client import ClientResult  # noqa: E402
from svdlora_pl.federated.records import (  # noqa: E402
    decode_update,
    factors_to_record,
    record_to_factors,
    reply_content,
    train_content,
)
from svdlora_pl.lora.factors import LoRAFactors  # noqa: E402

MODULES = {"model.layers.0.self_attn.q_proj": (8, 6), "model.layers.1.mlp.down_proj": (6, 10)}


def factors(rank: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(rank)
    return {
        m: (torch.randn(out, rank, generator=g, dtype=dtype), torch.randn(rank, inp, generator=g, dtype=dtype))
        for m, (out, inp) in MODULES.items()
    }


def test_factors_go_as_float32_arrays_keyed_by_module_path():
    sent = factors(3)
    record = factors_to_record(sent)
    assert sorted(record) == sorted(f"{m}.lora_{x}" for m in MODULES for x in "AB")
    back = record_to_factors(record)
    for m, (B, A) in sent.items():
        assert (
            back[m][0].dtype == torch.float32
            and torch.equal(back[m][0], B.float())
            and torch.equal(back[m][1], A.float())
        )
    data_bytes = sum(4 * (out + inp) * 3 for out, inp in MODULES.values())
    assert data_bytes < record.count_bytes() < data_bytes + 1000  # the arrays plus keys and array headers
    assert len(factors_to_record(None)) == 0


def test_a_reply_decodes_into_the_client_update():
    result = ClientResult(
        {m: LoRAFactors(B.float(), A.float(), 2.0) for m, (B, A) in factors(4).items()}, 57, 1.25, 3.0
    )
    update = decode_update(reply_content(result, partition=2, rank=4))
    assert (update.partition, update.num_examples, update.train_loss, update.rank) == (2, 57, 1.25, 4)
    assert all(
        update.factors[m].scaling == 2.0 and torch.equal(update.factors[m].B, result.factors[m].B) for m in MODULES
    )


def test_the_training_message_carries_plan_round_and_payload():
    content = train_content('{"x": 1}', 3, "init", factors(2))
    config = content["config"]
    assert (config["plan"], config["server-round"], config["payload"]) == ('{"x": 1}', 3, "init")
    assert len(content["arrays"]) == 4


def test_unpaired_factors_are_refused():
    record = ArrayRecord(torch_state_dict={"m.lora_A": torch.zeros(2, 3)})
    with pytest.raises(InputError, match="arrays: m.lora_A has no m.lora_B"):
        record_to_factors(record)
    with pytest.raises(InputError, match="arrays: m.weight is not a LoRA factor"):
        record_to_factors(ArrayRecord(torch_state_dict={"m.weight": torch.zeros(2, 3)}))
