"""One client's round: how it starts from what the server sends (fold, init), and a short real fit."""

from __future__ import annotations

import math

import pytest
import torch

from svdlora_pl.federated.client import start_from, train_client
from svdlora_pl.federated.settings import ClientSettings, EvalSettings, SplitSettings, make_plan
from svdlora_pl.federated.split import make_shards
from svdlora_pl.lora.layers import find_lora_layers
from svdlora_pl.lora.settings import LoRASettings
from svdlora_pl.training.module import QwenLoRAModule

RANK, SCALING = 4, 2.0


@pytest.fixture
def layers():
    torch.manual_seed(0)
    module = QwenLoRAModule(
        lora=LoRASettings(r=RANK, alpha=SCALING * RANK, dropout=0.0, target_modules=["q_proj", "v_proj"])
    )
    module.configure_model()
    return {ref.name: ref for ref in find_lora_layers(module.model)}


def global_update(layers, rank: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return {
        name: (
            torch.randn(ref.B.shape[0], rank, generator=g) * 0.1,
            torch.randn(rank, ref.A.shape[1], generator=g) * 0.1,
        )
        for name, ref in layers.items()
    }


def update_of(ref) -> torch.Tensor:
    return ref.scaling * ref.B.double() @ ref.A.double()


def test_init_starts_the_lora_at_the_global_update_and_keeps_fresh_components(layers):
    sent = global_update(layers, rank=3)
    fresh_rows = {name: ref.A[3:].clone() for name, ref in layers.items()}
    start_from(layers, "init", sent)
    for name, ref in layers.items():
        B, A = sent[name]
        assert torch.allclose(update_of(ref), B.double() @ A.double(), atol=1e-6)
        assert torch.equal(ref.A[3:], fresh_rows[name]) and not ref.B[:, 3:].any()  # can still learn
        assert torch.allclose(ref.A[:3] * math.sqrt(SCALING), A, atol=1e-6)  # balanced: √s out of each side


def test_init_with_more_components_than_the_rank_keeps_the_first(layers):
    sent = global_update(layers, rank=6)
    start_from(layers, "init", sent)
    for name, ref in layers.items():
        B, A = sent[name]
        assert torch.allclose(update_of(ref), B[:, :RANK].double() @ A[:RANK].double(), atol=1e-6)


def test_fold_adds_the_global_update_to_the_base_and_keeps_a_fresh_lora(layers):
    sent = global_update(layers, rank=6)
    before = {name: ref.layer.base_layer.weight.detach().clone() for name, ref in layers.items()}
    start_from(layers, "fold", sent)
    for name, ref in layers.items():
        B, A = sent[name]
        assert torch.allclose(ref.layer.base_layer.weight, before[name] + B @ A, atol=1e-6)
        assert not ref.B.any()


def test_nothing_sent_keeps_peft_init(layers):
    A0 = {name: ref.A.clone() for name, ref in layers.items()}
    start_from(layers, "none", None)
    assert all(torch.equal(ref.A, A0[name]) and not ref.B.any() for name, ref in layers.items())


def test_a_short_round_returns_factors_of_the_clients_rank_and_is_seeded():
    plan = make_plan(
        "out", "svd", [2, 3], 1, None, ClientSettings(local_steps=2, batch_size=4, target_modules=["q_proj"]),
        SplitSettings(), EvalSettings(), "svdlora:tiny-qwen2", "examples", 0, 1.0, False,
    )  # fmt: skip
    result = train_client(plan, partition=1, server_round=1)
    assert len(result.factors) == 4  # q_proj of 4 layers
    assert all(f.rank == 3 and f.scaling == 2.0 for f in result.factors.values())
    assert any(f.B.abs().max() > 0 for f in result.factors.values())  # it trained
    assert result.num_examples == len(make_shards(plan.split, 2, 0)[1].records)
    assert math.isfinite(result.train_loss)
    again = train_client(plan, partition=1, server_round=1)
    assert all(torch.equal(f.B, again.factors[m].B) for m, f in result.factors.items())
