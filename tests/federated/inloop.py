"""The in-loop aggregation check shared by the federated runs' tests: every round's global adapter is what
``svdlora aggregate`` makes of that round's client adapters with the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from svdlora_pl.aggregation.merge import aggregate
from svdlora_pl.lora.adapters import read_adapter


def products(adapter: Path, rank: int | None = None) -> dict[str, torch.Tensor]:
    """``{module: s·B·A}`` of a PEFT adapter in float64 (only its first ``rank`` components when given)."""
    result = {}
    for module, f in read_adapter(adapter).modules.items():
        B, A = f.B.double(), f.A.double()
        if rank is not None:
            B, A = B[:, :rank], A[:rank]
        result[module] = f.scaling * B @ A
    return result


def worst_difference(ours: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> float:
    """The largest ‖ours − expected‖_F / ‖expected‖_F over the modules (same module set required)."""
    assert set(ours) == set(expected)
    return max(float((ours[m] - expected[m]).norm() / expected[m].norm()) for m in expected)


def assert_rounds_match_aggregate(output_dir: Path, scratch: Path, tolerance: float = 1e-5) -> dict:
    """Check every round of a finished run saved with ``save_client_adapters``; returns its report.

    stack: G_t = G_{t-1} + aggregate(stack) of round t's clients. svd and zeropad: G_t = aggregate(method), and the
    first r_k components of G_t (what client k is sent) = the per-client-rank adapter ``svdlora aggregate
    --per_client_ranks true`` writes for rank r_k.
    """
    report = json.loads((output_dir / "report.json").read_text())
    assert report["finished"]
    method, ranks = report["method"], report["options"]["ranks"]
    previous = None
    for row in report["rounds"]:
        directory = output_dir / f"round_{row['round']:03d}"
        clients = [directory / "clients" / f"client_{k}" for k in range(len(ranks))]
        merged = scratch / f"aggregate_round_{row['round']}"
        options = {} if method == "stack" else {"per_client_ranks": True}
        if method == "svd":
            options["rank"] = report["options"]["global_rank"]
        aggregate(clients, method, merged, weights=row["weights"], **options)
        ours, expected = products(directory / "adapter"), products(merged)
        if method == "stack" and previous is not None:
            expected = {m: previous[m] + expected[m] for m in expected}
        assert worst_difference(ours, expected) < tolerance, (row["round"], worst_difference(ours, expected))
        if method != "stack":
            for r in set(ranks):
                sent = products(directory / "adapter", rank=r)
                assert worst_difference(sent, products(merged / f"rank_{r}")) < tolerance, (row["round"], r)
        previous = ours
    return report
