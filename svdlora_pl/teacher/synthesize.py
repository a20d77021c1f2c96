"""``svdlora synthesize``: a rank-R teacher update, synthesized from a PEFT LoRA adapter or taken from a real full
fine-tune.

Usage::

    svdlora synthesize --adapter run1/adapter --target-rank 64 --output-dir teacher/
    svdlora synthesize --adapter run1/adapter --target-rank 64 --noise-scale 0 --decay 0.05 --seed 3 --output-dir t/
    svdlora synthesize --base svdlora:tiny-qwen2 --finetuned full_run/model --target-rank 64 --output-dir teacher/

Per module the LoRA update s·B·A (rank r) keeps its r singular triplets exactly, gets R − r appended directions
with σ decaying from σ_r (``--decay``) and calibrated noise of energy ``noise_scale²·‖s·B·A‖_F²`` inside the
rank-R span (see :mod:`svdlora_pl.teacher.synthesis`). ΔW is never formed densely.

Output, written atomically (all or nothing) to ``--output-dir``:

- ``synthesized_delta_rank{R}.safetensors``: ``<module>.U`` / ``.S`` / ``.V`` (ΔW = U·diag(S)·Vᵀ), with the
  source adapter, base model and parameters in its metadata; reads with :func:`svdlora_pl.lora.factor_files.load_factors`.
- ``synthesis_report.json`` / ``synthesis_report.txt``: per module shape, ranks, kept/added/noise/total energy and
  fractions; summary; provenance.
- ``synthesis_plots.png``: singular values before/after for ~4 modules; energy split per module kind.

A teacher synthesized from a LoRA run contains that run's update, so an SVD-init from it starts where that run
ended (the report says so). Bad input (missing adapter, target rank below the LoRA rank or above min(out, in),
negative noise or decay, a non-empty output directory without ``--overwrite``) exits with code 2 and one line;
nothing is written then.

**Full fine-tune** (``--base MODEL --finetuned MODEL``, instead of ``--adapter``): per target module
(``--target-modules``) the dense ΔW = W_finetuned − W_base is read one module at a time
(:mod:`svdlora_pl.teacher.full_finetune`) and kept as its rank-R truncated SVD (``--svd exact`` default, or ``randomized``
with ``--niter``/``--oversample``/``--seed``); R above min(out, in) keeps the whole ΔW (``clamped``). No tail and
no noise: ``--noise-scale``/``--decay`` are refused. Output: ``full_delta_rank{R}.safetensors`` (the same
``<module>.U/S/V`` layout; metadata base, finetuned, rank, method), ``synthesis_report.json/.txt`` (per module the
energy kept at rank R against the true ‖ΔW‖_F² of the dense matrix) and ``synthesis_plots.png``. This teacher is
independent of any LoRA run: the non-circular test of an SVD-init.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from svdlora_pl.lora.adapters import LoRAAdapter, read_adapter
from svdlora_pl.teacher.delta_svd import (
    SVDOptions,
    add_full_finetune_arguments,
    full_finetune_options,
    local_inputs,
    target_names,
    warn_unchanged,
)
from svdlora_pl.errors import InputError
from svdlora_pl.io import atomic_directory
from svdlora_pl.spectral import FactoredSVD, cpu_threads, svdvals_of_modules
from svdlora_pl.teacher.synthesis import DEFAULT_DECAY, save_synthesized, synthesize_adapter
from svdlora_pl.cli.tool_args import ToolParser, check_output_dir
from svdlora_pl.teacher.full_finetune import PROGRESS_MIN_ELEMENTS, WeightPair, open_pair

log = logging.getLogger(__name__)

REPORT_NAME = "synthesis_report"
PLOT_NAME = "synthesis_plots.png"


def delta_name(target_rank: int) -> str:
    return f"synthesized_delta_rank{target_rank}.safetensors"


def full_delta_name(target_rank: int) -> str:
    return f"full_delta_rank{target_rank}.safetensors"


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="svdlora synthesize",
        description="Synthesize a rank-R teacher update from a PEFT LoRA adapter: the LoRA update's singular "
        "triplets kept exactly, R − r decaying directions appended, calibrated noise inside the span. Factored "
        "throughout (ΔW is never formed). Or, with --base/--finetuned, the rank-R truncated SVD of a real full "
        "fine-tune's ΔW = W_finetuned − W_base (no tail, no noise).",
        epilog="Writes synthesized_delta_rank{R}.safetensors (--adapter) or full_delta_rank{R}.safetensors (--base) "
        "(U, S, V per module), synthesis_report.json/.txt and synthesis_plots.png into --output-dir, atomically. "
        "Note: a teacher synthesized from a LoRA run contains that run's update, so an SVD-init from it starts "
        "where that run ended.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--adapter", type=Path, help="PEFT LoRA adapter directory")
    source.add_argument(
        "--base",
        metavar="MODEL",
        help="base model of a full fine-tune: svdlora:tiny-qwen2, a save_pretrained directory (safetensors) or a "
        "Hub name (HF cache, HF_HUB_OFFLINE honoured); needs --finetuned",
    )
    add_full_finetune_arguments(parser)
    parser.add_argument(
        "--target-rank",
        required=True,
        type=int,
        help="rank R of the teacher (--adapter: LoRA rank <= R <= min(out, in); --base: R >= 1, clamped to min(out, in))",
    )
    parser.add_argument(
        "--noise-scale",
        type=float,
        help="noise energy = noise_scale² × LoRA energy (>= 0; default 0.1; --adapter only)",
    )
    parser.add_argument(
        "--decay",
        type=float,
        help=f"appended tail σ_(r+j) = σ_r·exp(−decay·j) (>= 0; default {DEFAULT_DECAY}; --adapter only)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed of bases and noise, or of --svd randomized (default 0)"
    )
    parser.add_argument("--output-dir", required=True, type=Path, help="directory to write (replaced atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
    return parser


def _check_options(args: argparse.Namespace) -> None:
    if args.target_rank < 1:
        raise InputError(f"--target-rank: must be >= 1, got {args.target_rank}")
    if args.base is not None:
        for option in ("noise_scale", "decay"):
            if getattr(args, option) is not None:
                raise InputError(
                    f"--{option.replace('_', '-')}: not with --base (a full fine-tune teacher is its own rank-R "
                    "truncation: no appended tail, no noise)"
                )
        return
    args.noise_scale = 0.1 if args.noise_scale is None else args.noise_scale
    args.decay = DEFAULT_DECAY if args.decay is None else args.decay
    if not (math.isfinite(args.noise_scale) and args.noise_scale >= 0):
        raise InputError(f"--noise-scale: must be a finite number >= 0, got {args.noise_scale}")
    if not (math.isfinite(args.decay) and args.decay >= 0):
        raise InputError(f"--decay: must be a finite number >= 0, got {args.decay}")


def _provenance(args: argparse.Namespace, adapter: LoRAAdapter) -> dict[str, Any]:
    return {
        "source_adapter": str(args.adapter.resolve()),
        "base_model": adapter.base_model,
        "target_rank": args.target_rank,
        "noise_scale": args.noise_scale,
        "decay": args.decay,
        "seed": args.seed,
        "lora_ranks": sorted({f.rank for f in adapter.modules.values()}),
    }


def _metadata(provenance: dict[str, Any]) -> dict[str, str]:
    meta = {k: str(v) for k, v in provenance.items() if k != "lora_ranks"}
    meta["lora_rank"] = ",".join(map(str, provenance["lora_ranks"]))
    meta["format"] = "svdlora-synthesized-usv"
    return meta


def _write(
    args: argparse.Namespace,
    svds: dict[str, FactoredSVD],
    report: dict[str, Any],
    lora_spectra: dict[str, np.ndarray],
) -> None:
    from svdlora_pl.plots import close_figures
    from svdlora_pl.teacher.synthesis_report import format_report, synthesis_figure

    with atomic_directory(args.output_dir) as staging:
        save_synthesized(staging / delta_name(args.target_rank), svds, _metadata(report["provenance"]))
        (staging / f"{REPORT_NAME}.json").write_text(
            json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8"
        )
        (staging / f"{REPORT_NAME}.txt").write_text(format_report(report), encoding="utf-8")
        teacher_spectra = {m: svd.S.detach().cpu().numpy() for m, svd in svds.items()}
        figure = synthesis_figure(lora_spectra, teacher_spectra, report)
        try:
            figure.savefig(staging / PLOT_NAME, dpi=110)
        finally:
            close_figures([figure])


def _full_provenance(args: argparse.Namespace, pair: WeightPair, options: SVDOptions) -> dict[str, Any]:
    return {
        "base": args.base,
        "finetuned": args.finetuned,
        "base_directory": str(pair.base.directory.resolve()),
        "finetuned_directory": str(pair.finetuned.directory.resolve()),
        "target_rank": args.target_rank,
        "method": options.kind,
        "svd": options.method,
        "niter": options.niter,
        "oversample": options.oversample,
        "seed": options.seed,
        "target_modules": list(pair.targets),
    }


def _decompose(
    pair: WeightPair, rank: int, options: SVDOptions
) -> tuple[dict[str, FactoredSVD], dict[str, np.ndarray], dict[str, dict[str, float]]]:
    """Rank-``rank`` SVD, known spectrum and energies of every module's ΔW, one module in memory at a time."""
    from tqdm.auto import tqdm

    from svdlora_pl.teacher.delta_svd import delta_svd

    svds: dict[str, FactoredSVD] = {}
    spectra: dict[str, np.ndarray] = {}
    energies: dict[str, dict[str, float]] = {}
    disable = pair.elements < PROGRESS_MIN_ELEMENTS
    with tqdm(total=len(pair.shapes), desc="synthesize", unit="module", disable=disable) as bar:
        for name, delta in pair.deltas():
            result = delta_svd(delta, rank, options)
            del delta
            kept, discarded = result.energies()
            svds[name], spectra[name] = result.svd, result.spectrum.double().numpy()
            energies[name] = {
                "kept_energy": kept,
                "discarded_energy": discarded,
                "total_energy": result.total_energy,
                "rank": float(result.svd.S.shape[0]),
                "target_rank": float(rank),
            }
            bar.update()
    warn_unchanged([m for m, e in energies.items() if e["total_energy"] == 0], len(energies), log)
    return svds, spectra, energies


def run_full(args: argparse.Namespace, options: SVDOptions) -> dict[str, Any]:
    """``--base``/``--finetuned``: the rank-R truncated SVD of each dense ΔW, its report and plots, written."""
    from svdlora_pl.plots import close_figures
    from svdlora_pl.teacher.synthesis_report import build_full_report, format_full_report, full_delta_figure

    check_output_dir(args.output_dir, local_inputs(args.base, args.finetuned), args.overwrite)
    pair = open_pair(args.base, args.finetuned, target_names(args.target_modules))
    svds, spectra, energies = _decompose(pair, args.target_rank, options)
    report = build_full_report(pair.shapes, energies, _full_provenance(args, pair, options))
    clamped = report["summary"]["clamped_modules"]
    if clamped:
        log.warning(
            "--target-rank %d is above min(out, in) of %d modules: their whole ΔW is kept (\"clamped\" in the report)",
            args.target_rank, clamped,
        )  # fmt: skip
    metadata = {
        "base": args.base,
        "finetuned": args.finetuned,
        "rank": str(args.target_rank),
        "method": options.kind,
        "target_modules": ",".join(pair.targets),
        "format": "svdlora-full-delta-usv",
    }
    figure = full_delta_figure(spectra, report)
    try:
        with atomic_directory(args.output_dir) as staging:
            save_synthesized(staging / full_delta_name(args.target_rank), svds, metadata)
            (staging / f"{REPORT_NAME}.json").write_text(
                json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8"
            )
            (staging / f"{REPORT_NAME}.txt").write_text(format_full_report(report), encoding="utf-8")
            figure.savefig(staging / PLOT_NAME, dpi=110)
    finally:
        close_figures([figure])
    return report


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Validate, read, synthesize and write; returns the report. Raises InputError for bad input."""
    from svdlora_pl.teacher.synthesis_report import build_report

    options = full_finetune_options(args, args.seed)
    _check_options(args)
    if options is not None:
        return run_full(args, options)
    check_output_dir(args.output_dir, [args.adapter], args.overwrite)
    with cpu_threads(1):  # per-module checks and small factorizations: threads only contend (see cpu_threads)
        adapter = read_adapter(args.adapter)
        factors = {m: (f.B, f.A, f.scaling) for m, f in adapter.modules.items()}
        try:
            svds, energies = synthesize_adapter(factors, args.target_rank, args.noise_scale, args.decay, args.seed)
        except InputError as error:
            raise InputError(f"{args.adapter}: {error}") from None
        lora_spectra = {m: S.cpu().numpy() for m, S in svdvals_of_modules(factors).items()}
    report = build_report({m: f.shape for m, f in adapter.modules.items()}, energies, _provenance(args, adapter))
    _write(args, svds, report, lora_spectra)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``svdlora synthesize``; bad input raises InputError (``svdlora`` prints it and exits 2)."""
    args = build_parser().parse_args(None if argv is None else list(argv))
    report = run(args)
    s = report["summary"]
    out = args.output_dir
    if args.base is not None:
        print(
            f"kept the rank-{args.target_rank} truncation of the full fine-tune's ΔW for {s['modules']} modules "
            f"(energy kept {s['overall_kept_fraction']:.3f} overall, {s['mean_kept_fraction']:.3f} per module on "
            f"average, least {s['min_kept_fraction']['kept_fraction']:.3f})"
        )
        for name in (full_delta_name(args.target_rank), f"{REPORT_NAME}.json", f"{REPORT_NAME}.txt", PLOT_NAME):
            print(f"wrote {out / name}")
        return 0
    print(
        f"synthesized rank-{args.target_rank} teacher for {s['modules']} modules (LoRA ranks {s['lora_ranks']}; "
        f"energy kept {s['overall_kept_fraction']:.3f}, added {s['overall_added_fraction']:.3f}, "
        f"noise {s['overall_noise_fraction']:.3f})"
    )
    for name in (delta_name(args.target_rank), f"{REPORT_NAME}.json", f"{REPORT_NAME}.txt", PLOT_NAME):
        print(f"wrote {out / name}")
    return 0
