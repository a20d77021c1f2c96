"""The server's aggregation step against ``svdlora aggregate`` on the same client adapters, and against numpy float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from svdlora_pl.aggregation.merge import aggregate
from svdlora_pl.errors import InputError
from svdlora_pl.federated.global_update import ClientUpdate, GlobalModel, client_weights, refactor_exact
from svdlora_pl.lora.adapters import read_adapter, write_adapter
from svdlora_pl.lora.factors import LoRAFactors

SHAPES = {"model.layers.0.self_attn.q_proj": (24, 20), "model.layers.0.self_attn.k_proj": (12, 20)}
RANKS = (2, 5, 3)
SIZES = (40, 10, 30)
SCALING = 2.0


def make_updates(seed: int, ranks=RANKS, sizes=SIZES) -> list[ClientUpdate]:
    g = torch.Generator().manual_seed(seed)
    updates = []
    for k, (r, n) in enumerate(zip(ranks, sizes, strict=True)):
        factors = {
            m: LoRAFactors(torch.randn(out, r, generator=g) * 0.1, torch.randn(r, inp, generator=g) * 0.1, SCALING)
            for m, (out, inp) in SHAPES.items()
        }
        updates.append(ClientUpdate(partition=k, factors=factors, num_examples=n, train_loss=1.0 + k))
    return updates


def save_clients(tmp_path, name: str, updates: list[ClientUpdate]) -> list:
    """Each client as a PEFT adapter (√s folded into B and A, as the run's save_client_adapters writes them)."""
    paths = []
    for u in updates:
        root = math.sqrt(SCALING)
        factors = {m: (f.B * root, f.A * root) for m, f in u.factors.items()}
        paths.append(write_adapter(tmp_path / name / f"client_{u.partition}", factors, "base"))
    return paths


def dense(B: torch.Tensor, A: torch.Tensor) -> np.ndarray:
    return B.double().numpy() @ A.double().numpy()


def exact_sum(updates: list[ClientUpdate], module: str, weights: list[float]) -> np.ndarray:
    return sum(
        p * SCALING * dense(u.factors[module].B, u.factors[module].A) for u, p in zip(updates, weights, strict=True)
    )


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_weights_by_examples_or_equal():
    updates = make_updates(0)
    assert client_weights(updates, "examples") == pytest.approx([0.5, 0.125, 0.375])
    assert client_weights(updates, "equal") == pytest.approx([1 / 3] * 3)


@pytest.mark.parametrize("method", ["stack", "svd", "zeropad"])
def test_two_rounds_equal_svdlora_aggregate_of_the_client_adapters(tmp_path, method):
    """Round by round, the global update is `svdlora aggregate` of the round's client adapters with the same weights
    (stack: added to the previous global), and what a client of rank r is sent is aggregate's rank_<r> adapter."""
    model = GlobalModel(method, weighting="examples")
    assert model.payload(4) is None
    previous = None
    for server_round, seed in ((1, 1), (2, 2)):
        updates = make_updates(seed)
        step = model.aggregate(server_round, list(reversed(updates)))  # reply order does not matter
        assert [u.partition for u in step.updates] == [0, 1, 2]
        options = {} if method == "stack" else {"per_client_ranks": True}
        merged = tmp_path / f"merged_{server_round}"
        report = aggregate(
            save_clients(tmp_path, f"round_{server_round}", updates), method, merged, data_sizes=list(SIZES), **options
        )
        expected = read_adapter(merged).modules
        for module in SHAPES:
            ours = dense(*step.global_factors[module])
            theirs = dense(expected[module].B, expected[module].A)
            if method == "stack" and previous is not None:
                theirs = theirs + dense(*previous[module])
            assert rel(ours, theirs) < 1e-6  # the adapters on disk are float32
            if method != "stack":
                for r in set(RANKS):
                    B, A = model.payload(r)[module]
                    sent = read_adapter(merged / f"rank_{r}").modules[module]
                    assert A.shape[0] == r and rel(dense(B, A), dense(sent.B, sent.A)) < 1e-6
        expected_error = report["adapters"]["."]["summary"]["max_relative_error"]
        assert step.summary["max_relative_error"] == pytest.approx(expected_error, rel=1e-5, abs=1e-7)
        previous = step.global_factors


def test_stack_accumulates_the_exact_sums_and_its_rank_grows():
    """Independent check in numpy float64: G_2 = Σ_rounds Σ_k p_k s_k B_k A_k; rank Σ r_k per round up to min(out, in)."""
    model = GlobalModel("stack")
    rounds = [make_updates(seed) for seed in (3, 4, 5)]
    target = {m: 0.0 for m in SHAPES}
    weights = [n / sum(SIZES) for n in SIZES]
    for t, updates in enumerate(rounds, start=1):
        step = model.aggregate(t, updates)
        for module, (out, inp) in SHAPES.items():
            target[module] = target[module] + exact_sum(updates, module, weights)
            assert rel(dense(*model.factors[module]), target[module]) < 1e-10
            assert model.factors[module][1].shape[0] == min(out, inp, t * sum(RANKS))
        assert step.summary["max_relative_error"] < 1e-12
    assert model.payload(2) is model.factors  # stack sends the whole global update


def test_svd_is_the_eckart_young_truncation_and_clients_get_their_own_rank():
    model = GlobalModel("svd", global_rank=4)
    updates = make_updates(6)
    step = model.aggregate(1, updates)
    weights = client_weights(updates, "examples")
    for module in SHAPES:
        delta = exact_sum(updates, module, weights)
        U, S, Vt = np.linalg.svd(delta)
        best = (U[:, :4] * S[:4]) @ Vt[:4]
        assert rel(dense(*model.factors[module]), best) < 1e-10
        best2 = (U[:, :2] * S[:2]) @ Vt[:2]
        assert rel(dense(*model.payload(2)[module]), best2) < 1e-10
        assert step.result[module].report.relative_error == pytest.approx(np.sqrt((S[4:] ** 2).sum() / (S**2).sum()))
    assert model.payload(9)["model.layers.0.self_attn.q_proj"][1].shape[0] == 4  # a rank above R gets all of G


def test_zeropad_is_the_padded_average_with_its_dilution():
    """HetLoRA in numpy: A = Σ q_k √s Â_k, B = Σ q_k √s B̂_k; its error against the exact sum is reported."""
    model = GlobalModel("zeropad")
    updates = make_updates(7)
    step = model.aggregate(1, updates)
    q = client_weights(updates, "examples")
    for module, (out, inp) in SHAPES.items():
        A = np.zeros((5, inp))
        B = np.zeros((out, 5))
        for u, qk in zip(updates, q, strict=True):
            f = u.factors[module]
            A[: f.rank] += qk * math.sqrt(SCALING) * f.A.double().numpy()
            B[:, : f.rank] += qk * math.sqrt(SCALING) * f.B.double().numpy()
        assert rel(dense(*model.factors[module]), B @ A) < 1e-10
        report = step.result[module].report
        assert report.relative_error == pytest.approx(rel(B @ A, exact_sum(updates, module, q)), rel=1e-8)
        assert report.relative_error > report.optimal_error  # worse than the best rank-5 update
        assert report.energy_kept < 1  # diluted


def test_refactor_exact_keeps_the_product():
    g = torch.Generator().manual_seed(8)
    B, A = torch.randn(6, 9, generator=g, dtype=torch.float64), torch.randn(9, 4, generator=g, dtype=torch.float64)
    B2, A2 = refactor_exact(B, A)
    assert A2.shape[0] == 4 and rel(dense(B2, A2), dense(B, A)) < 1e-12


def test_one_update_or_an_unknown_method_is_refused():
    with pytest.raises(InputError, match="method: must be one of stack, svd, zeropad"):
        GlobalModel("mean")
    with pytest.raises(InputError, match="round 1: needs at least 2 client updates"):
        GlobalModel("svd").aggregate(1, make_updates(0)[:1])
