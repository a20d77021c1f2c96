"""``svdlora aggregate``: merge PEFT LoRA adapters of different ranks into one standard PEFT adapter.

Usage::

    svdlora aggregate --adapters client0/ client1/ client2/ --method svd --rank 8 --output-dir merged/
    svdlora aggregate --adapters a/ b/ --data-sizes 1200 400 --method stack --output-dir merged/
    svdlora aggregate --adapters a/ b/ c/ --method svd --per-client-ranks --output-dir round1/

The exact target is ΔW = Σ_k p_k·s_k·B_k·A_k per module, with p_k the normalized ``--weights`` (or
``--data-sizes``; equal by default) and s_k each adapter's own PEFT scaling (alpha/r or alpha/√r, with its
rank_pattern/alpha_pattern). Methods (see :mod:`svdlora_pl.aggregation.rules`): ``stack`` (exact, rank Σ r_k),
``svd`` (best rank-R, R = ``--rank`` or max r_k), ``zeropad`` (HetLoRA/FedIT averaging, inexact: its error is
reported).

Output, written atomically (all or nothing) to ``--output-dir``:

- ``adapter_config.json`` + ``adapter_model.safetensors``: the aggregated adapter, scaling folded into the
  factors and ``lora_alpha = r`` (scaling 1); modules whose rank differs get ``rank_pattern``/``alpha_pattern``.
  Loads with plain ``PeftModel.from_pretrained`` on the clients' base model.
- ``aggregation_report.json`` / ``aggregation_report.txt``: per module rank, relative error against ΔW,
  Eckart–Young optimum at that rank, energy ratio; the clients, their weights and ranks.
- with ``--per-client-ranks`` (svd, zeropad): one more adapter per distinct client rank, ``rank_<r>/`` (or
  ``client_<k>/`` for a client whose rank varies by module): svd sends the best rank-r_k approximation, zeropad
  the first r_k components (HetLoRA). The report maps each client to its directory.

Rank policy: ``--rank`` above min(out, in, Σ r_k) for some module is refused (exit 2) rather than clamped, so
an adapter never claims a rank it cannot have; the message gives the largest rank possible.
Errors in input (missing files, malformed config, different base models or module sets, shapes, weights,
NaN values) exit with code 2 and one line naming the file and field; nothing is written then.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from svdlora_pl.aggregation.rules import Aggregate, aggregate_modules, normalize_weights
from svdlora_pl.cli.tool_args import ToolParser, check_output_dir
from svdlora_pl.errors import InputError
from svdlora_pl.io import atomic_directory
from svdlora_pl.lora.adapters import LoRAAdapter, read_adapter, save_adapter_files

log = logging.getLogger(__name__)
REPORT_NAME = "aggregation_report"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="svdlora aggregate",
        description="Merge PEFT LoRA adapters of different ranks (one per client) into one standard PEFT adapter. "
        "Target per module: ΔW = Σ_k p_k s_k B_k A_k (p_k: normalized weight, s_k: the adapter's PEFT scaling).",
        epilog="Methods: stack = exact, rank Σ r_k; svd = best rank-R approximation (Eckart–Young), computed from the "
        "factors; zeropad = HetLoRA/FedIT averaging, inexact (its error is reported). A --rank above "
        "min(out, in, Σ r_k) of any module is refused. Writes the adapter (scaling 1) and aggregation_report.json/.txt "
        "into --output-dir, atomically.",
    )
    parser.add_argument(
        "--adapters", nargs="+", required=True, metavar="DIR", help="PEFT LoRA adapter directories, one per client"
    )
    parser.add_argument("--method", required=True, choices=["stack", "svd", "zeropad"], help="aggregation rule")
    parser.add_argument("--output-dir", required=True, type=Path, help="directory to write (replaced atomically)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument(
        "--weights", nargs="+", type=float, metavar="W", help="client weights > 0, normalized to sum 1 (default: equal)"
    )
    weights.add_argument(
        "--data-sizes", nargs="+", type=int, metavar="N", help="client training-set sizes: weights p_k = N_k / Σ N"
    )
    parser.add_argument("--rank", type=int, help="svd: global rank R (default: max client rank)")
    parser.add_argument(
        "--split", choices=["sqrt", "B"], default="sqrt", help="svd: B = U√Σ, A = √ΣVᵀ (sqrt) or B = UΣ, A = Vᵀ (B)"
    )
    parser.add_argument(
        "--norm-weights", action="store_true", help="zeropad: average with q_k ∝ p_k·‖ΔW_k‖_F (HetLoRA)"
    )
    parser.add_argument(
        "--per-client-ranks", action="store_true", help="svd/zeropad: also write one adapter per client rank"
    )
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="dtype of the written factors")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
    return parser


# ---------------------------------------------------------------- checks
def _check_options(args: argparse.Namespace) -> None:
    if args.rank is not None and args.method != "svd":
        raise InputError(
            f"--rank: only used by --method svd (stack has rank Σ r_k, zeropad max r_k), got --method {args.method}"
        )
    if args.rank is not None and args.rank < 1:
        raise InputError(f"--rank: must be >= 1, got {args.rank}")
    if args.per_client_ranks and args.method == "stack":
        raise InputError("--per-client-ranks: needs --method svd or zeropad (a stacked adapter has rank Σ r_k only)")
    if args.norm_weights and args.method != "zeropad":
        raise InputError("--norm-weights: only used by --method zeropad")
    if args.split != "sqrt" and args.method != "svd":
        raise InputError("--split: only used by --method svd")


def _weights(args: argparse.Namespace, count: int) -> list[float]:
    field, values = ("--data-sizes", args.data_sizes) if args.data_sizes is not None else ("--weights", args.weights)
    try:
        return normalize_weights(values, count)
    except InputError as error:
        raise InputError(f"{field}: {str(error).removeprefix('weights: ')}") from None


def _check_compatible(adapters: Sequence[LoRAAdapter]) -> None:
    """Same base model, same module set, same (out, in) per module as the first adapter."""
    first = adapters[0]
    for other in adapters[1:]:
        if other.base_model != first.base_model:
            raise InputError(
                f"{other.path / 'adapter_config.json'}: base_model_name_or_path: {other.base_model!r} differs from "
                f"{first.base_model!r} in {first.path}"
            )
        missing, extra = (
            sorted(set(first.modules) - set(other.modules)),
            sorted(set(other.modules) - set(first.modules)),
        )
        if missing or extra:
            which = f"lacks {missing[0]}" if missing else f"has {extra[0]} that {first.path} lacks"
            raise InputError(
                f"{other.path / 'adapter_model.safetensors'}: module set differs from {first.path}: {which}"
            )
        for module, factors in other.modules.items():
            if factors.shape != first.modules[module].shape:
                (o1, i1), (o2, i2) = first.modules[module].shape, factors.shape
                raise InputError(
                    f"{other.path / 'adapter_model.safetensors'}: {module}: update shape {o2}×{i2} differs from {o1}×{i1} in {first.path}"
                )


def _check_rank(rank: int | None, adapters: Sequence[LoRAAdapter]) -> None:
    """Refuse a --rank above min(out, in, Σ r_k) of any module (the most an update of that module can have)."""
    if rank is None:
        return
    for module, factors in adapters[0].modules.items():
        out, inp = factors.shape
        total = sum(a.modules[module].rank for a in adapters)
        ceiling = min(out, inp, total)
        if rank > ceiling:
            raise InputError(
                f"--rank: {rank} is more than {module} can have: min(out={out}, in={inp}, Σ r_k={total}) = {ceiling}; "
                f"use --rank {ceiling} or less (or --method stack for the exact sum)"
            )


# ---------------------------------------------------------------- per-client profiles
def _client_profiles(adapters: Sequence[LoRAAdapter]) -> dict[str, tuple[dict[str, int], list[int]]]:
    """Subdirectory name -> (rank per module, client indices) for each distinct client rank profile."""
    profiles: dict[str, tuple[dict[str, int], list[int]]] = {}
    for k, adapter in enumerate(adapters):
        ranks = {module: f.rank for module, f in adapter.modules.items()}
        for known, members in profiles.values():
            if known == ranks:
                members.append(k)
                break
        else:
            distinct = set(ranks.values())
            name = f"rank_{distinct.pop()}" if len(distinct) == 1 else f"client_{k}"
            profiles[name] = (ranks, [k])
    return profiles


# ---------------------------------------------------------------- reports
def _summary(result: dict[str, Aggregate]) -> dict[str, Any]:
    reports = [a.report for a in result.values()]
    errors = [r.relative_error for r in reports]
    finite = [e for e in errors if math.isfinite(e)]
    return {
        "modules": len(reports),
        "ranks": sorted({r.rank for r in reports}),
        "max_relative_error": max(errors) if all(map(math.isfinite, errors)) else None,
        "mean_relative_error": math.fsum(finite) / len(finite) if finite else None,
        "max_optimal_error": max(r.optimal_error for r in reports),
        "min_energy_kept": _finite(min(r.energy_kept for r in reports)),
        "clamped_modules": sum(r.clamped for r in reports),
    }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _adapter_entry(result: dict[str, Aggregate]) -> dict[str, Any]:
    return {"summary": _summary(result), "modules": {m: a.report.to_dict() for m, a in result.items()}}


def build_report(
    args: argparse.Namespace,
    adapters: Sequence[LoRAAdapter],
    weights: Sequence[float],
    outputs: dict[str, dict[str, Aggregate]],
    assignment: dict[int, str],
) -> dict[str, Any]:
    """The JSON report: options, clients (path, weight, ranks, scalings), and each written adapter's modules."""
    clients = [
        {
            "adapter": str(a.path),
            "weight": p,
            "ranks": sorted({f.rank for f in a.modules.values()}),
            "scalings": sorted({f.scaling for f in a.modules.values()}),
            "output": assignment.get(k, "."),
        }
        for k, (a, p) in enumerate(zip(adapters, weights, strict=True))
    ]
    return {
        "method": args.method,
        "options": {"rank": args.rank, "split": args.split, "norm_weights": args.norm_weights, "dtype": args.dtype},
        "target": "ΔW = Σ_k p_k s_k B_k A_k per module (p_k: client weight, s_k: its PEFT scaling)",
        "base_model": adapters[0].base_model,
        "clients": clients,
        "adapters": {name: _adapter_entry(result) for name, result in outputs.items()},
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3e}"


def format_report(report: dict[str, Any]) -> str:
    """Plain-text rendering of :func:`build_report`'s dict: clients, then one table per written adapter."""
    lines = [
        f"svdlora aggregate — method {report['method']}",
        f"base model: {report['base_model']}",
        f"target: {report['target']}",
        "",
    ]
    lines.append("clients:")
    for k, c in enumerate(report["clients"]):
        lines.append(
            f"  [{k}] {c['adapter']}  weight {c['weight']:.4f}  ranks {c['ranks']}  scalings {[round(s, 6) for s in c['scalings']]}  -> {c['output']}"
        )
    for name, entry in report["adapters"].items():
        s = entry["summary"]
        lines += [
            "",
            f"adapter {name}: {s['modules']} modules, ranks {s['ranks']}, max relative error {_fmt(s['max_relative_error'])}, "
            f"min energy kept {_fmt(s['min_energy_kept'])}, clamped modules {s['clamped_modules']}",
        ]
        lines.append(f"  {'module':<48} {'shape':>12} {'rank':>5} {'rel_error':>10} {'optimum':>10} {'energy':>9}")
        for module, r in entry["modules"].items():
            shape = f"{r['shape'][0]}×{r['shape'][1]}"
            energy = "n/a" if r["energy_kept"] is None else f"{r['energy_kept']:.6f}"
            lines.append(
                f"  {module:<48} {shape:>12} {r['rank']:>5} {_fmt(r['relative_error']):>10} {_fmt(r['optimal_error']):>10} {energy:>9}"
            )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the command
def _aggregate_all(
    args: argparse.Namespace, adapters: Sequence[LoRAAdapter], weights: list[float]
) -> tuple[dict[str, dict[str, Aggregate]], dict[int, str]]:
    """{"." : global result, subdir: per-client result} and {client index: subdir}."""
    clients = [a.modules for a in adapters]
    options: dict[str, Any] = {"split": args.split} if args.method == "svd" else {}
    if args.method == "zeropad":
        options["norm_weighted"] = args.norm_weights
    outputs = {".": aggregate_modules(clients, args.method, weights, args.rank, **options)}
    assignment: dict[int, str] = {}
    if args.per_client_ranks:
        for name, (ranks, members) in _client_profiles(adapters).items():
            outputs[name] = aggregate_modules(clients, args.method, weights, ranks, **options)
            assignment.update(dict.fromkeys(members, name))
    return outputs, assignment


def _write(
    output: Path,
    outputs: dict[str, dict[str, Aggregate]],
    report: dict[str, Any],
    base_model: str | None,
    task_type: str | None,
    dtype: torch.dtype,
) -> None:
    with atomic_directory(output) as staging:
        for name, result in outputs.items():
            factors = {module: (a.B, a.A) for module, a in result.items()}
            save_adapter_files(staging / name, factors, base_model, task_type, dtype)
        (staging / f"{REPORT_NAME}.json").write_text(
            json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8"
        )
        (staging / f"{REPORT_NAME}.txt").write_text(format_report(report), encoding="utf-8")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Validate, read, aggregate and write; returns the report. Raises InputError for bad input."""
    _check_options(args)
    check_output_dir(args.output_dir, args.adapters, args.overwrite)
    adapters = [read_adapter(path) for path in args.adapters]
    weights = _weights(args, len(adapters))
    _check_compatible(adapters)
    _check_rank(args.rank, adapters)
    outputs, assignment = _aggregate_all(args, adapters, weights)
    report = build_report(args, adapters, weights, outputs, assignment)
    task_type = adapters[0].config.get("task_type")
    _write(args.output_dir, outputs, report, adapters[0].base_model, task_type, DTYPES[args.dtype])
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``svdlora aggregate``; bad input raises InputError (``svdlora`` prints it and exits 2)."""
    args = build_parser().parse_args(None if argv is None else list(argv))
    report = run(args)
    summary = report["adapters"]["."]["summary"]
    print(
        f"wrote {args.output_dir} ({args.method}, ranks {summary['ranks']}, max relative error {_fmt(summary['max_relative_error'])})"
    )
    for name in list(report["adapters"])[1:]:
        print(
            f"wrote {os.path.join(args.output_dir, name)} (max relative error {_fmt(report['adapters'][name]['summary']['max_relative_error'])})"
        )
    if args.method == "zeropad":
        log.warning("zeropad is inexact: see %s for the per-module error", args.output_dir / f"{REPORT_NAME}.txt")
    return 0
