"""Merging PEFT LoRA adapter directories of different ranks (one per client) into one standard PEFT adapter.

The exact target per module is ΔW = Σ_k p_k·s_k·B_k·A_k, with p_k the clients' normalized weights and s_k each
adapter's own PEFT scaling (alpha/r or alpha/√r, with its rank_pattern/alpha_pattern). The rules
(:mod:`svdlora_pl.aggregation.rules`): ``stack`` is exact at rank Σ r_k; ``svd`` is the best rank-R approximation
(Eckart–Young, the optimum), computed from the factors; ``zeropad`` (HetLoRA/FedIT averaging) is inexact, its error
is reported (:mod:`svdlora_pl.aggregation.report`).

Rank policy: a rank above min(out, in, Σ r_k) for some module is refused rather than clamped, so an adapter never
claims a rank it cannot have; the message gives the largest rank possible.

:func:`aggregate` is ``svdlora aggregate`` (:mod:`svdlora_pl.cli.aggregate`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from svdlora_pl.aggregation.report import build_report, format_report
from svdlora_pl.aggregation.rules import Aggregate, Method, Split, aggregate_modules, normalize_weights
from svdlora_pl.errors import InputError
from svdlora_pl.io import atomic_directory, check_output_dir, json_text
from svdlora_pl.lora.adapters import LoRAAdapter, read_adapter, save_adapter_files

REPORT_NAME = "aggregation_report"
Dtype = Literal["float32", "bfloat16", "float16"]


def aggregate(
    adapters: list[Path],
    method: Method,
    output_dir: Path,
    weights: list[float] | None = None,
    data_sizes: list[int] | None = None,
    rank: int | None = None,
    split: Split = "sqrt",
    norm_weights: bool = False,
    per_client_ranks: bool = False,
    dtype: Dtype = "float32",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Merge PEFT LoRA adapters of different ranks (one per client) into one standard PEFT adapter.

    Target per module: ΔW = Σ_k p_k s_k B_k A_k (p_k: normalized client weight, s_k: the adapter's PEFT scaling).
    Methods: stack = exact, rank Σ r_k; svd = best rank-R approximation (Eckart–Young), computed from the factors;
    zeropad = HetLoRA/FedIT averaging, inexact (its error is reported). The adapters need the same base model,
    modules and shapes.

    Writes into output_dir, atomically (all or nothing): the adapter (adapter_config.json and
    adapter_model.safetensors, scaling folded in, lora_alpha = r; loads with plain PeftModel.from_pretrained),
    aggregation_report.json and aggregation_report.txt (per module: rank, relative error against ΔW, Eckart–Young
    optimum at that rank, energy kept; the clients, their weights and ranks) and, with per_client_ranks, one adapter
    per distinct client rank.

    Args:
        adapters: PEFT LoRA adapter directories, one per client (at least 2).
        method: Aggregation rule: stack (exact), svd (best rank-R) or zeropad (HetLoRA, inexact).
        output_dir: Directory to write (created; replaced whole with overwrite).
        weights: Client weights > 0, normalized to sum 1 (default: equal). Not with data_sizes.
        data_sizes: Client training-set sizes: weights p_k = N_k / Σ N. Not with weights.
        rank: svd only: global rank R (default: the largest client rank); at most min(out, in, Σ r_k) of every
            module.
        split: svd only: B = U√Σ, A = √ΣVᵀ (sqrt) or B = UΣ, A = Vᵀ (B).
        norm_weights: zeropad only: average with q_k ∝ p_k·‖ΔW_k‖_F (HetLoRA) instead of p_k.
        per_client_ranks: svd and zeropad only: also write one adapter per distinct client rank, rank_<r>/
            (client_<k>/ for a client whose rank varies by module): svd gives the best rank-r_k approximation,
            zeropad the first r_k components (HetLoRA). The report maps each client to its directory.
        dtype: Dtype of the written factors.
        overwrite: Replace a non-empty output_dir.

    Returns:
        The report, as written to aggregation_report.json.

    Raises:
        InputError: Bad options, missing or malformed adapters, adapters that do not match (base model, modules,
            shapes), a rank above what a module can have; one line naming the option or file. Nothing is written.
    """
    count = _check_options(adapters, method, rank, split, norm_weights, per_client_ranks, dtype, weights, data_sizes)
    check_output_dir(output_dir, adapters, overwrite)
    read = [read_adapter(path) for path in adapters]
    p = _weights(weights, data_sizes, count)
    _check_compatible(read)
    _check_rank(rank, read)
    outputs, assignment = _aggregate_all(read, method, p, rank, split, norm_weights, per_client_ranks)
    options = {"rank": rank, "split": split, "norm_weights": norm_weights, "dtype": dtype}
    report = build_report(method, options, read, p, outputs, assignment, str(output_dir))
    with atomic_directory(output_dir) as staging:
        for name, result in outputs.items():
            factors = {module: (a.B, a.A) for module, a in result.items()}
            save_adapter_files(
                staging / name, factors, read[0].base_model, read[0].config.get("task_type"), getattr(torch, dtype)
            )
        (staging / f"{REPORT_NAME}.json").write_text(json_text(report), encoding="utf-8")
        (staging / f"{REPORT_NAME}.txt").write_text(format_report(report), encoding="utf-8")
    return report


# ---------------------------------------------------------------- checks
def _one_of(field: str, value: object, choices: object) -> None:
    allowed = get_args(choices)
    if value not in allowed:
        raise InputError(f"{field}: must be one of {', '.join(allowed)}, got {value!r}")


def _check_options(
    adapters: Sequence[str | os.PathLike[str]],
    method: str,
    rank: int | None,
    split: str,
    norm_weights: bool,
    per_client_ranks: bool,
    dtype: str,
    weights: Sequence[float] | None,
    data_sizes: Sequence[int] | None,
) -> int:
    """Refuse options that are invalid or do not apply to ``method``; returns the number of adapters."""
    if isinstance(adapters, (str, os.PathLike)):
        raise InputError(f"adapters: expected a list of adapter directories, got {str(adapters)!r}")
    if len(adapters) < 2:
        raise InputError(f"adapters: needs at least 2 adapters to aggregate, got {len(adapters)}")
    _one_of("method", method, Method)
    _one_of("split", split, Split)
    _one_of("dtype", dtype, Dtype)
    if rank is not None and method != "svd":
        raise InputError(f"rank: only used by method svd (stack has rank Σ r_k, zeropad max r_k), got method {method}")
    if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool)):
        raise InputError(f"rank: must be an integer, got {rank!r}")
    if rank is not None and rank < 1:
        raise InputError(f"rank: must be >= 1, got {rank}")
    if per_client_ranks and method == "stack":
        raise InputError("per_client_ranks: needs method svd or zeropad (a stacked adapter has rank Σ r_k only)")
    if norm_weights and method != "zeropad":
        raise InputError(f"norm_weights: only used by method zeropad, got method {method}")
    if split != "sqrt" and method != "svd":
        raise InputError(f"split: only used by method svd, got method {method}")
    if weights is not None and data_sizes is not None:
        raise InputError("weights: give weights or data_sizes, not both")
    return len(adapters)


def _weights(weights: Sequence[float] | None, data_sizes: Sequence[int] | None, count: int) -> list[float]:
    """The normalized client weights p_k from ``weights`` or ``data_sizes`` (equal when neither)."""
    field, values = ("data_sizes", data_sizes) if data_sizes is not None else ("weights", weights)
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
        missing = sorted(set(first.modules) - set(other.modules))
        extra = sorted(set(other.modules) - set(first.modules))
        if missing or extra:
            which = f"lacks {missing[0]}" if missing else f"has {extra[0]} that {first.path} lacks"
            raise InputError(
                f"{other.path / 'adapter_model.safetensors'}: module set differs from {first.path}: {which}"
            )
        for module, factors in other.modules.items():
            if factors.shape != first.modules[module].shape:
                (o1, i1), (o2, i2) = first.modules[module].shape, factors.shape
                raise InputError(
                    f"{other.path / 'adapter_model.safetensors'}: {module}: update shape {o2}×{i2} differs from "
                    f"{o1}×{i1} in {first.path}"
                )


def _check_rank(rank: int | None, adapters: Sequence[LoRAAdapter]) -> None:
    """Refuse a rank above min(out, in, Σ r_k) of any module (the most an update of that module can have)."""
    if rank is None:
        return
    for module, factors in adapters[0].modules.items():
        out, inp = factors.shape
        total = sum(a.modules[module].rank for a in adapters)
        ceiling = min(out, inp, total)
        if rank > ceiling:
            raise InputError(
                f"rank: {rank} is more than {module} can have: min(out={out}, in={inp}, Σ r_k={total}) = {ceiling}; "
                f"use rank {ceiling} or less (or method stack for the exact sum)"
            )


# ---------------------------------------------------------------- aggregation
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


def _aggregate_all(
    adapters: Sequence[LoRAAdapter],
    method: str,
    weights: list[float],
    rank: int | None,
    split: str,
    norm_weights: bool,
    per_client_ranks: bool,
) -> tuple[dict[str, dict[str, Aggregate]], dict[int, str]]:
    """{"." : global result, subdir: per-client result} and {client index: subdir}."""
    clients = [a.modules for a in adapters]
    options: dict[str, Any] = {"split": split} if method == "svd" else {}
    if method == "zeropad":
        options["norm_weighted"] = norm_weights
    outputs = {".": aggregate_modules(clients, method, weights, rank, **options)}
    assignment: dict[int, str] = {}
    if per_client_ranks:
        for name, (ranks, members) in _client_profiles(adapters).items():
            outputs[name] = aggregate_modules(clients, method, weights, ranks, **options)
            assignment.update(dict.fromkeys(members, name))
    return outputs, assignment
