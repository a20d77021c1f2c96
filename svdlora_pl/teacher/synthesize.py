"""A rank-R teacher update, synthesized from a PEFT LoRA adapter or taken from a real full fine-tune: the library
behind ``svdlora synthesize`` (:func:`synthesize`).

From an adapter, per module the LoRA update s·B·A (rank r) keeps its r singular triplets exactly, gets R − r appended
directions with σ decaying from σ_r and calibrated noise of energy ``noise_scale²·‖s·B·A‖_F²`` inside the rank-R span
(the construction, in float64, is in :mod:`svdlora_pl.teacher.synthesis`); ΔW is never formed densely. A teacher
synthesized from a LoRA run contains that run's update, so an SVD-init from it starts where that run ended (the
report says so).

From a full fine-tune, per target module the dense ΔW = W_finetuned − W_base is read one module at a time
(:mod:`svdlora_pl.teacher.full_finetune`) and kept as its rank-R truncated SVD (:mod:`svdlora_pl.teacher.delta_svd`;
R above min(out, in) keeps the whole ΔW, ``clamped``), with no tail and no noise: a teacher independent of any LoRA
run, the non-circular test of an SVD-init. Its report gives per module the energy kept at rank R against the true
‖ΔW‖_F² of the dense matrix.

Files (written atomically, all or nothing): the teacher, ``synthesized_delta_rank{R}.safetensors`` (adapter) or
``full_delta_rank{R}.safetensors`` (full fine-tune), ``<module>.U`` / ``.S`` / ``.V`` with ΔW = U·diag(S)·Vᵀ and the
provenance in its metadata (read by :func:`svdlora_pl.lora.factor_files.load_factors`); ``synthesis_report.json`` /
``.txt`` (:mod:`svdlora_pl.teacher.synthesis_report`: per module shape, ranks, energies and fractions; summary;
provenance); ``synthesis_plots.png`` (singular values of ~4 modules, energy split per module kind).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from svdlora_pl.errors import InputError
from svdlora_pl.io import atomic_directory, check_output_dir, json_text
from svdlora_pl.spectral import FactoredSVD, cpu_threads, svdvals_of_modules
from svdlora_pl.teacher.delta_svd import SVDOptions, check_source, delta_svds, open_checked_pair
from svdlora_pl.teacher.synthesis import DEFAULT_DECAY, save_synthesized, synthesize_adapter

log = logging.getLogger(__name__)

REPORT_NAME = "synthesis_report"
PLOT_NAME = "synthesis_plots.png"
DEFAULT_NOISE_SCALE = 0.1


def delta_name(target_rank: int) -> str:
    """File name of a teacher synthesized from an adapter: ``synthesized_delta_rank{R}.safetensors``."""
    return f"synthesized_delta_rank{target_rank}.safetensors"


def full_delta_name(target_rank: int) -> str:
    """File name of a full fine-tune's teacher: ``full_delta_rank{R}.safetensors``."""
    return f"full_delta_rank{target_rank}.safetensors"


def _write(output_dir: Path, teacher: str, svds: dict[str, FactoredSVD], metadata: dict[str, str],
           report: dict[str, Any], text: str, figure: Any) -> None:  # fmt: skip
    """The teacher file, the JSON and text reports and the figure, into ``output_dir`` atomically."""
    with atomic_directory(output_dir) as staging:
        save_synthesized(staging / teacher, svds, metadata)
        (staging / f"{REPORT_NAME}.json").write_text(json_text(report), encoding="utf-8")
        (staging / f"{REPORT_NAME}.txt").write_text(text, encoding="utf-8")
        figure.savefig(staging / PLOT_NAME, dpi=110)


def _from_adapter(
    output_dir: Path,
    adapter: Path | None,
    target_rank: int,
    noise_scale: float,
    decay: float,
    seed: int,
    overwrite: bool,
) -> dict[str, Any]:
    from svdlora_pl.lora.adapters import read_adapter
    from svdlora_pl.teacher.synthesis_report import build_report, format_report, synthesis_figure

    if adapter is None:
        raise InputError("adapter or base: give one source")
    check_output_dir(output_dir, [adapter], overwrite)
    with cpu_threads(1):  # per-module checks and small factorizations: threads only contend (see cpu_threads)
        lora = read_adapter(adapter)
        factors = {m: (f.B, f.A, f.scaling) for m, f in lora.modules.items()}
        try:
            svds, energies = synthesize_adapter(factors, target_rank, noise_scale, decay, seed)
        except InputError as error:
            raise InputError(f"{adapter}: {error}") from None
        lora_spectra = {m: S.cpu().numpy() for m, S in svdvals_of_modules(factors).items()}
    provenance = {
        "source_adapter": str(Path(adapter).resolve()),
        "base_model": lora.base_model,
        "target_rank": target_rank,
        "noise_scale": noise_scale,
        "decay": decay,
        "seed": seed,
        "lora_ranks": sorted({f.rank for f in lora.modules.values()}),
    }
    report = build_report({m: f.shape for m, f in lora.modules.items()}, energies, provenance)
    metadata = {k: str(v) for k, v in provenance.items() if k != "lora_ranks"}
    metadata["lora_rank"] = ",".join(map(str, provenance["lora_ranks"]))
    metadata["format"] = "svdlora-synthesized-usv"
    teacher_spectra = {m: svd.S.detach().cpu().numpy() for m, svd in svds.items()}
    figure = synthesis_figure(lora_spectra, teacher_spectra, report)
    _write(output_dir, delta_name(target_rank), svds, metadata, report, format_report(report), figure)
    return report


def _from_full_finetune(output_dir: Path, base: str, finetuned: str, target_modules: list[str] | None,
                        svd: SVDOptions, target_rank: int, overwrite: bool) -> dict[str, Any]:  # fmt: skip
    from svdlora_pl.teacher.synthesis_report import build_full_report, format_full_report, full_delta_figure

    pair = open_checked_pair(output_dir, base, finetuned, target_modules, overwrite)
    svds: dict[str, FactoredSVD] = {}
    spectra: dict[str, np.ndarray] = {}
    energies: dict[str, dict[str, float]] = {}
    for name, result in delta_svds(pair, target_rank, svd, "synthesize"):
        kept, discarded = result.energies()
        svds[name], spectra[name] = result.svd, result.spectrum.double().numpy()
        energies[name] = {
            "kept_energy": kept,
            "discarded_energy": discarded,
            "total_energy": result.total_energy,
            "rank": float(result.svd.S.shape[0]),
            "target_rank": float(target_rank),
        }
    provenance = {
        "base": base,
        "finetuned": finetuned,
        "base_directory": str(pair.base.directory.resolve()),
        "finetuned_directory": str(pair.finetuned.directory.resolve()),
        "target_rank": target_rank,
        "method": svd.kind,
        "svd": svd.method,
        "niter": svd.niter,
        "oversample": svd.oversample,
        "seed": svd.seed,
        "target_modules": list(pair.targets),
    }
    report = build_full_report(pair.shapes, energies, provenance)
    clamped = report["summary"]["clamped_modules"]
    if clamped:
        log.warning(
            "target_rank %d is above min(out, in) of %d modules: their whole ΔW is kept (\"clamped\" in the report)",
            target_rank, clamped,
        )  # fmt: skip
    metadata = {
        "base": base,
        "finetuned": finetuned,
        "rank": str(target_rank),
        "method": svd.kind,
        "target_modules": ",".join(pair.targets),
        "format": "svdlora-full-delta-usv",
    }
    figure = full_delta_figure(spectra, report)
    _write(output_dir, full_delta_name(target_rank), svds, metadata, report, format_full_report(report), figure)
    return report


def synthesize(
    output_dir: Path,
    target_rank: int,
    adapter: Path | None = None,
    base: str | None = None,
    finetuned: str | None = None,
    target_modules: list[str] | None = None,
    svd: SVDOptions = SVDOptions(),
    noise_scale: float | None = None,
    decay: float | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """A rank-R teacher update, synthesized from a PEFT LoRA adapter or taken from a real full fine-tune.

    From an adapter: the LoRA update's singular triplets kept exactly, R − r decaying directions appended,
    calibrated noise inside the span, factored throughout (ΔW is never formed). From base and finetuned: the rank-R
    truncated SVD of the full fine-tune's ΔW = W_finetuned − W_base (no tail, no noise).

    Writes synthesized_delta_rank{R}.safetensors (adapter) or full_delta_rank{R}.safetensors (base), with U, S, V
    per module, synthesis_report.json/.txt and synthesis_plots.png into the output directory, atomically (nothing is
    written on an error). A teacher synthesized from a LoRA run contains that run's update, so an SVD-init from it
    starts where that run ended.

    Args:
        output_dir: Directory to write (replaced atomically; may not contain the source).
        target_rank: Rank R of the teacher: with adapter, LoRA rank <= R <= min(out, in) per module; with base,
            R >= 1, clamped to min(out, in).
        adapter: Source: a PEFT LoRA adapter directory.
        base: Source: the base model of a full fine-tune, ``svdlora:tiny-qwen2``, a save_pretrained directory
            (safetensors) or a Hub name (HF cache first, HF_HUB_OFFLINE honoured); needs finetuned.
        finetuned: The fully fine-tuned model, same architecture as base (only with base).
        target_modules: Last names of the modules to difference (only with base; default: every Qwen2 projection).
        svd: SVD of each dense ΔW (only with base).
        noise_scale: Noise energy = noise_scale² × the LoRA update's energy (>= 0; only with adapter; default 0.1).
        decay: Appended tail σ_(r+j) = σ_r·exp(−decay·j) (>= 0; only with adapter; default 0.1).
        seed: Seed of the random bases and noise (only with adapter; with base the randomized SVD has svd.seed).
        overwrite: Replace a non-empty output_dir.

    Returns:
        The report written to synthesis_report.json (see :mod:`svdlora_pl.teacher.synthesis_report`).

    Raises:
        InputError: bad input, in one line naming the option or file: no source or two, an option of the other
            source, target_rank out of range, negative or non-finite noise_scale or decay, a missing adapter or
            model, a non-empty output_dir without overwrite.
    """
    check_source({"adapter": adapter, "base": base}, finetuned, svd, target_modules)
    if target_rank < 1:
        raise InputError(f"target_rank: must be >= 1, got {target_rank}")
    if base is not None and finetuned is not None:  # check_source: base comes with finetuned
        for name, value in (("noise_scale", noise_scale), ("decay", decay)):
            if value is not None:
                raise InputError(
                    f"{name}: not with base (a full fine-tune teacher is its own rank-R truncation: no appended "
                    "tail, no noise)"
                )
        if seed != 0:
            raise InputError("seed: not with base (it seeds the synthesized bases and noise; set svd.seed instead)")
        return _from_full_finetune(output_dir, base, finetuned, target_modules, svd, target_rank, overwrite)
    noise_scale = float(DEFAULT_NOISE_SCALE if noise_scale is None else noise_scale)
    decay = float(DEFAULT_DECAY if decay is None else decay)
    for name, value in (("noise_scale", noise_scale), ("decay", decay)):
        if not (math.isfinite(value) and value >= 0):
            raise InputError(f"{name}: must be a finite number >= 0, got {value}")
    return _from_adapter(output_dir, adapter, target_rank, noise_scale, decay, seed, overwrite)
