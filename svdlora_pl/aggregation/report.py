"""The aggregation report: what :func:`svdlora_pl.aggregation.merge.aggregate` did, as a JSON-ready dict and as text.

The dict holds the method and options, the exact target, the clients (adapter, weight, ranks, scalings, the
directory written for them) and, per written adapter, a summary and every module's
:class:`~svdlora_pl.aggregation.rules.ModuleReport`. Non-finite values are None (strict JSON).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from svdlora_pl.aggregation.rules import Aggregate
from svdlora_pl.io import finite_or_none
from svdlora_pl.lora.adapters import LoRAAdapter

TARGET = "ΔW = Σ_k p_k s_k B_k A_k per module (p_k: client weight, s_k: its PEFT scaling)"


def summarize(result: Mapping[str, Aggregate]) -> dict[str, Any]:
    """One written adapter in numbers: modules, ranks, worst and mean relative error, worst energy kept."""
    reports = [a.report for a in result.values()]
    errors = [r.relative_error for r in reports]
    finite = [e for e in errors if math.isfinite(e)]
    return finite_or_none(
        {
            "modules": len(reports),
            "ranks": sorted({r.rank for r in reports}),
            "max_relative_error": max(errors) if len(finite) == len(errors) else None,
            "mean_relative_error": math.fsum(finite) / len(finite) if finite else None,
            "max_optimal_error": max(r.optimal_error for r in reports),
            "min_energy_kept": min(r.energy_kept for r in reports),
            "clamped_modules": sum(r.clamped for r in reports),
        }
    )


def adapter_entry(result: Mapping[str, Aggregate]) -> dict[str, Any]:
    """The report of one written adapter: its summary and each module's report."""
    return {"summary": summarize(result), "modules": {m: a.report.to_dict() for m, a in result.items()}}


def build_report(
    method: str,
    options: Mapping[str, Any],
    adapters: Sequence[LoRAAdapter],
    weights: Sequence[float],
    outputs: Mapping[str, Mapping[str, Aggregate]],
    assignment: Mapping[int, str],
    output_dir: str,
) -> dict[str, Any]:
    """The JSON report: method and options, clients, and each written adapter's modules.

    Args:
        method: The aggregation rule.
        options: The options that shape the result (rank, split, norm_weights, dtype).
        adapters: The clients' adapters, in order.
        weights: Their normalized weights p_k.
        outputs: Written adapter (``"."`` for the global one, else a subdirectory) -> its modules' aggregates.
        assignment: Client index -> the subdirectory written for it (the global adapter ``"."`` when absent).
        output_dir: Where the adapters are written.
    """
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
    return finite_or_none(
        {
            "method": method,
            "options": dict(options),
            "target": TARGET,
            "base_model": adapters[0].base_model,
            "output_dir": output_dir,
            "clients": clients,
            "adapters": {name: adapter_entry(result) for name, result in outputs.items()},
        }
    )


def format_metric(value: float | None) -> str:
    """A relative error or ratio for reading: three significant digits, ``n/a`` when missing or non-finite."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3e}"


def format_report(report: Mapping[str, Any]) -> str:
    """Plain-text rendering of :func:`build_report`'s dict: clients, then one table per written adapter."""
    lines = [
        f"svdlora aggregate — method {report['method']}",
        f"base model: {report['base_model']}",
        f"target: {report['target']}",
        "",
        "clients:",
    ]
    for k, c in enumerate(report["clients"]):
        scalings = [round(s, 6) for s in c["scalings"]]
        lines.append(
            f"  [{k}] {c['adapter']}  weight {c['weight']:.4f}  ranks {c['ranks']}  scalings {scalings}  -> {c['output']}"
        )
    for name, entry in report["adapters"].items():
        s = entry["summary"]
        lines += [
            "",
            f"adapter {name}: {s['modules']} modules, ranks {s['ranks']}, "
            f"max relative error {format_metric(s['max_relative_error'])}, "
            f"min energy kept {format_metric(s['min_energy_kept'])}, clamped modules {s['clamped_modules']}",
            f"  {'module':<48} {'shape':>12} {'rank':>5} {'rel_error':>10} {'optimum':>10} {'energy':>9}",
        ]
        for module, r in entry["modules"].items():
            shape = f"{r['shape'][0]}×{r['shape'][1]}"
            energy = "n/a" if r["energy_kept"] is None else f"{r['energy_kept']:.6f}"
            lines.append(
                f"  {module:<48} {shape:>12} {r['rank']:>5} {format_metric(r['relative_error']):>10} "
                f"{format_metric(r['optimal_error']):>10} {energy:>9}"
            )
    return "\n".join(lines) + "\n"
