"""Aggregation of LoRA updates trained with different ranks (federated clients), module by module.

Client k holds, for one Linear (out×in), factors in PEFT's orientation
(:class:`~svdlora_pl.lora.factors.LoRAFactors`) and a weight p_k (normalized, Σ p_k = 1):

    ΔW_k = s_k · B_k·A_k,   A_k: r_k×in,   B_k: out×r_k,   s_k = PEFT scaling (alpha/r or alpha/√r)

and the server's target is the exact weighted sum ΔW = Σ_k p_k·s_k·B_k·A_k. Three rules:

- :func:`stack` (FLoRA; PEFT's ``"cat"``): A = [p_1 s_1 A_1; …; p_K s_K A_K], B = [B_1, …, B_K], so
  B·A = ΔW exactly, at rank Σ r_k.
- :func:`svd` (FlexLoRA; PEFT's ``"svd"``): the best rank-R approximation of ΔW (Eckart–Young), computed from the
  stacked factors by :func:`svdlora_pl.spectral.factored_svd` (QR of B and Aᵀ, SVD of a Σr_k × Σr_k core): ΔW is
  never formed, O((out+in)·(Σr_k)²) instead of O(out·in·min(out, in)). Split B = U·√Σ, A = √Σ·Vᵀ (or B = U·Σ,
  A = Vᵀ). Sending client k its own rank r_k is ``svd(..., rank=r_k)``.
- :func:`zeropad` (HetLoRA / FedIT): pad every A_k, B_k with zero rows/columns to r_max and average A and B
  separately, A = Σ q_k √s_k Â_k, B = Σ q_k √s_k B̂_k. Inexact: B·A = Σ_{j,k} q_j q_k √(s_j s_k) B̂_j Â_k has cross
  terms (j ≠ k) and shrinks each client's own term by q_k (dilution). With ``norm_weighted``, q_k ∝ p_k·‖ΔW_k‖_F
  (HetLoRA's norm-based weights), else q_k = p_k. ``rank=r`` < r_max keeps the first r components (HetLoRA's
  per-client truncation).

Every function returns new factors (float64, scaling folded in: B·A is the aggregated update) and a
:class:`ModuleReport`: rank, relative error against ΔW, the Eckart–Young optimum at that rank, and the energy
ratio ‖B·A‖²_F/‖ΔW‖²_F. For stack and svd the result is a truncation of ΔW's SVD, so these follow from ΔW's
singular values (one factored SVD per module, nothing more); for zeropad they are measured in factored form
(the difference [B, B_s]·[A; −A_s] has rank r_max + Σ r_k; no subtraction of squared norms, no cancellation).

Rank policy: a requested rank above what the update can have, min(out, in, Σ r_k), is clamped (``clamped`` and
``rank_requested`` in the report say so); :func:`svdlora_pl.aggregation.merge.aggregate` (``svdlora aggregate``)
refuses such a rank instead.
Bad input (shapes, weights, ranks, non-finite values) raises :class:`~svdlora_pl.errors.InputError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from numbers import Integral
from typing import Any, Literal

import torch
from torch import Tensor

from svdlora_pl.errors import InputError
from svdlora_pl.io import finite_or_none
from svdlora_pl.lora.factors import LoRAFactors
from svdlora_pl.spectral import (
    FactoredSVD,
    energy_ratio,
    factored_relative_error,
    factored_svd,
    factored_svdvals,
    frobenius_norm,
    reconstruction_error,
    split_factors,
)

Method = Literal["stack", "svd", "zeropad"]
Split = Literal["sqrt", "B"]
NUMERICAL_RANK_RTOL = 1e-10
"""Singular values above this fraction of σ₁ count towards a report's ``numerical_rank``."""


@dataclass(frozen=True)
class ModuleReport:
    """What an aggregation rule did to one module.

    Attributes:
        method: ``stack``, ``svd`` or ``zeropad``.
        shape: (out, in) of the module.
        client_ranks: r_k of each client.
        rank: rank of the returned factors (rows of A).
        rank_requested: the rank asked for (None when the method fixes it).
        clamped: the requested (or default) rank exceeded the method's ceiling and was lowered: min(out, in, Σ r_k)
            for svd, r_max for zeropad.
        numerical_rank: singular values of B·A above ``NUMERICAL_RANK_RTOL``·σ₁.
        relative_error: ‖B·A − ΔW‖_F / ‖ΔW‖_F (0 when both are zero, inf when only ΔW is); stack/svd: from σ(ΔW),
            zeropad: measured.
        optimal_error: Eckart–Young optimum at ``rank``: √(Σ_{i>rank} σᵢ²(ΔW)) / ‖ΔW‖_F.
        energy_kept: ‖B·A‖²_F / ‖ΔW‖²_F (the kept spectral energy for stack/svd; zeropad can exceed 1).
        exact_norm: ‖ΔW‖_F of the exact weighted sum.
    """

    method: str
    shape: tuple[int, int]
    client_ranks: tuple[int, ...]
    rank: int
    rank_requested: int | None
    clamped: bool
    numerical_rank: int
    relative_error: float
    optimal_error: float
    energy_kept: float
    exact_norm: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: tuples as lists, non-finite floats as None."""
        return finite_or_none(asdict(self))


@dataclass(frozen=True)
class Aggregate:
    """Aggregated factors of one module (B·A is the aggregated update, scaling 1) and their report."""

    B: Tensor
    A: Tensor
    report: ModuleReport


# ---------------------------------------------------------------- validation and shared pieces
def normalize_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """p_k = w_k / Σ w_j (equal weights 1/K when ``weights`` is None); every w_k must be finite and > 0."""
    if count < 1:
        raise InputError("no clients to aggregate")
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise InputError(f"weights: got {len(weights)} weights for {count} clients")
    for k, w in enumerate(weights):
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w > 0):
            raise InputError(f"weights: weight {k} must be a finite number > 0, got {w!r}")
    total = math.fsum(weights)
    return [w / total for w in weights]


def _check_clients(clients: Sequence[LoRAFactors]) -> tuple[int, int]:
    """(out, in) shared by all clients; InputError for no client, bad factors, different shapes or scalings."""
    if not clients:
        raise InputError("no clients to aggregate")
    shape = clients[0].shape
    for k, c in enumerate(clients):
        if c.A.ndim != 2 or c.B.ndim != 2 or c.B.shape[1] != c.A.shape[0] or c.rank < 1:
            raise InputError(f"client {k}: B {tuple(c.B.shape)} and A {tuple(c.A.shape)} are not out×r and r×in")
        if c.shape != shape:
            raise InputError(
                f"client {k}: update shape {c.shape[0]}×{c.shape[1]} differs from client 0's {shape[0]}×{shape[1]}"
            )
        if not math.isfinite(c.scaling):
            raise InputError(f"client {k}: scaling must be finite, got {c.scaling!r}")
    return shape


def _f64(t: Tensor) -> Tensor:
    return t.detach().to(torch.float64)


def stacked_factors(clients: Sequence[LoRAFactors], weights: Sequence[float]) -> tuple[Tensor, Tensor]:
    """(B, A) = ([B_1, …, B_K], [p_1 s_1 A_1; …; p_K s_K A_K]) in float64: B·A = Σ_k p_k s_k B_k A_k exactly."""
    B = torch.cat([_f64(c.B) for c in clients], dim=1)
    A = torch.cat([_f64(c.A) * (p * c.scaling) for c, p in zip(clients, weights, strict=True)], dim=0)
    return B, A


def max_rank(clients: Sequence[LoRAFactors]) -> int:
    """The largest rank an aggregate of these clients can have: min(out, in, Σ r_k)."""
    out, inp = clients[0].shape
    return min(out, inp, sum(c.rank for c in clients))


def _resolve_rank(rank: int | None, default: int, ceiling: int) -> tuple[int, int | None, bool]:
    """(rank used, rank requested, clamped): ``rank`` (or ``default``) lowered to ``ceiling`` if above it."""
    if rank is None:
        return min(default, ceiling), None, default > ceiling
    if not isinstance(rank, Integral) or isinstance(rank, bool) or rank < 1:
        raise InputError(f"rank must be >= 1 (an integer), got {rank!r}")
    rank = int(rank)
    return min(rank, ceiling), rank, rank > ceiling


def _numerical_rank(S: Tensor) -> int:
    if S.numel() == 0 or float(S[0]) == 0.0:
        return 0
    return int((S > NUMERICAL_RANK_RTOL * S[0]).sum())


def _ratio(num: float, den: float) -> float:
    """num/den, with 0/0 = 1 (a zero update keeps all of a zero target) and x/0 = inf."""
    return num / den if den > 0 else (1.0 if num == 0 else math.inf)


def _measured_report(
    method: str,
    clients: Sequence[LoRAFactors],
    B: Tensor,
    A: Tensor,
    exact: tuple[Tensor, Tensor, Tensor],
    rank_requested: int | None = None,
    clamped: bool = False,
) -> ModuleReport:
    """Compare any B·A with the exact sum B_s·A_s (singular values S_exact), all in factored form.

    relative error = ‖[B, B_s]·[A; −A_s]‖_F / ‖B_s·A_s‖_F from QR cores (no cancellation), energy from σ(B·A).
    """
    B_s, A_s, S_exact = exact
    S = factored_svdvals(B, A)
    exact_norm = frobenius_norm(S_exact)
    return ModuleReport(
        method=method,
        shape=clients[0].shape,
        client_ranks=tuple(c.rank for c in clients),
        rank=int(A.shape[0]),
        rank_requested=rank_requested,
        clamped=clamped,
        numerical_rank=_numerical_rank(S),
        relative_error=factored_relative_error(B, A, B_s, A_s),
        optimal_error=reconstruction_error(S_exact, int(A.shape[0])),
        energy_kept=_ratio(frobenius_norm(S) ** 2, exact_norm**2),
        exact_norm=exact_norm,
    )


def _truncation_report(
    method: str,
    clients: Sequence[LoRAFactors],
    S_exact: Tensor,
    rank: int,
    rank_requested: int | None = None,
    clamped: bool = False,
) -> ModuleReport:
    """Report of a result that *is* the top-``rank`` truncation U_R·Σ_R·V_Rᵀ of ΔW (stack: all of it).

    Its error and energy follow from ΔW's singular values, with no further factorization:
    relative error = √(Σ_{i>R} σᵢ²)/‖ΔW‖_F (Eckart–Young), energy kept = Σ_{i≤R} σᵢ² / Σ σᵢ².
    """
    error = reconstruction_error(S_exact, rank)
    return ModuleReport(
        method=method,
        shape=clients[0].shape,
        client_ranks=tuple(c.rank for c in clients),
        rank=rank,
        rank_requested=rank_requested,
        clamped=clamped,
        numerical_rank=_numerical_rank(S_exact[:rank]),
        relative_error=error,
        optimal_error=error,
        energy_kept=energy_ratio(S_exact, rank),
        exact_norm=frobenius_norm(S_exact),
    )


# ---------------------------------------------------------------- the three rules
def stack(clients: Sequence[LoRAFactors], weights: Sequence[float] | None = None) -> Aggregate:
    """Exact aggregation by concatenation along the rank: B·A = Σ_k p_k s_k B_k A_k, rank Σ r_k.

    A = [p_1 s_1 A_1; …; p_K s_K A_K] (Σr_k × in), B = [B_1, …, B_K] (out × Σr_k). Weights and scalings go to A,
    as in PEFT's ``add_weighted_adapter(combination_type="cat")`` (which does not normalize its weights).
    """
    _check_clients(clients)
    p = normalize_weights(weights, len(clients))
    B, A = stacked_factors(clients, p)
    return Aggregate(B, A, _truncation_report("stack", clients, factored_svdvals(B, A), int(A.shape[0])))


def exact_svd(clients: Sequence[LoRAFactors], weights: Sequence[float] | None = None) -> FactoredSVD:
    """Thin SVD of ΔW = Σ_k p_k s_k B_k A_k from the stacked factors, never forming ΔW (k = min(out, in, Σr_k))."""
    _check_clients(clients)
    return factored_svd(*stacked_factors(clients, normalize_weights(weights, len(clients))))


def svd(
    clients: Sequence[LoRAFactors],
    weights: Sequence[float] | None = None,
    rank: int | None = None,
    split: Split = "sqrt",
) -> Aggregate:
    """Best rank-R approximation of ΔW = Σ_k p_k s_k B_k A_k (Eckart–Young), from factors only.

    ΔW = U·Σ·Vᵀ by :func:`~svdlora_pl.spectral.factored_svd` of the stacked factors; keep the top R = ``rank``
    (default max r_k, as PEFT's ``"svd"``; clamped to min(out, in, Σ r_k)) triplets; ``split="sqrt"``:
    B = U_R·√Σ_R, A = √Σ_R·V_Rᵀ; ``split="B"``: B = U_R·Σ_R, A = V_Rᵀ (PEFT's ``"svd"`` convention).
    Relative error = √(Σ_{i>R} σᵢ²)/‖ΔW‖_F, the optimum.
    """
    _check_clients(clients)
    R, requested, clamped = _resolve_rank(rank, max(c.rank for c in clients), max_rank(clients))
    B_s, A_s = stacked_factors(clients, normalize_weights(weights, len(clients)))
    full = factored_svd(B_s, A_s)
    B, A = split_factors(full, R, mode=split)
    return Aggregate(B, A, _truncation_report("svd", clients, full.S, R, requested, clamped))


def zeropad_weights(
    clients: Sequence[LoRAFactors], weights: Sequence[float] | None = None, norm_weighted: bool = False
) -> list[float]:
    """Averaging weights q_k of :func:`zeropad`: p_k, or with ``norm_weighted`` q_k ∝ p_k·‖s_k B_k A_k‖_F (HetLoRA).

    Falls back to p_k when every client update is zero.
    """
    p = normalize_weights(weights, len(clients))
    if not norm_weighted:
        return p
    norms = [frobenius_norm(factored_svdvals(c.B, c.A, abs(c.scaling))) for c in clients]
    scores = [pk * nk for pk, nk in zip(p, norms, strict=True)]
    total = math.fsum(scores)
    return [s / total for s in scores] if total > 0 else p


def _pad(t: Tensor, rank: int, dim: int) -> Tensor:
    """``t`` with zeros appended along ``dim`` up to size ``rank``."""
    shape = list(t.shape)
    shape[dim] = rank - t.shape[dim]
    return torch.cat([_f64(t), t.new_zeros(shape, dtype=torch.float64)], dim=dim)


def zeropad(
    clients: Sequence[LoRAFactors],
    weights: Sequence[float] | None = None,
    norm_weighted: bool = False,
    rank: int | None = None,
) -> Aggregate:
    """HetLoRA / FedIT: zero-pad every client to r_max and average A and B separately (inexact).

    Â_k = [A_k; 0] (r_max × in), B̂_k = [B_k, 0] (out × r_max); A = Σ q_k √|s_k| Â_k, B = Σ q_k sign(s_k) √|s_k| B̂_k
    with q_k from :func:`zeropad_weights`. ``rank`` r < r_max keeps the first r rows of A and columns of B
    (HetLoRA's redistribution; default and ceiling r_max). The report's relative error is measured against the exact
    Σ p_k s_k B_k A_k with the user's weights p_k.

    Not PEFT's ``"linear"`` merge (equal ranks only), which puts √(w_k s_k) on each side: its diagonal terms are
    w_k s_k B_k A_k, while averaging gives q_k² s_k B_k A_k; both keep the cross terms.
    """
    _check_clients(clients)
    r_max = max(c.rank for c in clients)
    R, requested, clamped = _resolve_rank(rank, r_max, r_max)
    q = zeropad_weights(clients, weights, norm_weighted)
    root = [math.sqrt(abs(c.scaling)) for c in clients]
    sign = [math.copysign(1.0, c.scaling) for c in clients]
    A = sum(_pad(c.A, r_max, 0) * (qk * rk) for c, qk, rk in zip(clients, q, root, strict=True))
    B = sum(_pad(c.B, r_max, 1) * (qk * rk * sk) for c, qk, rk, sk in zip(clients, q, root, sign, strict=True))
    A, B = A[:R].contiguous(), B[:, :R].contiguous()
    B_s, A_s = stacked_factors(clients, normalize_weights(weights, len(clients)))
    exact = (B_s, A_s, factored_svdvals(B_s, A_s))
    return Aggregate(B, A, _measured_report("zeropad", clients, B, A, exact, requested, clamped))


METHODS: dict[str, Callable[..., Aggregate]] = {"stack": stack, "svd": svd, "zeropad": zeropad}
"""Rule name -> function(clients, weights, **options)."""


def aggregate(
    method: Method, clients: Sequence[LoRAFactors], weights: Sequence[float] | None = None, **options: Any
) -> Aggregate:
    """Apply the rule ``method`` to one module (``options``: ``rank``, ``split``, ``norm_weighted`` as it takes)."""
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return METHODS[method](clients, weights, **options)


def aggregate_modules(
    clients: Sequence[Mapping[str, LoRAFactors]],
    method: Method,
    weights: Sequence[float] | None = None,
    ranks: int | Mapping[str, int] | None = None,
    **options: Any,
) -> dict[str, Aggregate]:
    """Aggregate whole adapters ({module path: factors} per client) module by module.

    Every client must hold the same modules. ``ranks``: one rank for every module, or a rank per module (e.g. a
    client's own ranks, to send it the global update at its rank), or None for the method's default.
    """
    if not clients:
        raise InputError("no clients to aggregate")
    modules = list(clients[0])
    for k, client in enumerate(clients[1:], start=1):
        if set(client) != set(modules):
            odd = sorted(set(client) ^ set(modules))[0]
            raise InputError(f"client {k}: module set differs from client 0's (first difference: {odd})")
    result: dict[str, Aggregate] = {}
    for module in modules:
        rank = ranks.get(module) if isinstance(ranks, Mapping) else ranks
        extra = {} if rank is None else {"rank": rank}
        try:
            result[module] = aggregate(method, [c[module] for c in clients], weights, **options, **extra)
        except InputError as error:
            raise InputError(f"{module}: {error}") from None
    return result
