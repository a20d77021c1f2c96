"""The seed notebook's three aggregation experiments, redone in PEFT's orientation with svdlora_pl.aggregation.rules.

Run: ``python examples/seed_notebook_experiments.py`` (CPU, a second).

Orientation. For a Linear with weight W (out×in), PEFT stores A (r×in) and B (out×r), ΔW = B·A. The seed's
first cell stacked A (d×r) along columns and B (r×k) along rows, then multiplied B_stacked @ A_stacked: a
(Σr)×(Σr) = 16×16 matrix, not the 10×10 update (the correct product in its convention was A_stacked @
B_stacked). Here A_k is r_k×in, B_k is out×r_k, the stack is A = [p_k A_k] (rows), B = [B_k] (columns), and B·A
is the 10×10 weighted sum.

1. Stacking ranks 3, 5, 8 with weights 1/3 gives factors of rank 16 whose product equals Σ p_k B_k A_k exactly
   (the 10×10 product itself has rank at most 10).
2. FedAvg of the full updates, then SVD to rank 5: the error is the Eckart–Young optimum √(Σ_{i>5} σᵢ²), and
   the factored SVD (never forming ΔW) gives the same error as the dense one.
3. Rank mismatch, global rank 100 (all fives) vs local rank 70 (all ones), weights ½, on a 10×10 layer: zero
   padding averages the first 70 rank components to 3.00 but dilutes the other 30 to 2.50 (the seed's values),
   and its product misses the exact average by a large relative error; the SVD route gives a 10×10 update of
   rank at most 10 — asked for rank 100, it is clamped to 10 (and here the update has numerical rank 1).
"""

from __future__ import annotations

from typing import Any

import torch

from svdlora_pl.aggregation.rules import normalize_weights, stack, svd, zeropad
from svdlora_pl.lora.factors import LoRAFactors

OUT, IN = 10, 10
CLIENT_RANKS = (3, 5, 8)


def random_clients(ranks: tuple[int, ...] = CLIENT_RANKS, seed: int = 0) -> list[LoRAFactors]:
    """Clients with Gaussian B_k (OUT×r_k) and A_k (r_k×IN), float64, scaling 1."""
    generator = torch.Generator().manual_seed(seed)
    return [
        LoRAFactors(B=torch.randn(OUT, r, generator=generator, dtype=torch.float64),
                    A=torch.randn(r, IN, generator=generator, dtype=torch.float64))
        for r in ranks
    ]  # fmt: skip


def dense_weighted_sum(clients: list[LoRAFactors], weights: list[float]) -> torch.Tensor:
    """Σ_k p_k s_k B_k A_k formed densely (the independent reference)."""
    return sum(p * c.scaling * (c.B @ c.A) for p, c in zip(weights, clients, strict=True))


def experiment_stacking(seed: int = 0) -> dict[str, Any]:
    """(1) Stack ranks 3, 5, 8 with weights 1/3: rank 16 factors, product = weighted sum exactly."""
    clients = random_clients(seed=seed)
    weights = normalize_weights(None, len(clients))
    result = stack(clients, weights)
    exact = dense_weighted_sum(clients, weights)
    return {
        "A_shape": tuple(result.A.shape),
        "B_shape": tuple(result.B.shape),
        "product_shape": tuple((result.B @ result.A).shape),
        "stacked_rank": result.report.rank,
        "numerical_rank": result.report.numerical_rank,
        "relative_error": result.report.relative_error,
        "dense_relative_error": float(
            torch.linalg.matrix_norm(result.B @ result.A - exact) / torch.linalg.matrix_norm(exact)
        ),
    }


def experiment_fedavg_svd(seed: int = 0, rank: int = 5) -> dict[str, Any]:
    """(2) FedAvg of the full updates, SVD to rank 5: dense error = factored error = Eckart–Young optimum."""
    clients = random_clients(seed=seed)
    weights = normalize_weights(None, len(clients))
    exact = dense_weighted_sum(clients, weights)
    U, S, Vh = torch.linalg.svd(exact)
    root = S[:rank].sqrt()
    B_dense, A_dense = U[:, :rank] * root, root[:, None] * Vh[:rank]  # the seed's B' = U√Σ, A' = √ΣVᵀ
    ours = svd(clients, weights, rank=rank)
    return {
        "B_shape": tuple(ours.B.shape),
        "A_shape": tuple(ours.A.shape),
        "dense_error": float(torch.linalg.matrix_norm(exact - B_dense @ A_dense)),
        "factored_error": float(torch.linalg.matrix_norm(exact - ours.B @ ours.A)),
        "optimal_error": float(S[rank:].square().sum().sqrt()),
        "relative_error": ours.report.relative_error,
        "relative_optimum": ours.report.optimal_error,
    }


def experiment_rank_mismatch(r_global: int = 100, r_local: int = 70) -> dict[str, Any]:
    """(3) Global rank 100 (all fives) vs local rank 70 (all ones), weights ½, on a 10×10 layer."""
    ones = torch.ones((), dtype=torch.float64)
    global_ = LoRAFactors(B=5 * ones.expand(OUT, r_global), A=5 * ones.expand(r_global, IN))
    local = LoRAFactors(B=ones.expand(OUT, r_local), A=ones.expand(r_local, IN))
    clients, weights = [global_, local], [0.5, 0.5]
    padded = zeropad(clients, weights)
    merged = svd(clients, weights, rank=r_global)
    generic = svd(random_clients((r_global, r_local)), weights, rank=r_global)
    exact = dense_weighted_sum(clients, weights)
    return {
        "zeropad_A_updated": float(padded.A[0, 0]),  # rank components 1..70: (5 + 1) / 2
        "zeropad_A_diluted": float(padded.A[r_local, 0]),  # components 71..100: (5 + 0) / 2
        "exact_entry": float(exact[0, 0]),  # ½·100·25 + ½·70·1 = 1285
        "zeropad_entry": float((padded.B @ padded.A)[0, 0]),  # 70·3² + 30·2.5² = 817.5
        "zeropad_relative_error": padded.report.relative_error,
        "svd_rank_requested": merged.report.rank_requested,
        "svd_rank": merged.report.rank,
        "svd_clamped": merged.report.clamped,
        "svd_numerical_rank": merged.report.numerical_rank,
        "svd_relative_error": merged.report.relative_error,
        "generic_svd_rank": generic.report.rank,
        "generic_numerical_rank": generic.report.numerical_rank,
    }


def main() -> None:
    one = experiment_stacking()
    print("(1) stacking ranks 3, 5, 8, weights 1/3 (PEFT orientation)")
    print(
        f"    A {one['A_shape']}, B {one['B_shape']}, B·A {one['product_shape']}; stacked rank {one['stacked_rank']}, "
        f"numerical rank of the 10×10 product {one['numerical_rank']}"
    )
    print(
        f"    relative error vs Σ p_k B_k A_k: reported {one['relative_error']:.2e} (exact by construction), dense check {one['dense_relative_error']:.2e}"
    )
    two = experiment_fedavg_svd()
    print("(2) FedAvg of full updates, SVD to rank 5")
    print(
        f"    B' {two['B_shape']}, A' {two['A_shape']}; error ‖ΔW − B'A'‖_F: dense SVD {two['dense_error']:.6f}, "
        f"factored SVD {two['factored_error']:.6f}, Eckart–Young optimum {two['optimal_error']:.6f}"
    )
    print(f"    relative: {two['relative_error']:.6f} (optimum {two['relative_optimum']:.6f})")
    three = experiment_rank_mismatch()
    print("(3) rank mismatch: global r=100 (fives) vs local r=70 (ones), weights 1/2, 10×10 layer")
    print(
        f"    zero-padding: A in updated components (1..70) {three['zeropad_A_updated']:.2f}, "
        f"in diluted components (71..100) {three['zeropad_A_diluted']:.2f}"
    )
    print(
        f"    entry of the exact average {three['exact_entry']:.1f} vs zero-padded product {three['zeropad_entry']:.1f}: "
        f"relative error {three['zeropad_relative_error']:.4f}"
    )
    print(
        f"    SVD of the averaged update at rank {three['svd_rank_requested']}: rank {three['svd_rank']} "
        f"(clamped: {three['svd_clamped']}), numerical rank {three['svd_numerical_rank']}, "
        f"relative error {three['svd_relative_error']:.1e}"
    )
    print(
        f"    with random factors of ranks 100 and 70: rank {three['generic_svd_rank']}, "
        f"numerical rank {three['generic_numerical_rank']} — a 10×10 update never exceeds rank 10"
    )


if __name__ == "__main__":
    main()
