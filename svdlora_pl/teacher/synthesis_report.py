"""Reports of ``svdlora synthesize``: the JSON dict, its plain-text rendering and the two-panel figure.

Energies are squared Frobenius norms per module (see :mod:`svdlora_pl.teacher.synthesis`): ``kept`` = energy of the LoRA
update (its r singular values, kept exactly), ``added`` = the appended decaying tail, ``noise`` = the calibrated
noise, ``total`` = ‖ΔW_teacher‖_F². Fractions are of ``total``; with noise 0, kept + added = total exactly, with
noise the cross term 2⟨clean, noise⟩ is the remainder (``cross_fraction``).

The teacher of a real full fine-tune (``synthesize`` with ``base`` and ``finetuned``, :func:`build_full_report`) has its
own report: per module ``kept`` = Σ_{i≤R} σᵢ² of ΔW = W_finetuned − W_base, ``total`` = ‖ΔW‖_F² computed from the
dense matrix, ``kept_fraction`` = kept / total and ``relative_error`` = ‖ΔW − ΔW_R‖_F / ‖ΔW‖_F.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from svdlora_pl.plots import new_figure
from svdlora_pl.teacher.factor_report import module_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PROVENANCE_NOTE = (
    "A teacher synthesized from a LoRA run contains that run's update (its top-r singular triplets are kept "
    "exactly), so an SVD-init from it starts where that run ended; it is not an independent teacher."
)
KIND_ORDER = ("q", "k", "v", "o", "gate", "up", "down")
PARTS = ("kept", "added", "noise")


@dataclass(frozen=True)
class _Text:
    """Layout of a text report: ``details`` and ``summary`` are :meth:`str.format` templates of the provenance
    ``p``, the summary ``s`` and ``modules`` (the target modules, space-separated); ``columns`` as in
    :func:`~svdlora_pl.teacher.factor_report.module_table`; ``clamped`` is printed after a table with clamped rows."""

    title: str
    details: str
    summary: str
    columns: tuple[tuple[str, str, str], ...]
    clamped: str | None = None


_ADAPTER_TEXT = _Text(
    "svdlora synthesize — teacher update synthesized from a LoRA adapter",
    "source adapter: {p[source_adapter]}\nbase model: {p[base_model]}\n"
    "target rank {p[target_rank]}, noise scale {p[noise_scale]}, decay {p[decay]}, seed {p[seed]}",
    "{s[modules]} modules, LoRA ranks {s[lora_ranks]}, target rank {s[target_rank]}\n"
    "total energy {s[total_total_energy]:.4e}: kept {s[overall_kept_fraction]:.4f}, added "
    "{s[overall_added_fraction]:.4f}, noise {s[overall_noise_fraction]:.4f}, cross {s[overall_cross_fraction]:+.4f}\n"
    "mean per module: kept {s[mean_kept_fraction]:.4f}, added {s[mean_added_fraction]:.4f}, "
    "noise {s[mean_noise_fraction]:.4f}",
    (("shape", "shape", ">9"), ("r", "lora_rank", ">3"), ("R", "target_rank", ">4"),
     ("total", "total_energy", ">10.3e"), ("kept", "kept_fraction", ">7.4f"), ("added", "added_fraction", ">7.4f"),
     ("noise", "noise_fraction", ">7.4f")),
)  # fmt: skip
_FULL_TEXT = _Text(
    "svdlora synthesize — teacher update of a real full fine-tune, kept at rank R",
    "base model: {p[base]}\nfine-tuned model: {p[finetuned]}\n"
    "target rank {p[target_rank]}, SVD {p[method]}, modules {modules}",
    "{s[modules]} modules ({s[clamped_modules]} clamped to min(out, in))\n"
    "total energy {s[total_total_energy]:.4e}: kept {s[overall_kept_fraction]:.4f} at rank {s[target_rank]}\n"
    "mean per module: kept {s[mean_kept_fraction]:.4f}, relative error {s[mean_relative_error]:.4f} "
    "(max {s[max_relative_error]:.4f}); least kept: {s[min_kept_fraction][module]} "
    "({s[min_kept_fraction][kept_fraction]:.4f})",
    (("shape", "shape", ">11"), ("R", "rank", ">5"), ("total", "total_energy", ">10.3e"),
     ("kept", "kept_fraction", ">7.4f"), ("rel_err", "relative_error", ">8.4f")),
    "  (* clamped: R > min(out, in); the whole ΔW is kept)",
)  # fmt: skip


def _render(report: Mapping[str, Any], text: _Text) -> str:
    p, s = report["provenance"], report["summary"]
    values = {"p": p, "s": s, "modules": " ".join(p.get("target_modules", ()))}
    lines = [text.title, text.details.format(**values), "", f"NOTE: {p['note']}", "", text.summary.format(**values), ""]
    lines += module_table(report["modules"], text.columns, name_width=40)
    if text.clamped and s.get("clamped_modules"):
        lines.append(text.clamped)
    return "\n".join(lines) + "\n"


def module_kind(module: str) -> str:
    """``model.layers.0.self_attn.q_proj`` -> ``q``; ``...mlp.gate_proj`` -> ``gate``; else the last name."""
    return module.rpartition(".")[2].removesuffix("_proj")


def _fractions(kept: float, added: float, noise: float, total: float) -> dict[str, float]:
    if total <= 0:
        return {f"{p}_fraction": 0.0 for p in (*PARTS, "cross")}
    out = {f"{p}_fraction": v / total for p, v in zip(PARTS, (kept, added, noise), strict=True)}
    out["cross_fraction"] = (total - kept - added - noise) / total
    return out


def module_entry(shape: Sequence[int], energy: Mapping[str, float]) -> dict[str, Any]:
    """One module's report: shape, ranks, energies and their fractions of the total."""
    kept, added, noise, total = (float(energy[f"{p}_energy"]) for p in (*PARTS, "total"))
    return {
        "shape": [int(shape[0]), int(shape[1])],
        "lora_rank": int(energy["lora_rank"]),
        "target_rank": int(energy["target_rank"]),
        "kept_energy": kept,
        "added_energy": added,
        "noise_energy": noise,
        "total_energy": total,
        **_fractions(kept, added, noise, total),
    }


def build_report(
    shapes: Mapping[str, Sequence[int]], energies: Mapping[str, Mapping[str, float]], provenance: Mapping[str, Any]
) -> dict[str, Any]:
    """``{"provenance", "summary", "modules"}``: per-module entries, totals over modules and per-module means."""
    modules = {m: module_entry(shapes[m], energies[m]) for m in energies}
    totals = {f"{p}_energy": math.fsum(e[f"{p}_energy"] for e in modules.values()) for p in (*PARTS, "total")}
    fraction_keys = [f"{p}_fraction" for p in (*PARTS, "cross")]
    summary: dict[str, Any] = {
        "modules": len(modules),
        "lora_ranks": sorted({e["lora_rank"] for e in modules.values()}),
        "target_rank": sorted({e["target_rank"] for e in modules.values()}),
        **{f"total_{k}": v for k, v in totals.items()},
        **{
            f"overall_{k}": v
            for k, v in _fractions(*(totals[f"{p}_energy"] for p in (*PARTS, "total"))).items()  # type: ignore[arg-type]
        },
        **{f"mean_{k}": math.fsum(e[k] for e in modules.values()) / len(modules) for k in fraction_keys},
    }
    return {"provenance": {**provenance, "note": PROVENANCE_NOTE}, "summary": summary, "modules": modules}


def format_report(report: Mapping[str, Any]) -> str:
    """Plain-text rendering of :func:`build_report`'s dict."""
    return _render(report, _ADAPTER_TEXT)


def sample_modules(modules: Sequence[str], count: int = 4) -> list[str]:
    """Up to ``count`` evenly spaced modules (first and last included)."""
    if len(modules) <= count:
        return list(modules)
    return [modules[i] for i in dict.fromkeys(np.linspace(0, len(modules) - 1, count).round().astype(int).tolist())]


def _kind_energies(report: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    kinds: dict[str, dict[str, float]] = {}
    for module, e in report["modules"].items():
        acc = kinds.setdefault(module_kind(module), dict.fromkeys(PARTS, 0.0))
        for part in PARTS:
            acc[part] += e[f"{part}_energy"]
    order = [k for k in KIND_ORDER if k in kinds] + sorted(set(kinds) - set(KIND_ORDER))
    return {k: kinds[k] for k in order}


def synthesis_figure(
    lora_spectra: Mapping[str, np.ndarray], teacher_spectra: Mapping[str, np.ndarray], report: Mapping[str, Any]
) -> Figure:
    """Left: σ before (LoRA, dashed) and after (teacher, solid) for ~4 modules, log scale. Right: energy split
    kept/added/noise per module kind, as shares of kept + added + noise."""
    fig, (left, right) = new_figure((12, 4.5), 1, 2)
    for i, module in enumerate(sample_modules(list(teacher_spectra))):
        color = f"C{i}"
        after, before = np.asarray(teacher_spectra[module]), np.asarray(lora_spectra[module])
        left.semilogy(np.arange(1, len(after) + 1), np.maximum(after, 1e-12), color=color, label=f"{module} teacher")
        left.semilogy(
            np.arange(1, len(before) + 1), np.maximum(before, 1e-12), "o--", color=color, label=f"{module} LoRA"
        )
    left.set_xlabel("index i")
    left.set_ylabel("singular value σ_i")
    left.set_title("singular values: LoRA (dashed) vs synthesized teacher (solid)")
    left.legend(fontsize="x-small")

    kinds = _kind_energies(report)
    names = list(kinds)
    bottom = np.zeros(len(names))
    for part, color in zip(PARTS, ("C0", "C1", "C3"), strict=True):
        share = np.array([kinds[k][part] / max(sum(kinds[k].values()), 1e-300) for k in names])
        right.bar(names, share, bottom=bottom, color=color, label=part)
        bottom += share
    right.set_ylim(0, 1)
    right.set_xlabel("module kind")
    right.set_ylabel("share of energy")
    right.set_title("energy split per module kind")
    right.legend()
    return fig


# ---------------------------------------------------------------- the teacher of a real full fine-tune (base)
FULL_NOTE = (
    "A teacher from a real full fine-tune: ΔW = W_finetuned − W_base, independent of any LoRA run, kept at rank R "
    "by its truncated SVD (no appended tail, no noise); the discarded energy is what rank R cannot hold."
)


def full_module_entry(shape: Sequence[int], energy: Mapping[str, float]) -> dict[str, Any]:
    """One module of a full fine-tune teacher: the energy kept at rank R against the true ‖ΔW‖²_F.

    ``energy`` holds ``kept_energy`` (Σ_{i≤R} σᵢ²), ``discarded_energy`` (‖ΔW‖²_F − kept), ``total_energy``
    (‖ΔW‖²_F of the dense matrix) and ``rank`` (R, or min(out, in) when R is larger: ``clamped``).
    """
    kept, discarded, total = (float(energy[k]) for k in ("kept_energy", "discarded_energy", "total_energy"))
    return {
        "shape": [int(shape[0]), int(shape[1])],
        "rank": int(energy["rank"]),
        "clamped": int(energy["rank"]) < int(energy["target_rank"]),
        "kept_energy": kept,
        "discarded_energy": discarded,
        "total_energy": total,
        "kept_fraction": min(kept / total, 1.0) if total > 0 else 1.0,
        "relative_error": math.sqrt(discarded / total) if total > 0 else 0.0,
    }


def build_full_report(
    shapes: Mapping[str, Sequence[int]], energies: Mapping[str, Mapping[str, float]], provenance: Mapping[str, Any]
) -> dict[str, Any]:
    """``{"provenance", "summary", "modules"}`` of ``synthesize`` from ``base``: kept/discarded energy per module."""
    modules = {m: full_module_entry(shapes[m], energies[m]) for m in energies}
    kept = math.fsum(e["kept_energy"] for e in modules.values())
    total = math.fsum(e["total_energy"] for e in modules.values())
    worst = min(modules, key=lambda m: modules[m]["kept_fraction"])
    summary = {
        "modules": len(modules),
        "target_rank": int(provenance["target_rank"]),
        "clamped_modules": sum(e["clamped"] for e in modules.values()),
        "total_kept_energy": kept,
        "total_total_energy": total,
        "overall_kept_fraction": min(kept / total, 1.0) if total > 0 else 1.0,
        "mean_kept_fraction": math.fsum(e["kept_fraction"] for e in modules.values()) / len(modules),
        "min_kept_fraction": {"module": worst, "kept_fraction": modules[worst]["kept_fraction"]},
        "mean_relative_error": math.fsum(e["relative_error"] for e in modules.values()) / len(modules),
        "max_relative_error": max(e["relative_error"] for e in modules.values()),
    }
    return {"provenance": {**provenance, "note": FULL_NOTE}, "summary": summary, "modules": modules}


def format_full_report(report: Mapping[str, Any]) -> str:
    """Plain-text rendering of :func:`build_full_report`'s dict."""
    return _render(report, _FULL_TEXT)


def full_delta_figure(spectra: Mapping[str, np.ndarray], report: Mapping[str, Any]) -> Figure:
    """Left: the known singular values of ~4 modules (log scale) and the cut at R. Right: share of ‖ΔW‖²_F kept at
    rank R, per module kind (energies summed over the layers)."""
    fig, (left, right) = new_figure((12, 4.5), 1, 2)
    rank = report["summary"]["target_rank"]
    for module in sample_modules(list(spectra)):
        values = np.maximum(np.asarray(spectra[module], dtype=float), 1e-12)
        left.semilogy(np.arange(1, len(values) + 1), values, marker=".", markersize=3, label=module)
    left.axvline(rank, color="k", ls="--", label=f"R = {rank}")
    left.set(xlabel="index i", ylabel="singular value σ_i", title="spectrum of ΔW = W_finetuned − W_base")
    left.legend(fontsize="x-small")

    kinds: dict[str, list[float]] = {}
    for module, e in report["modules"].items():
        acc = kinds.setdefault(module_kind(module), [0.0, 0.0])
        acc[0] += e["kept_energy"]
        acc[1] += e["total_energy"]
    names = [k for k in KIND_ORDER if k in kinds] + sorted(set(kinds) - set(KIND_ORDER))
    kept = np.array([min(kinds[k][0] / kinds[k][1], 1.0) if kinds[k][1] > 0 else 1.0 for k in names])
    bars = right.bar(names, kept, color="C0", label="kept")
    right.bar_label(bars, labels=[f"{v:.3f}" for v in kept], label_type="center", color="white", fontsize="small")
    right.bar(names, 1.0 - kept, bottom=kept, color="C7", label="discarded")
    right.set_ylim(0, 1)
    right.set(xlabel="module kind", ylabel="share of ‖ΔW‖²_F", title=f"energy kept at rank {rank}")
    right.legend()
    return fig
