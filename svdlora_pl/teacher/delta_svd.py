"""The SVD of one dense teacher update ΔW, exact or randomized (:class:`SVDOptions`), streamed over the modules of a
full fine-tune (:func:`delta_svds`), and the checks of a full fine-tune source shared by ``factorize`` and
``synthesize`` (:func:`check_source`, :func:`open_checked_pair`).

Precision: ΔW is computed in float32 (float64 for float64 checkpoints) from the two stored tensors, so it is the
difference of what is on disk, correctly rounded (exact for entries within a factor 2 of each other, the usual
case in fine-tuning); ``‖ΔW‖_F²`` is summed in float64. The SVD runs in float32 (:func:`delta_svd`): its singular
values are within ~1e-6 relative of a float64 SVD (measured), far below what fine-tuning noise changes, at half the
memory and time of float64.

Exact or randomized (measured at r = 16, oversample 10, on 2 shared CPU cores): ``exact`` takes
50-65 s for one 3584×3584 module (a 7B q_proj), ``randomized`` 0.5-1.7 s. Its accuracy depends on how fast σ decays
past r (error ∝ (σ_{r+11}/σ_r)^(2·niter+1)). Max relative error of σ₁..σ_r / min principal cosine of the top-r left
subspace / rank-r relative error vs the optimum, for niter 0, 2, 4:

- σᵢ = i⁻¹ (3584², optimum 0.1915): 3.0e-1 / 0.24 / 0.2495; 3.2e-3 / 0.994 / 0.1916; 5.5e-5 / 0.9999 / 0.1915;
- σᵢ = i^-0.5, slow decay (optimum 0.7837): 5.2e-1 / 0.08 / 0.880; 4.6e-2 / 0.86 / 0.7849; 3.7e-3 / 0.989 / 0.7838;
- σᵢ = 0.9^i (optimum 0.1853): 8.6e-2 / 0.83 / 0.2270; 1.1e-5 / 0.99998 / 0.1853; 6.6e-7 / 1.0 / 0.1853;
- a 2-epoch full fine-tune of the tiny model (down_proj 128×352, optimum 0.5183): 2.4e-1 / 0.08 / 0.624;
  2.8e-3 / 0.993 / 0.5186; 1.6e-4 / 0.9998 / 0.5183.

So the default niter = 4 reaches the optimal rank-r error to 3-4 digits even on slowly decaying spectra; niter = 0 is
not usable for analysis. Use ``exact`` when the whole spectrum is wanted (effective rank, spectra plots) or the
matrices are small, ``randomized`` for 7B-size models.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from svdlora_pl.errors import InputError
from svdlora_pl.io import check_output_dir
from svdlora_pl.lora.settings import QWEN_LINEAR_MODULES
from svdlora_pl.spectral import FactoredSVD, dense_svd, truncate
from svdlora_pl.teacher.full_finetune import WeightPair, open_pair
from svdlora_pl.training.loading import local_model_dir

log = logging.getLogger(__name__)

_ENERGY_CHUNK = 1 << 22  # elements per float64 chunk when summing ‖ΔW‖_F² (32 MiB)
PROGRESS_MIN_ELEMENTS = 1 << 24
"""A progress bar runs over the modules from this many ΔW entries on (16.8M: seconds of SVD on a CPU)."""


@dataclass(frozen=True)
class SVDOptions:
    """How each dense ΔW of a full fine-tune is decomposed.

    Args:
        method: Exact (torch.linalg.svd: the whole spectrum) or randomized (torch.svd_lowrank: the top rank
            triplets, O(mn·q·(niter+1)) with q = rank + oversample; much faster on large modules).
        niter: Power iterations of the randomized SVD (>= 0).
        oversample: Extra columns of its random test matrix (>= 0).
        seed: Seed of its random test matrix (deterministic; the global RNG is untouched).
    """

    method: Literal["exact", "randomized"] = "exact"
    niter: int = 4
    oversample: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in ("exact", "randomized"):
            raise InputError(f"svd.method: must be exact or randomized, got {self.method!r}")
        if self.niter < 0:
            raise InputError(f"svd.niter: must be >= 0, got {self.niter}")
        if self.oversample < 0:
            raise InputError(f"svd.oversample: must be >= 0, got {self.oversample}")

    @property
    def kind(self) -> str:
        """``full_finetune (exact)`` or ``full_finetune (randomized niter=N)``."""
        return "full_finetune (exact)" if self.method == "exact" else f"full_finetune (randomized niter={self.niter})"


@dataclass(frozen=True)
class DeltaSVD:
    """The rank-r SVD of one dense ΔW and what is known of its spectrum.

    Args:
        svd: the rank-r truncation U·diag(S)·Vᵀ (r clamped to min(out, in)).
        spectrum: the known singular values, descending: all min(out, in) (exact) or the top r (randomized).
        complete: whether ``spectrum`` is the whole spectrum.
        total_energy: ‖ΔW‖_F², summed over the dense matrix in float64.
    """

    svd: FactoredSVD
    spectrum: Tensor
    complete: bool
    total_energy: float

    def energies(self) -> tuple[float, float]:
        """(kept Σ_{i≤r} σᵢ², discarded ‖ΔW‖_F² − kept) of the rank-r truncation, in float64.

        With the whole spectrum the discarded energy is the sum Σ_{i>r} σᵢ² (no cancellation, so small errors stay
        accurate); with the top r only it is the difference from the dense total, clamped at 0.
        """
        values = self.spectrum.detach().to(torch.float64).tolist()
        r = int(self.svd.S.shape[0])
        kept = math.fsum(x * x for x in values[:r])
        if self.complete:
            return kept, math.fsum(x * x for x in values[r:])
        return kept, max(self.total_energy - kept, 0.0)


def frobenius_energy(W: Tensor) -> float:
    """‖W‖_F² summed in float64, in chunks (no float64 copy of the whole matrix)."""
    flat = W.detach().reshape(-1)
    return math.fsum(float(c.to(torch.float64).square().sum()) for c in flat.split(_ENERGY_CHUNK))


def delta_svd(delta: Tensor, rank: int, options: SVDOptions) -> DeltaSVD:
    """Rank-``rank`` SVD of one dense ΔW (in its dtype, float32 for checkpoints in 16 or 32 bits).

    ``exact`` computes the full SVD (the analysis needs the whole spectrum) and truncates it; ``randomized`` only the
    top ``rank`` triplets. A zero ΔW (a module the fine-tune left unchanged) gives zero singular values.
    """
    if rank < 1:
        raise InputError(f"rank must be >= 1, got {rank}")
    total = frobenius_energy(delta)
    if options.method == "exact":
        full = dense_svd(delta)
        return DeltaSVD(truncate(full, rank), full.S, True, total)
    svd = dense_svd(
        delta, rank, method="randomized", niter=options.niter, oversample=options.oversample, seed=options.seed
    )
    if total == 0:  # svd_lowrank of a zero matrix has no meaningful bases; any orthonormal ones will do
        m, n, k = *delta.shape, svd.S.shape[0]
        svd = FactoredSVD(torch.eye(m, k, dtype=delta.dtype), svd.S.zero_(), torch.eye(n, k, dtype=delta.dtype))
    return DeltaSVD(svd, svd.S, False, total)


def delta_svds(pair: WeightPair, rank: int, options: SVDOptions, desc: str) -> Iterator[tuple[str, DeltaSVD]]:
    """Yield ``(module, result)``, the rank-``rank`` :class:`DeltaSVD` of every ΔW of ``pair``, one ΔW at a time.

    A progress bar (``desc``) runs over the modules of large models (:data:`PROGRESS_MIN_ELEMENTS`); once all are
    done, one warning says how many had ΔW = 0 (left unchanged or frozen by the fine-tune).
    """
    from tqdm.auto import tqdm

    zero: list[str] = []
    disable = pair.elements < PROGRESS_MIN_ELEMENTS
    with tqdm(total=len(pair.shapes), desc=desc, unit="module", disable=disable) as bar:
        for name, delta in pair.deltas():  # not through tqdm's iterator, which would keep the previous ΔW alive
            result = delta_svd(delta, rank, options)
            del delta
            if result.total_energy == 0:
                zero.append(name)
            yield name, result
            bar.update()
    if zero:
        log.warning(
            "%d of %d modules have ΔW = 0 (unchanged by the fine-tune), e.g. %s", len(zero), len(pair.shapes), zero[0]
        )


def check_source(
    sources: Mapping[str, object], finetuned: str | None, svd: SVDOptions, target_modules: Sequence[str] | None
) -> None:
    """Check that exactly one of ``sources`` (name -> value, None when not given; ``base`` among them) is given, and
    the options of a full fine-tune (``finetuned``, ``svd``, ``target_modules``) only with ``base``.

    Raises:
        InputError: none or two sources, ``base`` without ``finetuned``, or an option of a full fine-tune without
            ``base``.
    """
    if sources.get("base") is None:
        dense = {"finetuned": finetuned, "svd": None if svd == SVDOptions() else svd, "target_modules": target_modules}
        given = [name for name, value in dense.items() if value is not None]
        if given:
            raise InputError(f"{given[0]}: only with base (a full fine-tune)")
    elif finetuned is None:
        raise InputError("base: needs finetuned (the fully fine-tuned model)")
    chosen = [name for name, value in sources.items() if value is not None]
    if not chosen:
        names = list(sources)
        raise InputError(f"{', '.join(names[:-1])} or {names[-1]}: give one source")
    if len(chosen) > 1:
        raise InputError(f"{chosen[1]}: not with {chosen[0]} (give one source)")


def open_checked_pair(
    output_dir: Path, base: str, finetuned: str, target_modules: Sequence[str] | None, overwrite: bool
) -> WeightPair:
    """The :class:`WeightPair` of a full fine-tune source, after checking that ``output_dir`` may be written (it is
    not inside a local model directory, and is empty or ``overwrite``)."""
    local = [path for path in map(local_model_dir, (base, finetuned)) if path is not None]
    check_output_dir(output_dir, local, overwrite)
    return open_pair(base, finetuned, target_names(target_modules))


def target_names(given: Sequence[str] | None) -> tuple[str, ...]:
    """``target_modules`` (each entry may be comma-separated), or the default Qwen2 projections."""
    if given is None:
        return tuple(QWEN_LINEAR_MODULES)
    return tuple(dict.fromkeys(name.strip() for item in given for name in item.split(",") if name.strip()))
