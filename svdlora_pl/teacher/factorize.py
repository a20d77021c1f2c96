"""``svdlora factorize``: rank-r SVD factors of per-module updates ΔW, with the SVD analysis of the spectrum.

Usage::

    svdlora factorize --delta synthesized_delta_rank64.safetensors --rank 16 --output-dir svd/
    svdlora factorize --adapter lora_run/ --rank 8 --split B --output-dir svd/ --overwrite
    svdlora factorize --base Qwen/Qwen2.5-0.5B --finetuned runs/full/model --rank 16 --svd randomized --output-dir svd/

Sources: ``--delta FILE``, a factor file (``<module>.U/S/V`` as written by ``svdlora synthesize``, or
``<module>.lora_A/lora_B`` with B·A = ΔW), ``--adapter DIR``, a PEFT LoRA adapter whose update is
ΔW = s·B·A with its own scaling s (alpha/r or alpha/√r, per module patterns included), or
``--base MODEL --finetuned MODEL``, a real full fine-tune: ΔW = W_finetuned − W_base of every target module
(``--target-modules``, default every Qwen2 projection), read one module at a time (:mod:`svdlora_pl.teacher.full_finetune`).

For factored sources ΔW is never formed: its exact thin SVD comes from a QR of the factors, O((out+in)·r²) per
module: Cholesky QR from the factors' Gram matrices when both are well conditioned after column scaling (κ ≤ 100: the
U·diag(S), Vᵀ of an SVD-form file, or random LoRA factors), with only the top r singular vectors formed; Householder
QR (:func:`svdlora_pl.spectral.factored_svd`) otherwise. Both are exact to float64 rounding (signs of singular vector
pairs are arbitrary). A dense ΔW goes through
:func:`svdlora_pl.spectral.dense_svd` in float32: ``--svd exact`` (default, the full spectrum, O(mn·min(m, n)): 50-65 s
for one 3584×3584 module of a 7B model on 2 CPU cores) or ``--svd randomized`` (top r only, ``--niter`` 4,
``--oversample`` 10, ``--seed`` 0; deterministic; ~1-2 s there, accuracy measured in :mod:`svdlora_pl.teacher.full_finetune`); a progress bar runs over the modules of large models. With the
randomized SVD, energy ratio and relative error are taken against ‖ΔW‖²_F computed from the dense matrix.
Output, written atomically (all or nothing) to ``--output-dir``:

- ``svd_factors_rank{r}.safetensors``: ``<module>.lora_A`` (r×in) and ``<module>.lora_B`` (out×r) with B·A the
  best rank-r approximation of ΔW; ``--split sqrt`` (default) B = U√Σ, A = √ΣVᵀ, ``--split B`` B = UΣ, A = Vᵀ
  (orthonormal rows of A). Metadata: split, rank, source, source_kind (``delta``, ``adapter``,
  ``full_finetune (exact)`` or ``full_finetune (randomized niter=N)``; source ``"base -> finetuned"``). dtype: the
  source's, at least float32.
- ``svd_analysis_rank{r}.json``, ``svd_report_rank{r}.txt``, ``svd_analysis_rank{r}.png``: see
  :mod:`svdlora_pl.teacher.factor_report` (per-module spectra, energy ratio, relative error, effective rank, summary and the
  low-rank verdict at the seed's thresholds: mean energy > 0.9 and mean relative error < 0.1).

Rank policy: a module can have at most k = min(out, in, source rank) non-zero directions. A ``--rank`` above k is
**clamped** to k for that module (its factors have k rows/columns, the JSON records ``"clamped": true``, its error
is 0), and one warning names how many modules were clamped. Bad input (missing or pickled files, malformed factors,
``--rank`` < 1, two sources or none, two models of different architectures, NaN in a weight) exits 2 with one
line; nothing is written then.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

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
from svdlora_pl.spectral import FactoredSVD, cpu_threads, factored_svd, split_factors
from svdlora_pl.cli.tool_args import ToolParser, check_output_dir
from svdlora_pl.teacher.full_finetune import PROGRESS_MIN_ELEMENTS, WeightPair, open_pair

log = logging.getLogger(__name__)
PROGRESS_MIN_MODULES = 50
GRAM_MAX_COND = 100.0
"""Largest condition number of a column-scaled factor that :func:`gram_svd` takes (orthogonality loss ~ κ²·ε₆₄)."""


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="svdlora factorize",
        description="Rank-r SVD factors (PEFT orientation, B·A = best rank-r approximation of ΔW) of every module of "
        "a factor file, a PEFT LoRA adapter or a full fine-tune (ΔW = W_finetuned − W_base), with an SVD analysis "
        "(JSON, text report, 4-panel figure).",
        epilog="Factored sources: ΔW is never formed (exact SVD from the factors' QR). --base/--finetuned: ΔW is "
        "read one module at a time and decomposed densely (--svd). A --rank above a module's k = min(out, in, "
        "source rank) is clamped to k for that module (recorded as clamped in the JSON, one warning). Writes "
        "svd_factors_rank{r}.safetensors, svd_analysis_rank{r}.json/.png and svd_report_rank{r}.txt into "
        "--output-dir, atomically.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--delta", type=Path, metavar="FILE", help="factor file: <module>.U/S/V or .lora_A/.lora_B")
    source.add_argument("--adapter", type=Path, metavar="DIR", help="PEFT LoRA adapter directory (scaling applied)")
    source.add_argument(
        "--base",
        metavar="MODEL",
        help="base model of a full fine-tune: svdlora:tiny-qwen2, a save_pretrained directory (safetensors) or a "
        "Hub name (HF cache, HF_HUB_OFFLINE honoured); needs --finetuned",
    )
    add_full_finetune_arguments(parser)
    parser.add_argument("--seed", type=int, help="seed of --svd randomized (default 0)")
    parser.add_argument("--rank", type=int, required=True, help="rank r of the exported factors (>= 1)")
    parser.add_argument(
        "--split", choices=["sqrt", "B"], default="sqrt", help="B = U√Σ, A = √ΣVᵀ (sqrt, default) or B = UΣ, A = Vᵀ (B)"
    )
    parser.add_argument("--output-dir", type=Path, required=True, help="directory to write (replaced atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
    return parser


def load_source(args: argparse.Namespace) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor, float]], str, str]:
    """({module: (B, A, scale)} with ΔW = scale·B·A, source path, source kind)."""
    if args.delta is not None:
        from svdlora_pl.lora.factor_files import load_factors

        factors, metadata = load_factors(args.delta)
        kind = "delta" + (f" ({metadata['method']})" if metadata.get("method") else "")
        return {m: (B, A, 1.0) for m, (B, A) in factors.items()}, str(args.delta), kind
    from svdlora_pl.lora.adapters import read_adapter

    adapter = read_adapter(args.adapter)
    modules = {m: (f.B, f.A, float(f.scaling)) for m, f in adapter.modules.items()}
    return modules, str(args.adapter), "adapter"


def _scaled_cholesky(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(L, d) with diag(d)·XᵀX·diag(d) = L·Lᵀ, d = 1/‖column‖ (X float64, rows×k); None if κ(X·diag(d)) is too large."""
    gram = X.mT @ X
    d = gram.diagonal().rsqrt()
    scaled = gram * d[:, None] * d
    if not bool(torch.isfinite(scaled).all()):
        return None
    eig = torch.linalg.eigvalsh(scaled)
    if not float(eig[-1]) <= GRAM_MAX_COND**2 * float(eig[0]):
        return None
    L, info = torch.linalg.cholesky_ex(scaled)
    return (L, d) if int(info) == 0 else None


def gram_svd(B: torch.Tensor, A: torch.Tensor, scale: float, rank: int) -> tuple[FactoredSVD, torch.Tensor] | None:
    """Top-``rank`` thin SVD and all k singular values of ΔW = scale·B·A by Cholesky QR, or None if it does not apply.

    With D = diag(BᵀB)^(-1/2) and D·BᵀB·D = L_B·L_Bᵀ: B = Q_B·R_B with R_B = L_Bᵀ·D⁻¹ and Q_B = B·D·L_B⁻ᵀ; the same
    for Aᵀ. The k×k core C = scale·R_B·R_Aᵀ = U_c·Σ·V_cᵀ gives U = B·(D·L_B⁻ᵀ·U_c) and V = Aᵀ·(D_A·L_A⁻ᵀ·V_c), formed
    for the top ``rank`` columns only: two Gram products and two thin products over the rows, in float64. Exact to
    rounding when both column-scaled factors have κ ≤ :data:`GRAM_MAX_COND`; None otherwise (ill-conditioned,
    rank-deficient, zero or non-finite factors, k above out or in), for :func:`svdlora_pl.spectral.factored_svd`.

    Args:
        B: out×k factor.
        A: k×in factor.
        scale: the update's scaling.
        rank: number of singular vectors to form (clamped to k).
    """
    if B.ndim != 2 or A.ndim != 2 or A.shape[0] != B.shape[1] or not 0 < B.shape[1] <= min(B.shape[0], A.shape[1]):
        return None
    k = B.shape[1]
    Bd, Ad = B.to(torch.float64), A.to(torch.float64)
    left, right = _scaled_cholesky(Bd), _scaled_cholesky(Ad.mT)
    if left is None or right is None:
        return None
    (L_B, d_B), (L_A, d_A) = left, right
    core = ((L_B.mT / d_B) @ (L_A.mT / d_A).mT) * scale
    if not bool(torch.isfinite(core).all()):
        return None
    U_c, S, Vh_c = torch.linalg.svd(core)
    r = min(rank, k)
    W_B = d_B[:, None] * torch.linalg.solve_triangular(L_B.mT, U_c[:, :r], upper=True)
    W_A = d_A[:, None] * torch.linalg.solve_triangular(L_A.mT, Vh_c[:r].mT, upper=True)
    return FactoredSVD(Bd @ W_B, S[:r], (W_A.mT @ Ad).mT), S  # (W_Aᵀ·A)ᵀ: 4x faster than Aᵀ·W_A (measured)


def factorize(
    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]], rank: int, split: str
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, dict[str, Any]]]:
    """Rank-``rank`` factors and per-module analysis of every ΔW = s·B·A (float64 SVD, factors in the source dtype).

    Each module goes through :func:`gram_svd` (Cholesky QR), or :func:`svdlora_pl.spectral.factored_svd`
    (Householder QR) where that does not apply.
    """
    from tqdm.auto import tqdm

    from svdlora_pl.teacher.factor_report import analyze_module

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    analysis: dict[str, dict[str, Any]] = {}
    bar = tqdm(modules.items(), desc="factorize", unit="module", disable=len(modules) <= PROGRESS_MIN_MODULES)
    with cpu_threads(1):  # many small QRs: one thread is faster (see spectral.cpu_threads)
        for name, (B, A, scale) in bar:
            fast = gram_svd(B, A, scale, rank)
            if fast is None:
                try:
                    svd = factored_svd(B, A, scale)
                except InputError as error:
                    raise InputError(f"{name}: {error}") from None
                spectrum = svd.S
            else:
                svd, spectrum = fast
            dtype = torch.promote_types(B.dtype, torch.float32)
            B_r, A_r = split_factors(svd, rank, split)  # type: ignore[arg-type]
            factors[name] = (B_r.to(dtype), A_r.to(dtype))
            analysis[name] = analyze_module(spectrum, rank, (B.shape[0], A.shape[1]), B.shape[1])
    return factors, analysis


def factorize_dense(
    pair: WeightPair, rank: int, split: str, options: SVDOptions
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, dict[str, Any]]]:
    """Rank-``rank`` factors and per-module analysis of every dense ΔW of a full fine-tune, one module at a time.

    Exact SVD: the analysis uses the whole spectrum. Randomized: the top ``rank`` values and ‖ΔW‖²_F of the dense
    matrix (see :func:`svdlora_pl.teacher.factor_report.analyze_module`). Factors are float32 (float64 for float64 weights).
    """
    from tqdm.auto import tqdm

    from svdlora_pl.teacher.delta_svd import delta_svd
    from svdlora_pl.teacher.factor_report import analyze_module

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    analysis: dict[str, dict[str, Any]] = {}
    zero: list[str] = []
    disable = pair.elements < PROGRESS_MIN_ELEMENTS
    with tqdm(total=len(pair.shapes), desc="factorize", unit="module", disable=disable) as bar:
        for name, delta in pair.deltas():  # not through tqdm's iterator, which would keep the previous ΔW alive
            result = delta_svd(delta, rank, options)
            del delta
            factors[name] = split_factors(result.svd, rank, split)  # type: ignore[arg-type]
            shape = pair.shapes[name]
            total = None if result.complete else result.total_energy
            analysis[name] = analyze_module(result.spectrum, rank, shape, min(shape), total)
            if result.total_energy == 0:
                zero.append(name)
            bar.update()
    warn_unchanged(zero, len(analysis), log)
    return factors, analysis


def _warn_clamped(analysis: dict[str, dict[str, Any]], rank: int) -> None:
    clamped = [name for name, m in analysis.items() if m["clamped"]]
    if clamped:
        low = min(analysis[name]["available_rank"] for name in clamped)
        log.warning(
            "--rank %d is more than %d of %d modules can have (min(out, in, source rank), as low as %d, e.g. %s): "
            "clamped for those modules (\"clamped\": true in the JSON)",
            rank, len(clamped), len(analysis), low, clamped[0],
        )  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Validate, read, factorize and write; returns the analysis dict. Raises InputError for bad input."""
    from svdlora_pl.teacher.factor_report import analysis_figure, build_analysis, format_report
    from svdlora_pl.lora.factor_files import save_factors
    from svdlora_pl.plots import close_figures

    options = full_finetune_options(args, args.seed)
    if options is None and args.seed is not None:
        raise InputError("--seed: only with --base (it seeds --svd randomized)")
    if args.rank < 1:
        raise InputError(f"--rank: must be >= 1, got {args.rank}")
    if options is not None:
        check_output_dir(args.output_dir, local_inputs(args.base, args.finetuned), args.overwrite)
        pair = open_pair(args.base, args.finetuned, target_names(args.target_modules))
        source, kind = pair.source, options.kind
        factors, per_module = factorize_dense(pair, args.rank, args.split, options)
    else:
        check_output_dir(args.output_dir, [args.delta if args.delta is not None else args.adapter], args.overwrite)
        modules, source, kind = load_source(args)
        factors, per_module = factorize(modules, args.rank, args.split)
    _warn_clamped(per_module, args.rank)
    analysis = build_analysis(per_module, args.rank, args.split, source, kind)
    metadata = {
        "split": args.split,
        "rank": str(args.rank),
        "source": source,
        "source_kind": kind,
        "clamped_modules": str(analysis["summary"]["clamped_modules"]),
        "convention": "B·A = rank-r truncation of ΔW (LoRA scaling folded in); A r×in, B out×r",
    }
    r = args.rank
    figure = analysis_figure(analysis)
    try:
        with atomic_directory(args.output_dir) as staging:
            save_factors(staging / f"svd_factors_rank{r}.safetensors", factors, metadata)
            (staging / f"svd_analysis_rank{r}.json").write_text(
                json.dumps(analysis, indent=2, allow_nan=False, ensure_ascii=False) + "\n", encoding="utf-8"
            )
            (staging / f"svd_report_rank{r}.txt").write_text(format_report(analysis), encoding="utf-8")
            figure.savefig(staging / f"svd_analysis_rank{r}.png", dpi=110)
    finally:
        close_figures([figure])
    return analysis


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``svdlora factorize``; bad input raises InputError (``svdlora`` prints it and exits 2)."""
    args = build_parser().parse_args(None if argv is None else list(argv))
    analysis = run(args)
    summary = analysis["summary"]
    print(
        f"wrote {args.output_dir} (rank {args.rank}, {summary['modules']} modules, "
        f"mean energy {summary['energy_ratio']['mean']:.4f}, mean relative error {summary['relative_error']['mean']:.4f})"
    )
    print(summary["low_rank_hypothesis"]["reason"])
    return 0
