"""The server's evaluation: base + G equals the PEFT adapter the round writes; ranks above a module's limit."""

from __future__ import annotations

import pytest
import torch

from svdlora_pl.errors import InputError
from svdlora_pl.federated.evaluate import GlobalEvaluator, check_ranks
from svdlora_pl.federated.settings import ClientSettings, EvalSettings, SplitSettings, make_plan
from svdlora_pl.lora.adapters import write_adapter

TARGETS = ["q_proj", "k_proj", "down_proj"]


def plan(ranks=(4, 8), global_rank=None, targets=TARGETS):
    return make_plan(
        "out", "svd", list(ranks), 1, global_rank, ClientSettings(target_modules=targets), SplitSettings(),
        EvalSettings(exact_match=False, limit_batches=1), "svdlora:tiny-qwen2", "examples", 0, 1.0, False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def evaluator():
    return GlobalEvaluator(plan())


def test_adapted_modules_and_shapes(evaluator):
    shapes = evaluator.shapes
    assert len(shapes) == 12  # 3 targets × 4 layers
    assert shapes["model.layers.0.self_attn.k_proj"] == (64, 128) and shapes["model.layers.3.mlp.down_proj"] == (
        128,
        352,
    )


def test_base_plus_global_update_gives_the_logits_of_the_written_peft_adapter(evaluator, tmp_path):
    from peft import PeftModel

    from svdlora_pl.training.loading import load_causal_lm

    g = torch.Generator().manual_seed(0)
    factors = {
        m: (torch.randn(out, 5, generator=g) * 0.05, torch.randn(5, inp, generator=g) * 0.05)
        for m, (out, inp) in evaluator.shapes.items()
    }
    write_adapter(tmp_path / "adapter", factors, "svdlora:tiny-qwen2")
    peft_model = PeftModel.from_pretrained(load_causal_lm("svdlora:tiny-qwen2"), tmp_path / "adapter").eval()
    ids = torch.randint(3, 1000, (2, 12), generator=g)
    evaluator.set_global(factors)
    with torch.no_grad():
        ours = evaluator.module.model(input_ids=ids).logits
        theirs = peft_model(input_ids=ids).logits
        assert torch.allclose(ours, theirs, atol=1e-4)
        evaluator.set_global(None)
        base = evaluator.module.model(input_ids=ids).logits
    assert not torch.allclose(base, theirs, atol=1e-3)


def test_evaluation_metrics_and_the_base_again(evaluator):
    with_update = evaluator.evaluate(
        {m: (torch.ones(out, 1) * 0.01, torch.ones(1, inp)) for m, (out, inp) in evaluator.shapes.items()}
    )
    base = evaluator.evaluate(None)
    assert set(base) == {"val/loss", "val/perplexity", "val/token_accuracy"}
    assert base["val/loss"] != with_update["val/loss"] and base == evaluator.evaluate(None)


@pytest.mark.parametrize(
    "ranks, global_rank, message",
    [
        (
            (4, 65),
            None,
            r"ranks: client 1's rank 65 is more than model.layers.0.self_attn.k_proj can have: min\(out=64, in=128\) = 64",
        ),
        (
            (4, 8),
            13,
            r"global_rank: 13 is more than model.layers.0.self_attn.q_proj can have: min\(out=128, in=128, Σ r_k=12\) = 12",
        ),
    ],
)
def test_ranks_above_a_modules_limit_are_refused(evaluator, ranks, global_rank, message):
    with pytest.raises(InputError, match=message):
        check_ranks(plan(ranks, global_rank), evaluator.shapes)


def test_unknown_target_modules_name_the_client_field():
    with pytest.raises(InputError, match=r"client.target_modules: 'qkv' matches no Linear"):
        GlobalEvaluator(plan(targets=["qkv"]))


def test_exact_match_generates_answers():
    settings = EvalSettings(exact_match=True, max_new_tokens=4, batch_size=5, limit_batches=1)
    p = make_plan(
        "out", "svd", [4, 8], 1, None, ClientSettings(target_modules=TARGETS), SplitSettings(), settings,
        "svdlora:tiny-qwen2", "examples", 0, 1.0, False,
    )  # fmt: skip
    metrics = GlobalEvaluator(p).evaluate(None)
    assert metrics["val/exact_match"] == 0.0  # four tokens cannot reach "The answer is ..."
