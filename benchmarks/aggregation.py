"""Benchmark: SVD aggregation of heterogeneous-rank LoRA clients, factored (ours) vs dense (PEFT "svd", FlexLoRA).

Three clients with ranks 8, 16, 32 (alpha 16: scalings 2, 1, 0.5; weights ∝ data sizes 1, 2, 3) on Qwen2.5-7B
module shapes, aggregated to rank R (default 32 = max r_k, PEFT's default):

- ours: :func:`svdlora_pl.aggregation.rules.svd` — QR of the stacked B (out×56) and Aᵀ (in×56), SVD of the 56×56 core,
  split √Σ, plus its report (factored relative error, energy); float64 throughout.
- dense reference: ΔW = Σ p_k s_k B_k A_k formed in float32 (the adapters' dtype), ``torch.linalg.svd`` with
  ``full_matrices=False`` (PEFT's default ``full_matrices=True`` is slower still), B = U_R·Σ_R, A = V_Rᵀ.

Both errors ‖ΔW − B·A‖_F/‖ΔW‖_F are measured against the same dense float64 ΔW, next to the Eckart–Young optimum
from its singular values. One module per distinct shape is timed (q/o share 3584×3584, k/v 512×3584, gate/up
18944×3584, down 3584×18944); ``--quick`` times the 512×3584 shape only.

Times are the best of 5 runs (ours) and of 3 runs (dense, one run for the large shapes), both on ``--threads``
intra-op threads (default 1).

Run: ``python benchmarks/aggregation.py [--quick] [--rank R]`` (prints a table, the time ratio and the max error
difference; the dense SVD of one 18944×3584 update takes minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from svdlora_pl.aggregation.rules import normalize_weights, svd
from svdlora_pl.lora.factors import LoRAFactors
from svdlora_pl.spectral import cpu_threads

SHAPES = {  # Qwen2.5-7B: hidden 3584, intermediate 18944, 4 KV heads × 128
    "q_proj/o_proj": (3584, 3584),
    "k_proj/v_proj": (512, 3584),
    "gate_proj/up_proj": (18944, 3584),
    "down_proj": (3584, 18944),
}
QUICK = ("k_proj/v_proj",)
RANKS, ALPHA, DATA_SIZES = (8, 16, 32), 16.0, (1, 2, 3)


def make_clients(out: int, inp: int, seed: int) -> list[LoRAFactors]:
    """Clients with LoRA-like float32 factors: A ~ U(±1/√in) (PEFT's kaiming init scale), B ~ N(0, 0.01²)."""
    g = torch.Generator().manual_seed(seed)
    bound = 1 / inp**0.5
    return [
        LoRAFactors(
            B=torch.randn(out, r, generator=g) * 0.01,
            A=(torch.rand(r, inp, generator=g) * 2 - 1) * bound,
            scaling=ALPHA / r,
        )
        for r in RANKS
    ]


def dense_svd_aggregate(
    clients: list[LoRAFactors], weights: list[float], rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """PEFT "svd" / FlexLoRA: form Σ p_k s_k B_k A_k (float32), dense SVD, B = U_R Σ_R, A = V_Rᵀ."""
    delta = sum(p * c.scaling * (c.B @ c.A) for p, c in zip(weights, clients, strict=True))
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    return U[:, :rank] * S[:rank], Vh[:rank]


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    """(best seconds of ``repeat`` runs, last result): the least disturbed run on a shared machine."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def relative_error(delta: torch.Tensor, B: torch.Tensor, A: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(delta - B.double() @ A.double()) / torch.linalg.matrix_norm(delta))


def bench_shape(out: int, inp: int, rank: int, seed: int) -> dict[str, float]:
    clients = make_clients(out, inp, seed)
    weights = normalize_weights(list(DATA_SIZES), len(clients))
    t_ours, ours = timed(lambda: svd(clients, weights, rank=rank), repeat=5)
    small = out * inp < 4_000_000
    t_dense, (B_d, A_d) = timed(lambda: dense_svd_aggregate(clients, weights, rank), repeat=3 if small else 1)
    exact = sum(p * c.scaling * (c.B.double() @ c.A.double()) for p, c in zip(weights, clients, strict=True))
    S = torch.linalg.svdvals(exact)
    optimum = float(S[rank:].square().sum().sqrt() / S.square().sum().sqrt())
    return {
        "t_ours": t_ours, "t_dense": t_dense,
        "err_ours": relative_error(exact, ours.B, ours.A), "err_reported": ours.report.relative_error,
        "err_dense": relative_error(exact, B_d, A_d), "optimum": optimum,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the small 512×3584 shape")
    parser.add_argument("--rank", type=int, default=max(RANKS), help="aggregated rank R (default max r_k = 32)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads for both methods (default 1: on a shared 2-core machine OpenMP barriers "
        "make 2-thread LAPACK timings erratic, up to 50x for the QR of a tall panel; 0: torch's default)",
    )
    args = parser.parse_args()
    shapes = {k: v for k, v in SHAPES.items() if not args.quick or k in QUICK}
    print(
        f"svd aggregation, clients r = {RANKS} (alpha {ALPHA}), weights ∝ {DATA_SIZES}, R = {args.rank}, "
        f"torch {torch.__version__}, {args.threads or torch.get_num_threads()} thread(s) for both"
    )
    print(
        f"{'module':<18} {'shape':>12} {'ours s':>9} {'dense s':>9} {'ratio':>8} {'err ours':>10} {'err dense':>10} "
        f"{'optimum':>10} {'|Δerr|':>9}"
    )
    rows = []
    for i, (name, (out, inp)) in enumerate(shapes.items()):
        with cpu_threads(args.threads):
            row = bench_shape(out, inp, args.rank, seed=i)
        rows.append(row)
        diff = abs(row["err_ours"] - row["err_dense"])
        print(
            f"{name:<18} {f'{out}×{inp}':>12} {row['t_ours']:>9.4f} {row['t_dense']:>9.2f} "
            f"{row['t_dense'] / row['t_ours']:>7.0f}x {row['err_ours']:>10.6f} {row['err_dense']:>10.6f} "
            f"{row['optimum']:>10.6f} {diff:>9.1e}",
            flush=True,
        )
    total_ours, total_dense = sum(r["t_ours"] for r in rows), sum(r["t_dense"] for r in rows)
    max_diff = max(abs(r["err_ours"] - r["err_dense"]) for r in rows)
    max_opt = max(abs(r["err_ours"] - r["optimum"]) for r in rows)
    max_rep = max(abs(r["err_ours"] - r["err_reported"]) for r in rows)
    print(
        f"total: ours {total_ours:.3f} s, dense {total_dense:.1f} s, time ratio {total_dense / total_ours:.0f}x "
        f"(min per module {min(r['t_dense'] / r['t_ours'] for r in rows):.0f}x)"
    )
    print(
        f"max |err ours − err dense| = {max_diff:.2e}; max |err ours − optimum| = {max_opt:.2e}; "
        f"max |reported − measured| = {max_rep:.2e}"
    )
    # A full 7B adapter: 28 layers × 7 modules; the factored method's total is extrapolated from the timed shapes.
    if not args.quick:
        per_layer = rows[0]["t_ours"] * 2 + rows[1]["t_ours"] * 2 + rows[2]["t_ours"] * 2 + rows[3]["t_ours"]
        dense_layer = rows[0]["t_dense"] * 2 + rows[1]["t_dense"] * 2 + rows[2]["t_dense"] * 2 + rows[3]["t_dense"]
        print(
            f"whole 28-layer adapter (extrapolated): ours {28 * per_layer:.1f} s, dense {28 * dense_layer / 60:.0f} min"
        )


if __name__ == "__main__":
    main()
