"""SVD analysis of per-module updates ΔW at one rank r: the JSON dict, its text rendering and the 4-panel figure.

Used by :func:`svdlora_pl.teacher.factorize.factorize` (``svdlora factorize``). Per module (k = min(out, in, source
rank)):

- ``singular_values``: all k of them, descending;
- ``energy_ratio`` = Σ_{i≤r} σᵢ² / Σ σᵢ² and ``relative_error`` = √(Σ_{i>r} σᵢ²) / √(Σ σᵢ²), the Eckart–Young
  optimum that the rank-r truncation reaches; ``effective_rank`` (Roy & Vetterli);
- ``rank``: the rank used, min(r, k); ``clamped``: true when r > k;
- ``total_energy`` = ‖ΔW‖_F²; ``spectrum_complete``: false when only the top singular values are known (a randomized
  SVD of a dense ΔW, ``svd.method`` randomized): energy ratio and error are then taken against the total energy computed
  from the dense matrix, the discarded energy being ‖ΔW‖_F² − Σ_{i≤r} σᵢ² (clamped at 0), and the effective rank
  is that of the known values only.

The low-rank hypothesis "ΔW is well approximated at rank r" holds, by the seed's thresholds, when the mean energy
ratio is above 0.9 **and** the mean relative error is below 0.1 (both thresholds are written into the JSON).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from svdlora_pl.plots import new_figure
from svdlora_pl.spectral import effective_rank, energy_ratio, frobenius_norm, reconstruction_error

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ENERGY_THRESHOLD = 0.9
ERROR_THRESHOLD = 0.1
WORST = 5
SPECTRA_SHOWN = 4


def analyze_module(
    S: Tensor, rank: int, shape: tuple[int, int], source_rank: int, total_energy: float | None = None
) -> dict[str, Any]:
    """Analysis of one module at the requested ``rank``, clamped to k = min(out, in, source rank).

    Args:
        S: singular values, descending: the whole spectrum (k values), or only the top ones with ``total_energy``.
        rank: the requested rank r.
        shape: (out, in) of ΔW.
        source_rank: rank of the source factors (min(out, in) for a dense ΔW).
        total_energy: ‖ΔW‖_F² computed from the dense matrix, for a partial spectrum (randomized SVD): the energy
            ratio is Σ_{i≤r} σᵢ² / total and the error √(max(total − Σ_{i≤r} σᵢ², 0) / total). None: S is the whole
            spectrum and everything comes from it (the tail summed directly: accurate even for tiny errors).
    """
    k = min(int(shape[0]), int(shape[1]), int(source_rank))
    used = min(rank, k)
    if total_energy is None:
        energy, error, total = energy_ratio(S, used), reconstruction_error(S, used), frobenius_norm(S) ** 2
    else:
        kept = math.fsum(x * x for x in S[:used].double().tolist())
        total = float(total_energy)
        energy = min(kept / total, 1.0) if total > 0 else 1.0
        error = math.sqrt(max(total - kept, 0.0) / total) if total > 0 else 0.0
    return {
        "shape": [int(shape[0]), int(shape[1])],
        "source_rank": int(source_rank),
        "available_rank": k,
        "rank": used,
        "clamped": rank > k,
        "energy_ratio": energy,
        "relative_error": error,
        "effective_rank": effective_rank(S),
        "total_energy": total,
        "spectrum_complete": total_energy is None,
        "singular_values": [float(x) for x in S.tolist()],
    }


def _hypothesis(mean_energy: float, mean_error: float, rank: int) -> dict[str, Any]:
    energy_ok, error_ok = mean_energy > ENERGY_THRESHOLD, mean_error < ERROR_THRESHOLD
    holds = energy_ok and error_ok
    parts = [
        f"mean energy ratio {mean_energy:.4f} {'>' if energy_ok else '<='} {ENERGY_THRESHOLD}",
        f"mean relative error {mean_error:.4f} {'<' if error_ok else '>='} {ERROR_THRESHOLD}",
    ]
    verdict = "holds" if holds else "does not hold"
    return {
        "holds": holds,
        "thresholds": {"mean_energy_ratio_above": ENERGY_THRESHOLD, "mean_relative_error_below": ERROR_THRESHOLD},
        "reason": f"the low-rank hypothesis {verdict} at rank {rank}: " + " and ".join(parts),
    }


def summarize(modules: Mapping[str, Mapping[str, Any]], rank: int) -> dict[str, Any]:
    """Mean and median of energy ratio and relative error, the worst modules, and the low-rank verdict."""
    energies = [m["energy_ratio"] for m in modules.values()]
    errors = [m["relative_error"] for m in modules.values()]
    mean_energy, mean_error = math.fsum(energies) / len(energies), math.fsum(errors) / len(errors)
    worst = sorted(modules, key=lambda name: modules[name]["relative_error"], reverse=True)[:WORST]
    return {
        "modules": len(modules),
        "clamped_modules": sum(bool(m["clamped"]) for m in modules.values()),
        "energy_ratio": {"mean": mean_energy, "median": statistics.median(energies), "min": min(energies)},
        "relative_error": {"mean": mean_error, "median": statistics.median(errors), "max": max(errors)},
        "worst_modules": [
            {
                "module": name,
                "relative_error": modules[name]["relative_error"],
                "energy_ratio": modules[name]["energy_ratio"],
            }
            for name in worst
        ],
        "low_rank_hypothesis": _hypothesis(mean_energy, mean_error, rank),
    }


def build_analysis(
    modules: Mapping[str, Mapping[str, Any]], rank: int, split: str, source: str, source_kind: str
) -> dict[str, Any]:
    """The ``svd_analysis_rank{r}.json`` dict."""
    return {
        "rank": rank,
        "split": split,
        "source": source,
        "source_kind": source_kind,
        "definitions": {
            "energy_ratio": "Σ_{i≤r} σᵢ² / Σ σᵢ² (share of ‖ΔW‖²_F kept by the rank-r truncation)",
            "relative_error": "‖ΔW − ΔW_r‖_F / ‖ΔW‖_F = √(Σ_{i>r} σᵢ²) / √(Σ σᵢ²) (Eckart–Young optimum)",
            "effective_rank": "exp(entropy of σᵢ / Σ σⱼ) (Roy & Vetterli 2007)",
            "clamped": "the requested rank exceeds min(out, in, source rank) of the module; that k is used instead",
            "total_energy": "‖ΔW‖²_F",
            "spectrum_complete": "false: only the top r singular values are known (randomized SVD); energy ratio and "
            "relative error then use total_energy computed from the dense ΔW, effective_rank the known values only",
        },
        "summary": summarize(modules, rank),
        "modules": {name: dict(entry) for name, entry in modules.items()},
    }


def format_report(analysis: Mapping[str, Any]) -> str:
    """Readable text rendering of :func:`build_analysis`'s dict."""
    s = analysis["summary"]
    hyp = s["low_rank_hypothesis"]
    e, r = s["energy_ratio"], s["relative_error"]
    lines = [
        f"svdlora factorize — SVD analysis at rank {analysis['rank']}",
        f"source: {analysis['source']} ({analysis['source_kind']})",
        f"split: {analysis['split']}   modules: {s['modules']}   clamped modules: {s['clamped_modules']}",
        "",
        f"energy ratio:   mean {e['mean']:.4f}  median {e['median']:.4f}  min {e['min']:.4f}",
        f"relative error: mean {r['mean']:.4f}  median {r['median']:.4f}  max {r['max']:.4f}",
        "",
        f"Low-rank hypothesis: {'HOLDS' if hyp['holds'] else 'DOES NOT HOLD'}",
        f"  {hyp['reason']}",
        f"  (thresholds: mean energy ratio > {hyp['thresholds']['mean_energy_ratio_above']}, "
        f"mean relative error < {hyp['thresholds']['mean_relative_error_below']})",
        "",
        f"worst {len(s['worst_modules'])} modules by relative error:",
    ]
    lines += [
        f"  {w['module']}: relative error {w['relative_error']:.4f}, energy ratio {w['energy_ratio']:.4f}"
        for w in s["worst_modules"]
    ]
    if s["clamped_modules"]:
        lines += ["", "clamped: the rank used is min(out, in, source rank) where the requested rank is larger."]
    if not all(m.get("spectrum_complete", True) for m in analysis["modules"].values()):
        lines += [
            "",
            "randomized SVD: only the top r singular values are known; energy ratio and relative error use ‖ΔW‖²_F "
            "computed from the dense matrix, the effective rank only the known values.",
        ]
    columns = [("shape", "shape", ">11"), ("rank", "rank", ">5"), ("energy", "energy_ratio", ">8.4f"),
               ("rel_err", "relative_error", ">8.4f"), ("eff_rank", "effective_rank", ">8.2f")]  # fmt: skip
    lines += ["", *module_table(analysis["modules"], columns, name_width=52, indent="  ")]
    if s["clamped_modules"]:
        lines.append("  (* clamped)")
    return "\n".join(lines) + "\n"


def module_table(
    modules: Mapping[str, Mapping[str, Any]], columns: Sequence[tuple[str, str, str]], name_width: int, indent: str = ""
) -> list[str]:
    """A text table of per-module entries: a header, then one row per module.

    Args:
        modules: module name -> its report entry.
        columns: (title, entry key, format spec such as ``>8.4f``) of each column after the module name; ``shape``
            is written ``out×in`` and ``rank`` gets a ``*`` where the entry is ``clamped``.
        name_width: width of the module-name column.
        indent: prefix of every line.
    """

    def cell(entry: Mapping[str, Any], key: str) -> Any:
        if key == "shape":
            return f"{entry['shape'][0]}×{entry['shape'][1]}"
        if key == "rank" and "clamped" in entry:
            return f"{entry['rank']}{'*' if entry['clamped'] else ''}"
        return entry[key]

    widths = [spec.partition(".")[0].rstrip("efg") for _, _, spec in columns]
    header = " ".join(f"{title:{width}}" for (title, _, _), width in zip(columns, widths, strict=True))
    rows = [f"{indent}{'module':<{name_width}} {header}"]
    for name, entry in modules.items():
        values = " ".join(f"{cell(entry, key):{spec}}" for _, key, spec in columns)
        rows.append(f"{indent}{name:<{name_width}} {values}")
    return rows


def _shown_spectra(modules: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """A few modules for the spectra panel: the worst and the best by relative error, and some in between."""
    ordered = sorted(modules, key=lambda name: modules[name]["relative_error"], reverse=True)
    if len(ordered) <= SPECTRA_SHOWN:
        return ordered
    picks = np.linspace(0, len(ordered) - 1, SPECTRA_SHOWN).round().astype(int)
    return [ordered[i] for i in dict.fromkeys(picks.tolist())]


def analysis_figure(analysis: Mapping[str, Any]) -> Figure:
    """4 panels: relative-error histogram, energy-ratio histogram, spectra of a few modules, error vs energy."""
    modules, rank = analysis["modules"], analysis["rank"]
    errors = np.array([m["relative_error"] for m in modules.values()])
    energies = np.array([m["energy_ratio"] for m in modules.values()])
    count = min(30, max(5, len(modules) // 2))
    # bins span the data and the threshold line, so bars stay visible next to it
    error_bins = np.linspace(0.0, max(float(errors.max()), ERROR_THRESHOLD) * 1.02, count + 1)
    energy_bins = np.linspace(min(float(energies.min()), ENERGY_THRESHOLD) - 0.01, 1.0, count + 1)
    fig, axes = new_figure((11, 8), 2, 2)
    (ax_err, ax_en), (ax_spec, ax_sc) = axes

    ax_err.hist(errors, bins=error_bins, color="tab:red", alpha=0.8)
    ax_err.axvline(ERROR_THRESHOLD, color="k", ls="--", label=f"threshold {ERROR_THRESHOLD}")
    ax_err.set(xlabel=f"relative error at rank {rank}", ylabel="modules", title="Reconstruction error")
    ax_err.legend(fontsize="small")

    ax_en.hist(energies, bins=energy_bins, color="tab:blue", alpha=0.8)
    ax_en.axvline(ENERGY_THRESHOLD, color="k", ls="--", label=f"threshold {ENERGY_THRESHOLD}")
    ax_en.set(xlabel=f"energy ratio at rank {rank}", ylabel="modules", title="Energy captured")
    ax_en.legend(fontsize="small")

    for name in _shown_spectra(modules):
        values = np.maximum(np.asarray(modules[name]["singular_values"], dtype=float), 1e-12)
        ax_spec.semilogy(np.arange(1, len(values) + 1), values, marker=".", label=name)
    ax_spec.axvline(rank, color="k", ls="--", label=f"r = {rank}")
    ax_spec.set(xlabel="index i", ylabel="σ_i", title="Singular-value spectra")
    ax_spec.legend(fontsize="x-small")

    ax_sc.scatter(energies, errors, s=12, alpha=0.7)
    ax_sc.axvline(ENERGY_THRESHOLD, color="tab:blue", ls=":", lw=1)
    ax_sc.axhline(ERROR_THRESHOLD, color="tab:red", ls=":", lw=1)
    ax_sc.set(xlabel="energy ratio", ylabel="relative error", title="Error vs energy")

    verdict = "holds" if analysis["summary"]["low_rank_hypothesis"]["holds"] else "does not hold"
    fig.suptitle(f"SVD analysis at rank {rank} ({len(modules)} modules; low-rank hypothesis {verdict})")
    return fig
