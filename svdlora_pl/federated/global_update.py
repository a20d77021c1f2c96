"""The server's aggregation step: the clients' replies of a round -> the global update, and what each client is sent.

Client k returns ΔW_k = s_k·B_k·A_k (rank r_k) and its weight p_k (∝ its training records, or equal); the exact
target of a round is Σ_k p_k·s_k·B_k·A_k per module (:mod:`svdlora_pl.aggregation.rules`). The global state G is
kept as factors with the scaling folded in (B·A = G), in float64, and what each method does with it:

- ``stack`` (FLoRA): the round's exact sum, rank Σ r_k, is *added* to G (clients fold G into their base and return
  only the round's update), G = G + Σ_k p_k s_k B_k A_k. G is re-factorized exactly after each round (the factored
  SVD of the concatenated factors, all min(out, in, rank) triplets kept), so its rank grows by Σ r_k per round up to
  min(out, in). Clients are sent all of G (``fold``): exact, but the message grows with the rank.
- ``svd`` (FlexLoRA): G = the best rank-R approximation of the round's exact sum (Eckart–Young, R = ``global_rank``,
  default max r_k); client k is sent the best rank-r_k approximation, the first r_k of G's components (``init``).
- ``zeropad`` (HetLoRA / FedIT): G = the zero-padded average of A and B (rank max r_k, inexact: cross terms and
  dilution); client k is sent the first r_k components (HetLoRA's truncation) (``init``).

Each round's aggregate is exactly what ``svdlora aggregate`` (:func:`svdlora_pl.aggregation.merge.aggregate`) computes
from the same client adapters and weights (``--per_client_ranks true`` for what the clients are sent); for stack it is
the round's increment. Its report (relative error against the exact sum, the Eckart–Young optimum at the same rank,
the energy kept) is the round's aggregation error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from svdlora_pl.aggregation.report import summarize
from svdlora_pl.aggregation.rules import Aggregate, aggregate_modules, normalize_weights
from svdlora_pl.errors import InputError
from svdlora_pl.lora.factors import LoRAFactors
from svdlora_pl.spectral import factored_svd, split_factors

GlobalFactors = dict[str, tuple[Tensor, Tensor]]
"""``{base module path: (B, A)}``, B·A the global update (scaling 1)."""


@dataclass(frozen=True)
class ClientUpdate:
    """One client's reply in a round.

    Attributes:
        partition: The client's partition id.
        factors: Its LoRA factors per base module path (with its scaling).
        num_examples: Its number of training records.
        train_loss: Its training loss (NaN when unknown).
    """

    partition: int
    factors: Mapping[str, LoRAFactors]
    num_examples: int
    train_loss: float = float("nan")

    @property
    def rank(self) -> int:
        """Its LoRA rank (the largest over its modules)."""
        return max(f.rank for f in self.factors.values())


@dataclass(frozen=True)
class RoundAggregate:
    """The server's step of one round.

    Attributes:
        server_round: The round (1-based).
        updates: The clients' updates, by partition id.
        weights: Their normalized weights p_k, in the same order.
        result: This round's aggregate per module (stack: the round's increment, not yet added to G).
        global_factors: The global update G after the round.
        summary: The aggregate in numbers (:func:`svdlora_pl.aggregation.report.summarize`) plus ``global_ranks``.
    """

    server_round: int
    updates: tuple[ClientUpdate, ...]
    weights: tuple[float, ...]
    result: dict[str, Aggregate]
    global_factors: GlobalFactors
    summary: dict[str, Any]


def client_weights(updates: Sequence[ClientUpdate], weighting: str) -> list[float]:
    """p_k ∝ number of training records (``examples``) or 1/K (``equal``)."""
    if weighting == "equal":
        return normalize_weights(None, len(updates))
    return normalize_weights([float(u.num_examples) for u in updates], len(updates))


def refactor_exact(B: Tensor, A: Tensor) -> tuple[Tensor, Tensor]:
    """The same update B·A as factors of rank min(out, in, rank): all singular triplets, √Σ to each side."""
    full = factored_svd(B, A)
    return split_factors(full, int(full.S.numel()))


def add_updates(previous: GlobalFactors | None, increment: Mapping[str, Aggregate]) -> GlobalFactors:
    """G + increment per module (stack's accumulation), re-factorized exactly."""
    result: GlobalFactors = {}
    for module, agg in increment.items():
        B, A = agg.B.to(torch.float64), agg.A.to(torch.float64)
        if previous is not None:
            B_prev, A_prev = previous[module]
            B, A = torch.cat([B_prev, B], dim=1), torch.cat([A_prev, A], dim=0)
        result[module] = refactor_exact(B, A)
    return result


class GlobalModel:
    """The global LoRA update of a federated run and the aggregation step that moves it.

    Args:
        method: ``stack``, ``svd`` or ``zeropad`` (see the module docstring).
        global_rank: svd only: the global rank R (None: the largest client rank).
        weighting: ``examples`` or ``equal``.
    """

    def __init__(self, method: str, global_rank: int | None = None, weighting: str = "examples") -> None:
        if method not in ("stack", "svd", "zeropad"):
            raise InputError(f"method: must be one of stack, svd, zeropad, got {method!r}")
        self.method = method
        self.global_rank = global_rank
        self.weighting = weighting
        self.factors: GlobalFactors | None = None

    def aggregate(self, server_round: int, updates: Sequence[ClientUpdate]) -> RoundAggregate:
        """Merge one round's client updates into the new global update (the clients in any order)."""
        if len(updates) < 2:
            raise InputError(f"round {server_round}: needs at least 2 client updates to aggregate, got {len(updates)}")
        ordered = tuple(sorted(updates, key=lambda u: u.partition))
        weights = client_weights(ordered, self.weighting)
        clients = [dict(u.factors) for u in ordered]
        ranks = self.global_rank if self.method == "svd" else None
        result = aggregate_modules(clients, self.method, weights, ranks=ranks)
        if self.method == "stack":
            self.factors = add_updates(self.factors, result)
        else:
            self.factors = {m: (a.B.to(torch.float64), a.A.to(torch.float64)) for m, a in result.items()}
        summary = {**summarize(result), "global_ranks": sorted({int(A.shape[0]) for _, A in self.factors.values()})}
        return RoundAggregate(server_round, ordered, tuple(weights), result, self.factors, summary)

    def payload(self, rank: int | None) -> GlobalFactors | None:
        """What a client of this rank is sent (None before round 1; the whole G for stack or an unknown rank).

        svd and zeropad send the first ``rank`` components of G: for svd (√Σ split, descending σ) that is the best
        rank-``rank`` approximation, for zeropad HetLoRA's truncation.
        """
        if self.factors is None:
            return None
        if self.method == "stack" or rank is None:
            return self.factors
        return {m: (B[:, :rank].contiguous(), A[:rank].contiguous()) for m, (B, A) in self.factors.items()}
