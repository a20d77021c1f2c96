"""Benchmark: the heterogeneous-rank aggregation rules compared in federated training (``svdlora federate``).

Methods × seeds on the tiny default (configs/federated/tiny.yaml: 3 clients of ranks 4, 8 and 16, the bundled QA set
split non-IID by topic, 5 rounds of 40 local steps, Flower's simulation engine): the global validation loss and answer
exact match per round, the aggregation's relative error against the exact weighted ΔW, the global rank and the bytes
sent and received per round, and the aggregation notebook's three claims checked on the updates the clients really
trained:

1. stacking is exact but grows the rank: every round's relative error ≈ 0, the global rank grows by Σ r_k = 28 per
   round (up to min(out, in)), and the server → clients bytes with it;
2. SVD re-factorization is optimal at the global rank: svd's error equals the Eckart–Young optimum at R = 16, and on
   zeropad's own updates the optimum at the same rank is below what zero-padding achieves;
3. zero-padding dilutes: the energy of zeropad's global update is below that of the exact weighted sum.

Run: ``python benchmarks/federated_comparison.py`` (about 10 minutes on 2 CPU cores; ``--quick`` for a 2-round smoke
run); it prints the tables and the claims, and writes the figure (``--figure``, default docs/federated_comparison.png)
and each run's outputs under ``--output_dir``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from svdlora_pl.federated.run import federate
from svdlora_pl.federated.settings import ClientSettings, EvalSettings
from svdlora_pl.lora.adapters import read_adapter
from svdlora_pl.plots import new_figure

METHODS = ("stack", "svd", "zeropad")
RANKS = (4, 8, 16)
FLOOR = 1e-4
"""Where an error of 0 is drawn on the log axis."""


def run_all(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """``{method: [report per seed]}``: run every method and seed, or with ``--replot`` read the reports back."""
    reports: dict[str, list[dict[str, Any]]] = {m: [] for m in args.methods}
    for seed in args.seeds:
        for method in args.methods:
            output_dir = Path(args.output_dir) / f"{method}_seed{seed}"
            if args.replot:
                reports[method].append(json.loads((output_dir / "report.json").read_text(encoding="utf-8")))
                continue
            print(f"--- {method}, seed {seed}", flush=True)
            reports[method].append(
                federate(
                    output_dir,
                    method=method,
                    ranks=RANKS,
                    rounds=args.rounds,
                    client=ClientSettings(local_steps=args.local_steps),
                    evaluation=EvalSettings(exact_match=not args.no_exact_match),
                    seed=seed,
                    save_client_adapters=True,
                    overwrite=True,
                )
            )
    return reports


def dense_updates(adapter: Path) -> dict[str, np.ndarray]:
    """``{module: s·B·A}`` of a PEFT adapter on disk, in float64."""
    return {
        m: f.scaling * f.B.double().numpy() @ f.A.double().numpy() for m, f in read_adapter(adapter).modules.items()
    }


def measure(report: dict[str, Any]) -> list[dict[str, float]]:
    """Per round, independently of the run's own report (dense float64 from the adapters on disk): the worst module's
    ‖G − ΔW‖_F/‖ΔW‖_F against the exact weighted sum ΔW of the round's client adapters (stack: plus the previous
    global), the Eckart–Young optimum at G's rank, and the smallest energy ratio ‖G‖²_F/‖ΔW‖²_F."""
    run = Path(report["options"]["output_dir"])
    measured, previous = [], None
    for row in report["rounds"]:
        directory = run / f"round_{row['round']:03d}"
        clients = [dense_updates(directory / "clients" / f"client_{k}") for k in range(len(row["weights"]))]
        glob = dense_updates(directory / "adapter")
        worst = {"error": 0.0, "optimum": 0.0, "energy": math.inf}
        for m, g in glob.items():
            target = sum(p * c[m] for p, c in zip(row["weights"], clients, strict=True))
            if report["method"] == "stack" and previous is not None:
                target = target + previous[m]
            sigma = np.linalg.svd(target, compute_uv=False)
            rank = int(np.linalg.matrix_rank(g, tol=1e-9 * max(np.linalg.norm(g, 2), 1e-30)))
            norm = np.linalg.norm(target)
            worst["error"] = max(worst["error"], np.linalg.norm(g - target) / norm)
            worst["optimum"] = max(worst["optimum"], math.sqrt((sigma[rank:] ** 2).sum()) / norm)
            worst["energy"] = min(worst["energy"], (np.linalg.norm(g) / norm) ** 2)
        measured.append(worst)
        previous = glob
    return measured


def series(report: dict[str, Any], key: str) -> list[float]:
    """A per-round value, round 0 (the base) first when the report has it."""
    initial = [report["initial"][key]] if key in report["initial"] else []
    return initial + [row.get(key) for row in report["rounds"]]


def mean_range(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def print_tables(reports: dict[str, list[dict[str, Any]]]) -> None:
    rounds = len(next(iter(reports.values()))[0]["rounds"])
    seeds = len(next(iter(reports.values())))
    print(f"\nglobal validation loss per round (mean [min, max] over {seeds} seed(s)); round 0 is the base model")
    print(f"{'method':<8} " + " ".join(f"{'round ' + str(t):>22}" for t in range(rounds + 1)))
    for method, runs in reports.items():
        cells = [mean_range([series(r, "val_loss")[t] for r in runs]) for t in range(rounds + 1)]
        print(f"{method:<8} " + " ".join(f"{c:>22}" for c in cells))
    print(f"\nafter round {rounds} (mean over seeds)")
    header = (
        "method",
        "val loss",
        "token acc",
        "exact match",
        "rel. error",
        "energy",
        "rank",
        "MB sent/round",
        "MB recv/round",
        "s/run",
    )
    print("{:<8} {:>9} {:>9} {:>11} {:>10} {:>7} {:>5} {:>30} {:>15} {:>6}".format(*header))
    for method, runs in reports.items():
        last = [r["rounds"][-1] for r in runs]
        sent = [statistics.fmean(r["rounds"][t]["bytes_sent"] for r in runs) / 1e6 for t in range(rounds)]
        received = statistics.fmean(row["bytes_received"] for r in runs for row in r["rounds"]) / 1e6
        exact = [row.get("val_exact_match") for row in last]
        print(
            "{:<8} {:>9.4f} {:>9.4f} {:>11} {:>10.3e} {:>7.4f} {:>5} {:>30} {:>15.3f} {:>6.0f}".format(
                method,
                statistics.fmean(row["val_loss"] for row in last),
                statistics.fmean(row["val_token_accuracy"] for row in last),
                "n/a" if None in exact else f"{statistics.fmean(exact):.3f}",
                statistics.fmean(row["relative_error_max"] for row in last),
                statistics.fmean(row["energy_kept_min"] for row in last),
                max(max(row["global_ranks"]) for row in last),
                " ".join(f"{x:.2f}" for x in sent),
                received,
                statistics.fmean(r["wall_seconds"] for r in runs),
            )
        )


def check_claims(reports: dict[str, list[dict[str, Any]]]) -> list[tuple[str, bool, str]]:
    """(claim, holds, evidence) for the notebook's three claims, on every round of every seed, measured from the
    adapters on disk (:func:`measure`)."""
    claims = []
    measured = {method: [row for r in runs for row in measure(r)] for method, runs in reports.items()}
    if "stack" in reports:
        exact = max(row["error"] for row in measured["stack"])
        ranks = [max(row["global_ranks"]) for row in reports["stack"][0]["rounds"]]
        sent = [row["bytes_sent"] / 1e6 for row in reports["stack"][0]["rounds"]]
        grows = all(b > a for a, b in zip(ranks, ranks[1:], strict=False)) and all(
            b > a for a, b in zip(sent[1:], sent[2:], strict=False)
        )
        claims.append(("stack is exact", exact < 1e-5, f"max relative error {exact:.1e} (float32 adapters)"))
        claims.append(
            (
                "stack grows the rank and the messages",
                grows,
                f"global rank {ranks}, MB sent {[round(x, 2) for x in sent]}",
            )
        )
    if "svd" in reports:
        rows = measured["svd"]
        gap = max(abs(row["error"] - row["optimum"]) for row in rows)
        errors = f"errors {min(r['error'] for r in rows):.3f}-{max(r['error'] for r in rows):.3f}"
        claims.append(
            ("svd is the Eckart-Young optimum at its rank", gap < 1e-5, f"max |error - optimum| {gap:.1e}, {errors}")
        )
    if "zeropad" in reports:
        rows = measured["zeropad"]
        ratio = min(row["error"] / row["optimum"] for row in rows if row["optimum"] > 0)
        energy = max(row["energy"] for row in rows)
        claims.append(
            ("zeropad is worse than the optimum at the same rank", ratio > 1, f"error / optimum >= {ratio:.1f}")
        )
        claims.append(("zeropad dilutes (energy kept < 1)", energy < 1, f"min energy kept per round <= {energy:.3f}"))
    return claims


def figure(reports: dict[str, list[dict[str, Any]]], path: Path) -> None:
    fig, (loss_ax, error_ax, bytes_ax) = new_figure((11, 3.2), 1, 3)
    for method, runs in reports.items():
        rounds = list(range(len(runs[0]["rounds"]) + 1))
        losses = [[series(r, "val_loss")[t] for r in runs] for t in rounds]
        mean = [statistics.fmean(v) for v in losses]
        (line,) = loss_ax.plot(rounds, mean, marker="o", label=method)
        loss_ax.fill_between(
            rounds, [min(v) for v in losses], [max(v) for v in losses], alpha=0.2, color=line.get_color()
        )
        errors = [statistics.fmean(r["rounds"][t - 1]["relative_error_max"] for r in runs) for t in rounds[1:]]
        label = f"{method} (0: exact)" if max(errors) == 0 else method  # drawn at the floor of the log axis
        error_ax.plot(rounds[1:], [max(e, FLOOR) for e in errors], marker="o", color=line.get_color(), label=label)
        sent = [statistics.fmean(r["rounds"][t - 1]["bytes_sent"] for r in runs) / 1e6 for t in rounds[1:]]
        bytes_ax.plot(rounds[1:], sent, marker="o", color=line.get_color(), label=method)
    loss_ax.set(xlabel="round", ylabel="global validation loss", title="validation loss (seed range shaded)")
    error_ax.set(xlabel="round", ylabel="‖G − ΔW‖ / ‖ΔW‖, worst module", yscale="log", title="aggregation error")
    bytes_ax.set(xlabel="round", ylabel="MB", title="server → clients per round")
    for ax in (loss_ax, error_ax, bytes_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output_dir", default="experiments/federated/comparison", help="where each run writes its outputs"
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local_steps", type=int, default=40)
    parser.add_argument("--no_exact_match", action="store_true", help="skip the generation-based exact match")
    parser.add_argument("--figure", default="docs/federated_comparison.png")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 5 steps, one seed: a smoke run")
    parser.add_argument("--replot", action="store_true", help="read the runs' reports from --output_dir, do not run")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.local_steps, args.seeds = 2, 5, args.seeds[:1]
    start = time.perf_counter()
    reports = run_all(args)
    wall = time.perf_counter() - start
    print_tables(reports)
    print("\nthe aggregation notebook's claims, in training:")
    for claim, holds, evidence in check_claims(reports):
        print(f"  {'PASS' if holds else 'FAIL'}  {claim}: {evidence}")
    figure(reports, Path(args.figure))
    summary = Path(args.output_dir) / "comparison.json"
    summary.write_text(
        json.dumps({m: [r["rounds"] for r in runs] for m, runs in reports.items()}, indent=1, default=str)
    )
    runs = sum(r["wall_seconds"] for per_seed in reports.values() for r in per_seed)
    took = f"the runs took {runs:.0f} s in all" if args.replot else f"wall time {wall:.0f} s ({wall / 60:.1f} min)"
    print(f"\nfigure {args.figure}; per-run reports under {args.output_dir}; {took}")


if __name__ == "__main__":
    main()
