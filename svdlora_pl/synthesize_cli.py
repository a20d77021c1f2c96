"""``svdlora synthesize``: a rank-R teacher update synthesized from a PEFT LoRA adapter, kept factored.

Usage::

    svdlora synthesize --adapter run1/adapter --target-rank 64 --output-dir teacher/
    svdlora synthesize --adapter run1/adapter --target-rank 64 --noise-scale 0 --decay 0.05 --seed 3 --output-dir t/

Per module the LoRA update s·B·A (rank r) keeps its r singular triplets exactly, gets R − r appended directions
with σ decaying from σ_r (``--decay``) and calibrated noise of energy ``noise_scale²·‖s·B·A‖_F²`` inside the
rank-R span (see :mod:`svdlora_pl.teacher`). ΔW is never formed densely.

Output, written atomically (all or nothing) to ``--output-dir``:

- ``synthesized_delta_rank{R}.safetensors``: ``<module>.U`` / ``.S`` / ``.V`` (ΔW = U·diag(S)·Vᵀ), with the
  source adapter, base model and parameters in its metadata; reads with :func:`svdlora_pl.factors.load_factors`.
- ``synthesis_report.json`` / ``synthesis_report.txt``: per module shape, ranks, kept/added/noise/total energy and
  fractions; summary; provenance.
- ``synthesis_plots.png``: singular values before/after for ~4 modules; energy split per module kind.

A teacher synthesized from a LoRA run contains that run's update, so an SVD-init from it starts where that run
ended (the report says so). Bad input (missing adapter, target rank below the LoRA rank or above min(out, in),
negative noise or decay, a non-empty output directory without ``--overwrite``) exits with code 2 and one line;
nothing is written then.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from svdlora_pl.adapters import LoRAAdapter, read_adapter
from svdlora_pl.errors import InputError
from svdlora_pl.io import atomic_directory
from svdlora_pl.spectral import FactoredSVD, factored_svdvals
from svdlora_pl.teacher import DEFAULT_DECAY, save_synthesized, synthesize_adapter
from svdlora_pl.tool_args import ToolParser, check_output_dir

REPORT_NAME = "synthesis_report"
PLOT_NAME = "synthesis_plots.png"


def delta_name(target_rank: int) -> str:
    return f"synthesized_delta_rank{target_rank}.safetensors"


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="svdlora synthesize",
        description="Synthesize a rank-R teacher update from a PEFT LoRA adapter: the LoRA update's singular "
        "triplets kept exactly, R − r decaying directions appended, calibrated noise inside the span. Factored "
        "throughout (ΔW is never formed).",
        epilog="Writes synthesized_delta_rank{R}.safetensors (U, S, V per module), synthesis_report.json/.txt and "
        "synthesis_plots.png into --output-dir, atomically. Note: a teacher synthesized from a LoRA run contains "
        "that run's update, so an SVD-init from it starts where that run ended.",
    )
    parser.add_argument("--adapter", required=True, type=Path, help="PEFT LoRA adapter directory")
    parser.add_argument(
        "--target-rank", required=True, type=int, help="rank R of the teacher (LoRA rank <= R <= min(out, in))"
    )
    parser.add_argument(
        "--noise-scale", type=float, default=0.1, help="noise energy = noise_scale² × LoRA energy (>= 0; default 0.1)"
    )
    parser.add_argument(
        "--decay",
        type=float,
        default=DEFAULT_DECAY,
        help=f"appended tail σ_(r+j) = σ_r·exp(−decay·j) (>= 0; default {DEFAULT_DECAY})",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of bases and noise (default 0)")
    parser.add_argument("--output-dir", required=True, type=Path, help="directory to write (replaced atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
    return parser


def _check_options(args: argparse.Namespace) -> None:
    if args.target_rank < 1:
        raise InputError(f"--target-rank: must be >= 1, got {args.target_rank}")
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
    from svdlora_pl.synthesis_report import format_report, synthesis_figure

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


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Validate, read, synthesize and write; returns the report. Raises InputError for bad input."""
    from svdlora_pl.synthesis_report import build_report

    _check_options(args)
    check_output_dir(args.output_dir, [args.adapter], args.overwrite)
    adapter = read_adapter(args.adapter)
    factors = {m: (f.B, f.A, f.scaling) for m, f in adapter.modules.items()}
    try:
        svds, energies = synthesize_adapter(factors, args.target_rank, args.noise_scale, args.decay, args.seed)
    except InputError as error:
        raise InputError(f"{args.adapter}: {error}") from None
    lora_spectra = {m: factored_svdvals(B, A, s).cpu().numpy() for m, (B, A, s) in factors.items()}
    report = build_report({m: f.shape for m, f in adapter.modules.items()}, energies, _provenance(args, adapter))
    _write(args, svds, report, lora_spectra)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``svdlora synthesize``; bad input raises InputError (``svdlora`` prints it and exits 2)."""
    args = build_parser().parse_args(None if argv is None else list(argv))
    report = run(args)
    s = report["summary"]
    out = args.output_dir
    print(
        f"synthesized rank-{args.target_rank} teacher for {s['modules']} modules (LoRA ranks {s['lora_ranks']}; "
        f"energy kept {s['overall_kept_fraction']:.3f}, added {s['overall_added_fraction']:.3f}, "
        f"noise {s['overall_noise_fraction']:.3f})"
    )
    for name in (delta_name(args.target_rank), f"{REPORT_NAME}.json", f"{REPORT_NAME}.txt", PLOT_NAME):
        print(f"wrote {out / name}")
    return 0
