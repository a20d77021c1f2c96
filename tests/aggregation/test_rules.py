"""Heterogeneous-rank aggregation: properties against dense float64 references, PEFT agreement, seed experiments.

References are computed independently: the weighted sum Σ p_k s_k B_k A_k is formed densely and its SVD taken with
``torch.linalg.svd`` (float64); the functions under test never form it.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from builders import one_torch_thread  # noqa: F401 (autouse fixture)
from helpers import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from svdlora_pl.aggregation.rules import (
    aggregate,
    aggregate_modules,
    normalize_weights,
    stack,
    svd,
    zeropad,
    zeropad_weights,
)
from svdlora_pl.errors import InputError
from svdlora_pl.lora.factors import LoRAFactors

PROPERTY = settings(max_examples=40, deadline=None, database=None)  # no .hypothesis/ left in the tree


@st.composite
def client_sets(draw):
    """(clients, weights): 1-4 clients of one small module shape, ranks 1-6, positive scalings and weights."""
    out, inp = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    ranks = draw(st.lists(st.integers(1, 6), min_size=1, max_size=4))
    scalings = draw(st.lists(st.floats(0.1, 4.0), min_size=len(ranks), max_size=len(ranks)))
    weights = draw(st.lists(st.floats(0.1, 10.0), min_size=len(ranks), max_size=len(ranks)))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    clients = [
        LoRAFactors(torch.randn(out, r, generator=generator, dtype=torch.float64),
                    torch.randn(r, inp, generator=generator, dtype=torch.float64), s)
        for r, s in zip(ranks, scalings, strict=True)
    ]  # fmt: skip
    return clients, weights


def dense_sum(clients, weights) -> torch.Tensor:
    p = normalize_weights(weights, len(clients))
    return sum(pk * c.scaling * (c.B.double() @ c.A.double()) for pk, c in zip(p, clients, strict=True))


def rel(X: torch.Tensor, Y: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(X - Y) / torch.linalg.matrix_norm(Y))


def optimum(D: torch.Tensor, rank: int) -> float:
    S = torch.linalg.svdvals(D)
    return float(S[rank:].square().sum().sqrt() / S.square().sum().sqrt())


# ---------------------------------------------------------------- properties
@PROPERTY
@given(client_sets())
def test_stack_is_exact(data):
    clients, weights = data
    result = stack(clients, weights)
    assert result.report.rank == sum(c.rank for c in clients)
    assert rel(result.B @ result.A, dense_sum(clients, weights)) <= 1e-5
    assert result.report.relative_error <= 1e-5 and math.isclose(result.report.energy_kept, 1.0, rel_tol=1e-6)


@PROPERTY
@given(client_sets(), st.integers(1, 8), st.sampled_from(["sqrt", "B"]))
def test_svd_error_is_the_eckart_young_optimum(data, rank, split):
    clients, weights = data
    D = dense_sum(clients, weights)
    result = svd(clients, weights, rank=rank, split=split)
    R = min(rank, *D.shape, sum(c.rank for c in clients))
    assert result.report.rank == R and result.report.clamped == (rank > R)
    best = optimum(D, R)
    assert abs(rel(result.B @ result.A, D) - best) <= 1e-5
    assert abs(result.report.relative_error - best) <= 1e-5
    assert abs(result.report.optimal_error - best) <= 1e-5
    assert abs(result.report.energy_kept - (1 - best**2)) <= 1e-5


@PROPERTY
@given(client_sets(), st.integers(0, 3))
def test_svd_at_full_rank_equals_stack(data, extra):
    clients, weights = data
    full = svd(clients, weights, rank=sum(c.rank for c in clients) + extra)
    stacked = stack(clients, weights)
    assert rel(full.B @ full.A, stacked.B @ stacked.A) <= 1e-5


@PROPERTY
@given(client_sets(), st.booleans())
def test_zeropad_reported_error_is_the_measured_error(data, norm_weighted):
    clients, weights = data
    result = zeropad(clients, weights, norm_weighted=norm_weighted)
    D = dense_sum(clients, weights)
    assert result.report.rank == max(c.rank for c in clients)
    assert abs(result.report.relative_error - rel(result.B @ result.A, D)) <= 1e-5
    product_norm = torch.linalg.matrix_norm(result.B @ result.A)
    assert math.isclose(
        result.report.energy_kept, float(product_norm**2 / torch.linalg.matrix_norm(D) ** 2), rel_tol=1e-6
    )


@PROPERTY
@given(client_sets())
def test_per_client_ranks_by_truncation(data):
    """svd at a client's rank r_k is the optimum at r_k; zeropad at r_k keeps the first r_k padded components."""
    clients, weights = data
    D = dense_sum(clients, weights)
    padded = zeropad(clients, weights)
    for c in clients:
        mine = svd(clients, weights, rank=c.rank)
        assert abs(mine.report.relative_error - optimum(D, min(c.rank, *D.shape))) <= 1e-5
        cut = zeropad(clients, weights, rank=c.rank)
        torch.testing.assert_close(cut.A, padded.A[: c.rank])
        torch.testing.assert_close(cut.B, padded.B[:, : c.rank])


@PROPERTY
@given(client_sets(), st.floats(0.01, 100.0))
def test_weights_are_normalized(data, factor):
    clients, weights = data
    a, b = svd(clients, weights), svd(clients, [w * factor for w in weights])
    torch.testing.assert_close(a.B @ a.A, b.B @ b.A)


def test_zeropad_equal_ranks_is_fedit_averaging():
    """Equal ranks and scalings: B·A = s·(Σ p_k B_k)(Σ p_k A_k) (FedIT), plain p_k weights."""
    g = torch.Generator().manual_seed(0)
    clients = [LoRAFactors(torch.randn(6, 3, generator=g), torch.randn(3, 5, generator=g), 2.0) for _ in range(3)]
    p = [0.2, 0.3, 0.5]
    result = zeropad(clients, p)
    expected = (
        2.0
        * sum(pk * c.B for pk, c in zip(p, clients, strict=True)).double()
        @ sum(pk * c.A for pk, c in zip(p, clients, strict=True)).double()
    )
    torch.testing.assert_close(result.B @ result.A, expected)


def test_zeropad_norm_weights_follow_update_norms():
    g = torch.Generator().manual_seed(1)
    small = LoRAFactors(torch.randn(4, 2, generator=g), torch.randn(2, 4, generator=g), 1.0)
    big = LoRAFactors(small.B * 3, small.A, 1.0)
    assert zeropad_weights([small, big], None, norm_weighted=True) == pytest.approx([0.25, 0.75])
    assert zeropad_weights([small, big], [3, 1], norm_weighted=True) == pytest.approx([0.5, 0.5])


def test_svd_split_conventions():
    g = torch.Generator().manual_seed(2)
    clients = [LoRAFactors(torch.randn(8, r, generator=g), torch.randn(r, 7, generator=g)) for r in (2, 3)]
    B_side = svd(clients, rank=3, split="B")
    torch.testing.assert_close(B_side.A @ B_side.A.T, torch.eye(3, dtype=torch.float64))  # A = Vᵀ
    balanced = svd(clients, rank=3)
    torch.testing.assert_close(balanced.B.norm(dim=0), balanced.A.norm(dim=1))  # √Σ on each side
    torch.testing.assert_close(balanced.B @ balanced.A, B_side.B @ B_side.A)


def test_zero_updates_report_finite_values():
    zero = LoRAFactors(torch.zeros(4, 2), torch.randn(2, 3))  # PEFT's B = 0 start
    report = svd([zero, zero], rank=1).report
    assert report.relative_error == 0.0 and report.energy_kept == 1.0 and report.numerical_rank == 0
    assert report.to_dict()["relative_error"] == 0.0


def test_aggregate_modules_runs_every_module_and_names_bad_one():
    g = torch.Generator().manual_seed(3)

    def client(r):
        return {m: LoRAFactors(torch.randn(5, r, generator=g), torch.randn(r, 4, generator=g)) for m in ("a.q", "a.k")}

    clients = [client(2), client(3)]
    result = aggregate_modules(clients, "svd", ranks={"a.q": 1, "a.k": 2})
    assert {m: a.report.rank for m, a in result.items()} == {"a.q": 1, "a.k": 2}
    clients[1]["a.k"] = LoRAFactors(torch.randn(6, 3), torch.randn(3, 4))
    with pytest.raises(InputError, match=r"^a\.k: client 1: update shape 6×4 differs"):
        aggregate_modules(clients, "stack")
    del clients[1]["a.k"]
    with pytest.raises(InputError, match="module set differs"):
        aggregate_modules(clients, "stack")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: stack(c, [1.0]), "got 1 weights for 2 clients"),
        (lambda c: stack(c, [1.0, 0.0]), "weight 1 must be a finite number > 0"),
        (lambda c: stack(c, [1.0, -2.0]), "weight 1 must be a finite number > 0"),
        (lambda c: stack(c, [1.0, float("nan")]), "weight 1 must be a finite number > 0"),
        (lambda c: svd(c, rank=0), "rank must be >= 1"),
        (lambda c: stack([c[0], LoRAFactors(torch.randn(3, 2), torch.randn(2, 4))]), "client 1: update shape 3×4"),
        (lambda c: stack([c[0], LoRAFactors(torch.full((4, 2), math.nan), torch.randn(2, 4))]), "non-finite"),
        (lambda c: aggregate("mean", c), "method must be one of"),
        (lambda c: stack([]), "no clients"),
    ],
)
def test_bad_input_raises_input_error(call, message):
    clients = [LoRAFactors(torch.randn(4, r), torch.randn(r, 4)) for r in (1, 2)]
    with pytest.raises(InputError, match=message):
        call(clients)


# ---------------------------------------------------------------- agreement with PEFT's add_weighted_adapter
@pytest.fixture(scope="module")
def peft_merged(tmp_path_factory):
    """Three tiny-model adapters (r = 3, 5, 8; different alphas, one rsLoRA) merged by PEFT with "cat" and "svd"."""
    from builders import make_adapter, tiny_base
    from peft import PeftModel

    from svdlora_pl.lora.adapters import read_adapter

    root = tmp_path_factory.mktemp("peft_merge")
    specs = [("c0", 3, 6, {}), ("c1", 5, 5, {}), ("c2", 8, 4, {"use_rslora": True})]
    paths = [make_adapter(root / name, r, alpha, seed=i, **extra) for i, (name, r, alpha, extra) in enumerate(specs)]
    model = PeftModel.from_pretrained(tiny_base(), paths[0], adapter_name="c0")
    for (name, *_), path in zip(specs[1:], paths[1:], strict=True):
        model.load_adapter(path, adapter_name=name)
    weights = [0.2, 0.3, 0.5]
    names = [name for name, *_ in specs]
    model.add_weighted_adapter(names, weights, "cat", combination_type="cat")
    model.add_weighted_adapter(names, weights, "svd", combination_type="svd", svd_rank=6, svd_full_matrices=False)
    return model, [read_adapter(p) for p in paths], weights


def _lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return {n.removeprefix("base_model.model."): m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def test_stack_agrees_with_peft_cat(peft_merged):
    """PEFT "cat": A = [w_k s_k A_k], B = [B_k], lora_alpha = Σr_k (scaling 1): the same product as ours."""
    model, adapters, weights = peft_merged
    for module, layer in _lora_layers(model).items():
        ours = stack([a.modules[module] for a in adapters], weights)
        assert layer.scaling["cat"] == 1.0
        assert rel(layer.get_delta_weight("cat").double(), ours.B @ ours.A) <= 1e-5, module


def test_svd_agrees_with_peft_svd(peft_merged):
    """PEFT "svd": dense Σ w_k ΔW_k, torch.linalg.svd, B = U_R·Σ_R, A = V_Rᵀ: the same rank-R product as ours."""
    model, adapters, weights = peft_merged
    for module, layer in _lora_layers(model).items():
        ours = svd([a.modules[module] for a in adapters], weights, rank=6, split="B")
        theirs = layer.lora_B["svd"].weight.double() @ layer.lora_A["svd"].weight.double() * layer.scaling["svd"]
        assert rel(theirs, ours.B @ ours.A) <= 1e-4, module


def test_peft_merge_inherits_rslora_from_first_adapter(tmp_path):
    """PEFT 0.21 quirk, documented in docs/federated.md: add_weighted_adapter sets lora_alpha = r but copies
    use_rslora from the first adapter, so with an rsLoRA adapter first the merged update is √r times too large.
    Our written adapters set use_rslora = false; the raw PEFT factors still agree with ours."""
    from builders import make_adapter, tiny_base
    from peft import PeftModel

    from svdlora_pl.lora.adapters import read_adapter

    paths = [
        make_adapter(tmp_path / "rs", 4, 4, seed=0, use_rslora=True),
        make_adapter(tmp_path / "plain", 2, 4, seed=1),
    ]
    model = PeftModel.from_pretrained(tiny_base(), paths[0], adapter_name="rs")
    model.load_adapter(paths[1], adapter_name="plain")
    model.add_weighted_adapter(["rs", "plain"], [0.5, 0.5], "cat", combination_type="cat")
    adapters = [read_adapter(p) for p in paths]
    module, layer = next(iter(_lora_layers(model).items()))
    ours = stack([a.modules[module] for a in adapters], [0.5, 0.5])
    raw = layer.lora_B["cat"].weight.double() @ layer.lora_A["cat"].weight.double()
    assert rel(raw, ours.B @ ours.A) <= 1e-5
    assert layer.scaling["cat"] in (1.0, pytest.approx(math.sqrt(6)))  # √6 while the quirk lasts


# ---------------------------------------------------------------- the seed notebook's experiments
@pytest.fixture(scope="module")
def seed_example():
    spec = importlib.util.spec_from_file_location(
        "seed_notebook_experiments", ROOT / "examples" / "seed_notebook_experiments.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seed_stacking_ranks_3_5_8_is_exact(seed_example):
    result = seed_example.experiment_stacking()
    assert result["A_shape"] == (16, 10) and result["B_shape"] == (10, 16) and result["product_shape"] == (10, 10)
    assert result["stacked_rank"] == 16 and result["numerical_rank"] == 10
    assert result["relative_error"] < 1e-12 and result["dense_relative_error"] < 1e-12


def test_seed_fedavg_then_svd_reaches_the_optimum(seed_example):
    result = seed_example.experiment_fedavg_svd()
    assert result["B_shape"] == (10, 5) and result["A_shape"] == (5, 10)
    assert result["dense_error"] == pytest.approx(result["optimal_error"], rel=1e-10)
    assert result["factored_error"] == pytest.approx(result["optimal_error"], rel=1e-10)
    assert result["relative_error"] == pytest.approx(result["relative_optimum"], rel=1e-10)


def test_seed_rank_mismatch_dilution_and_rank_ceiling(seed_example, capsys):
    result = seed_example.experiment_rank_mismatch()
    assert result["zeropad_A_updated"] == 3.0 and result["zeropad_A_diluted"] == 2.5  # the seed's 3.00 and 2.50
    assert result["exact_entry"] == 1285.0 and result["zeropad_entry"] == 817.5
    assert result["zeropad_relative_error"] == pytest.approx(1 - 817.5 / 1285.0)
    assert result["svd_rank_requested"] == 100 and result["svd_rank"] == 10 and result["svd_clamped"]
    assert result["svd_numerical_rank"] == 1 and result["svd_relative_error"] < 1e-12
    assert result["generic_svd_rank"] == 10 and result["generic_numerical_rank"] == 10
    seed_example.main()
    assert "3.00" in capsys.readouterr().out
