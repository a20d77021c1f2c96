"""Rank-r SVD factors (PEFT orientation) of per-module updates ΔW, with the SVD analysis of their spectra: the library
behind ``svdlora factorize`` (:func:`factorize`; the math alone: :func:`factorize_modules`).

Factored sources (a factor file, a PEFT adapter with its scaling s: ΔW = s·B·A) never form ΔW: its exact thin SVD
comes from a QR of the factors, O((out+in)·r²) per module: Cholesky QR from the factors' Gram matrices when both are
well conditioned after column scaling (:func:`svdlora_pl.spectral.gram_svd`; the U·diag(S), Vᵀ of an SVD-form file,
or random LoRA factors), with only the top r singular vectors formed; Householder QR
(:func:`svdlora_pl.spectral.factored_svd`) otherwise. Both are exact to float64 rounding (signs of singular vector
pairs are arbitrary). A full fine-tune's dense ΔW = W_finetuned − W_base is read one module at a time and decomposed in
float32 (:mod:`svdlora_pl.teacher.delta_svd`: exact, the whole spectrum, O(mn·min(m, n)), 50-65 s for one 3584×3584
module of a 7B model on 2 CPU cores; or randomized, the top r only, ~1-2 s there, accuracy measured in that module);
with the randomized SVD, energy ratio and relative error are taken against ‖ΔW‖²_F computed from the dense matrix.

Files (written atomically, all or nothing):

- ``svd_factors_rank{r}.safetensors``: ``<module>.lora_A`` (r×in) and ``<module>.lora_B`` (out×r) with B·A the best
  rank-r approximation of ΔW (LoRA scaling folded in). Metadata: split, rank, source, source_kind (``delta``,
  ``adapter``, ``full_finetune (exact)`` or ``full_finetune (randomized niter=N)``; source ``"base -> finetuned"``),
  clamped_modules. dtype: the source's, at least float32.
- ``svd_analysis_rank{r}.json``, ``svd_report_rank{r}.txt``, ``svd_analysis_rank{r}.png``: see
  :mod:`svdlora_pl.teacher.factor_report` (per-module spectra, energy ratio, relative error, effective rank, summary
  and the low-rank verdict at the seed's thresholds: mean energy > 0.9 and mean relative error < 0.1).

Rank policy: a module has at most k = min(out, in, source rank) non-zero directions; a rank above k is clamped to k for
that module (its factors have k rows/columns, the JSON records ``"clamped": true``, its error is 0), and one warning
names how many modules were clamped.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import torch

from svdlora_pl.errors import InputError
from svdlora_pl.io import atomic_directory, check_output_dir, json_text
from svdlora_pl.spectral import cpu_threads, factored_svd, gram_svd, split_factors
from svdlora_pl.teacher.delta_svd import SVDOptions, check_source, delta_svds, open_checked_pair

log = logging.getLogger(__name__)
PROGRESS_MIN_MODULES = 50

Modules = dict[str, tuple[torch.Tensor, torch.Tensor, float]]
"""{module: (B, A, scale)} with ΔW = scale·B·A."""
Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]
"""{module: (B, A)} in PEFT orientation (B out×r, A r×in)."""


def factors_name(rank: int) -> str:
    """File name of the rank-``rank`` factors: ``svd_factors_rank{r}.safetensors``."""
    return f"svd_factors_rank{rank}.safetensors"


def factorize_modules(
    modules: Modules, rank: int, split: Literal["sqrt", "B"]
) -> tuple[Factors, dict[str, dict[str, Any]]]:
    """Rank-``rank`` factors and per-module analysis of every ΔW = s·B·A (float64 SVD, factors in the source dtype,
    at least float32).

    Each module goes through :func:`svdlora_pl.spectral.gram_svd` (Cholesky QR), or
    :func:`svdlora_pl.spectral.factored_svd` (Householder QR) where that does not apply.

    Args:
        modules: ``{module: (B, A, scale)}``.
        rank: rank r of the factors (clamped per module to min(out, in, source rank)).
        split: ``sqrt`` (B = U√Σ, A = √ΣVᵀ) or ``B`` (B = UΣ, A = Vᵀ).
    """
    from tqdm.auto import tqdm

    from svdlora_pl.teacher.factor_report import analyze_module

    factors: Factors = {}
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
            B_r, A_r = split_factors(svd, rank, split)
            factors[name] = (B_r.to(dtype), A_r.to(dtype))
            analysis[name] = analyze_module(spectrum, rank, (B.shape[0], A.shape[1]), B.shape[1])
    return factors, analysis


def _load_modules(delta: Path | None, adapter: Path | None) -> tuple[Modules, str, str]:
    """({module: (B, A, scale)}, source path, source kind) of a factor file or an adapter (the one given)."""
    if delta is not None or adapter is None:
        from svdlora_pl.lora.factor_files import load_factors

        factors, metadata = load_factors(delta)
        kind = "delta" + (f" ({metadata['method']})" if metadata.get("method") else "")
        return {m: (B, A, 1.0) for m, (B, A) in factors.items()}, str(delta), kind
    from svdlora_pl.lora.adapters import read_adapter

    read = read_adapter(adapter)
    return {m: (f.B, f.A, float(f.scaling)) for m, f in read.modules.items()}, str(adapter), "adapter"


def _factorize_dense(
    output_dir: Path, base: str, finetuned: str, target_modules: list[str] | None, svd: SVDOptions,
    rank: int, split: Literal["sqrt", "B"], overwrite: bool,
) -> tuple[Factors, dict[str, dict[str, Any]], str]:  # fmt: skip
    """Factors, per-module analysis and source of a full fine-tune: every dense ΔW, one module at a time. Exact SVD:
    the analysis uses the whole spectrum; randomized: the top ``rank`` values and ‖ΔW‖²_F of the dense matrix."""
    from svdlora_pl.teacher.factor_report import analyze_module

    pair = open_checked_pair(output_dir, base, finetuned, target_modules, overwrite)
    factors: Factors = {}
    analysis: dict[str, dict[str, Any]] = {}
    for name, result in delta_svds(pair, rank, svd, "factorize"):
        factors[name] = split_factors(result.svd, rank, split)
        shape = pair.shapes[name]
        total = None if result.complete else result.total_energy
        analysis[name] = analyze_module(result.spectrum, rank, shape, min(shape), total)
    return factors, analysis, pair.source


def _warn_clamped(analysis: dict[str, dict[str, Any]], rank: int) -> None:
    clamped = [name for name, m in analysis.items() if m["clamped"]]
    if clamped:
        low = min(analysis[name]["available_rank"] for name in clamped)
        log.warning(
            "rank %d is more than %d of %d modules can have (min(out, in, source rank), as low as %d, e.g. %s): "
            "clamped for those modules (\"clamped\": true in the JSON)",
            rank, len(clamped), len(analysis), low, clamped[0],
        )  # fmt: skip


def factorize(
    output_dir: Path,
    rank: int,
    delta: Path | None = None,
    adapter: Path | None = None,
    base: str | None = None,
    finetuned: str | None = None,
    target_modules: list[str] | None = None,
    svd: SVDOptions = SVDOptions(),
    split: Literal["sqrt", "B"] = "sqrt",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Rank-r SVD factors of every module's update ΔW, with an SVD analysis (JSON, text report, 4-panel figure).

    The source is a factor file, a PEFT LoRA adapter or a full fine-tune (ΔW = W_finetuned − W_base); the factors
    are in PEFT orientation, B·A the best rank-r approximation of ΔW. Writes svd_factors_rank{r}.safetensors,
    svd_analysis_rank{r}.json, svd_report_rank{r}.txt and svd_analysis_rank{r}.png into the output directory,
    atomically (nothing is written on an error). Factored sources are never formed densely; a full fine-tune is read
    one module at a time. A rank above a module's min(out, in, source rank) is clamped for that module (recorded in
    the JSON, one warning).

    Args:
        output_dir: Directory to write (replaced atomically; may not contain the source).
        rank: Rank r of the exported factors (>= 1).
        delta: Source: a factor file, ``<module>.U/S/V`` (as ``svdlora synthesize`` writes) or
            ``<module>.lora_A/lora_B`` with B·A = ΔW.
        adapter: Source: a PEFT LoRA adapter directory; its scaling (alpha/r or alpha/√r, per-module patterns
            included) is folded into ΔW = s·B·A.
        base: Source: the base model of a full fine-tune, ``svdlora:tiny-qwen2``, a save_pretrained directory
            (safetensors) or a Hub name (HF cache first, HF_HUB_OFFLINE honoured); needs finetuned.
        finetuned: The fully fine-tuned model, same architecture as base (only with base).
        target_modules: Last names of the modules to difference (only with base; default: every Qwen2 projection).
        svd: SVD of each dense ΔW (only with base).
        split: How Σ is split: sqrt (B = U√Σ, A = √ΣVᵀ) or B (B = UΣ, A = Vᵀ: orthonormal rows of A).
        overwrite: Replace a non-empty output_dir.

    Returns:
        The analysis written to svd_analysis_rank{r}.json (see :mod:`svdlora_pl.teacher.factor_report`).

    Raises:
        InputError: bad input, in one line naming the option or file: no source or two, an option of a full
            fine-tune without base, rank < 1, a missing, pickled or malformed file, two models of different
            architectures, NaN in a weight, a non-empty output_dir without overwrite.
    """
    from svdlora_pl.lora.factor_files import save_factors
    from svdlora_pl.teacher.factor_report import analysis_figure, build_analysis, format_report

    check_source({"delta": delta, "adapter": adapter, "base": base}, finetuned, svd, target_modules)
    if rank < 1:
        raise InputError(f"rank: must be >= 1, got {rank}")
    if split not in ("sqrt", "B"):
        raise InputError(f"split: must be sqrt or B, got {split!r}")
    if base is not None and finetuned is not None:  # check_source: base comes with finetuned
        factors, per_module, source = _factorize_dense(
            output_dir, base, finetuned, target_modules, svd, rank, split, overwrite
        )
        kind = svd.kind
    else:
        check_output_dir(output_dir, [path for path in (delta, adapter) if path is not None], overwrite)
        modules, source, kind = _load_modules(delta, adapter)
        factors, per_module = factorize_modules(modules, rank, split)
    _warn_clamped(per_module, rank)
    analysis = build_analysis(per_module, rank, split, source, kind)
    metadata = {
        "split": split,
        "rank": str(rank),
        "source": source,
        "source_kind": kind,
        "clamped_modules": str(analysis["summary"]["clamped_modules"]),
        "convention": "B·A = rank-r truncation of ΔW (LoRA scaling folded in); A r×in, B out×r",
    }
    figure = analysis_figure(analysis)
    with atomic_directory(output_dir) as staging:
        save_factors(staging / factors_name(rank), factors, metadata)
        (staging / f"svd_analysis_rank{rank}.json").write_text(json_text(analysis), encoding="utf-8")
        (staging / f"svd_report_rank{rank}.txt").write_text(format_report(analysis), encoding="utf-8")
        figure.savefig(staging / f"svd_analysis_rank{rank}.png", dpi=110)
    return analysis
