"""The linear algebra of LoRA updates: exact SVD of ΔW = s·B·A from its factors (:mod:`.factored`), metrics of a
spectrum (:mod:`.metrics`), dense and randomized SVD and factor splitting (:mod:`.dense`), Cholesky QR
(:mod:`.cholesky`), intruder dimensions of W + ΔW (:mod:`.intruders`), thread control (:mod:`.threads`). Torch only;
nothing here forms an out×in matrix unless given one.
"""

from svdlora_pl.spectral.cholesky import CHOLESKY_MAX_COND, gram_svd, guarded_cholesky
from svdlora_pl.spectral.dense import dense_svd, split_factors, truncate
from svdlora_pl.spectral.factored import (
    FactoredSVD,
    Scale,
    batched_factored_svdvals,
    factored_inner,
    factored_relative_error,
    factored_svd,
    factored_svdvals,
    subspace_alignment,
    subspace_cosines,
    svdvals_of_modules,
)
from svdlora_pl.spectral.intruders import Intruders, intruder_dimensions, max_cosines, top_singular_triplets
from svdlora_pl.spectral.metrics import (
    effective_rank,
    energy_ratio,
    frobenius_norm,
    reconstruction_error,
    spectral_norm,
    spectrum_summary,
    stable_rank,
)
from svdlora_pl.spectral.threads import cpu_threads

__all__ = [
    "CHOLESKY_MAX_COND", "FactoredSVD", "Intruders", "Scale", "batched_factored_svdvals", "cpu_threads", "dense_svd",
    "effective_rank", "energy_ratio", "factored_inner", "factored_relative_error", "factored_svd", "factored_svdvals",
    "frobenius_norm", "gram_svd", "guarded_cholesky", "intruder_dimensions", "max_cosines", "reconstruction_error",
    "spectral_norm", "spectrum_summary", "split_factors", "stable_rank", "subspace_alignment", "subspace_cosines",
    "svdvals_of_modules", "top_singular_triplets", "truncate",
]  # fmt: skip
