"""LoRA Intruder Monitor
=====================

Counts, during training, the *intruder dimensions* of every LoRA-adapted weight (Shuttleworth et al. 2024, "LoRA vs
full fine-tuning: an illusion of equivalence", arXiv 2410.21228): top singular vectors of the fine-tuned weight
W + ΔW that resemble none of the base W's top singular vectors. PEFT only offers a post-hoc
``reduce_intruder_dimension``; this watches them appear. The math is :mod:`svdlora_pl.spectral.intruders`: W + ΔW is
never formed (ΔW stays as its LoRA factors) and the base's top singular vectors are computed once, at fit start,
by seeded randomized SVD, and cached on disk per base model and module.

Enable it in any LightningCLI run::

    trainer:
      callbacks:
        - class_path: svdlora_pl.callbacks.LoRAIntruderMonitor
          init_args:
            every_n_steps: 50
            top_k: 10
            threshold: 0.5
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from svdlora_pl.callbacks.step_monitor import LoRAStepMonitor
from svdlora_pl.callbacks.tags import summary_tag
from svdlora_pl.lora.layers import LoRALayerRef, short_name
from svdlora_pl.spectral.intruders import LowRank, intruder_dimensions, top_singular_triplets
from svdlora_pl.spectral.threads import cpu_threads

SAMPLE = 1 << 16  # weights sampled (evenly strided) into a base's cache fingerprint, besides its sum and shape


class LoRAIntruderMonitor(LoRAStepMonitor):
    """Logs per-layer intruder dimensions of the fine-tuned weights every ``every_n_steps`` optimizer steps.

    For each LoRA layer, with W its frozen base weight and ΔW = scaling · B·A: the ``top_k`` leading left singular
    vectors uⱼ of W + ΔW are compared with the base's ``base_rank`` leading left singular vectors u⁰ᵢ, and uⱼ is an
    intruder when maxᵢ |⟨uⱼ, u⁰ᵢ⟩| < ``threshold``. A base that a residual initializer rewrote (PiSSA, MiLoRA, a
    residual SVD init: W_res = W − s·B₀·A₀) is compared as the original W when the LightningModule exposes the
    starting factors as ``initial_factors`` (``{module path: (B₀, A₀)}``, as ``QwenLoRAModule`` does).

    Cost: at fit start, one seeded randomized SVD of every base weight (``base_niter`` iterations, q = ``base_rank``
    + ``oversample`` columns), kept on the CPU (``base_rank``·out floats per layer) and cached on disk; at every
    interval, per layer, 2·``niter`` + 2 products of W + ΔW with a thin matrix of q = ``top_k`` + ``oversample``
    columns, started from the previous interval's singular vectors (the weights move little between intervals, so
    the tracked vectors keep converging). The result is exact when q reaches min(out, in); otherwise it is the
    randomized estimate, whose error shrinks as (σ_{q+1}/σⱼ)^(2·niter+1) per interval.

    Logged metrics (``<layer>`` and ``<kind>`` as in :class:`~svdlora_pl.callbacks.LoRASpectrumMonitor`):

    - ``weights.intruders.<kind>/<layer>``: the number of intruder dimensions among the top ``top_k`` (0 at the
      start of PEFT's B = 0 initialization: W + 0 is the base);
    - ``weights.base_similarity.<kind>/<layer>``: minⱼ maxᵢ |⟨uⱼ, u⁰ᵢ⟩|, the similarity of the least familiar top
      direction to the base's (1: all top directions are the base's; below ``threshold``: at least one intruder);
    - ``weights/intruders/mean``, ``.../min``, ``.../max``, ``.../total`` (the sum over layers), and
      ``weights/base_similarity/mean``, ``.../min``, ``.../max``;
    - with TensorBoard and ``log_figures``, at each validation end: the heat map ``weights/heatmap/intruders``
      (layers × module kinds, colours 0–``top_k``) of the last measurement.

    Args:
        every_n_steps: Interval in optimizer steps (gradient-accumulation micro-batches do not count).
        top_k: How many leading singular vectors of W + ΔW are checked (10 in the paper and in PEFT).
        threshold: Max cosine below which a direction is an intruder (0.5 in PEFT).
        base_rank: How many leading singular vectors of the base each direction is compared with.
        niter: Subspace iterations per measurement (each: two products with W + ΔW), from the last vectors.
        base_niter: Subspace iterations of the one-time randomized SVD of each base weight.
        oversample: Extra columns of the randomized SVDs beyond ``top_k`` (and ``base_rank``).
        seed: Seed of the randomized SVDs' starting matrices.
        cache_dir: Where the bases' singular vectors are cached; ``None``: ``intruder_bases`` in the package's cache
            (``$SVDLORA_CACHE``, else ``~/.cache/svdlora_pl``).
        cache: Read and write that cache (off: compute at every fit start).
        log_per_layer: Log every layer's metrics, not only the summaries over layers.
        log_figures: Log the heat map at each validation end (TensorBoard only).
        adapter_name: PEFT adapter whose LoRA layers are measured.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        top_k: int = 10,
        threshold: float = 0.5,
        base_rank: int = 32,
        niter: int = 1,
        base_niter: int = 4,
        oversample: int = 10,
        seed: int = 0,
        cache_dir: str | None = None,
        cache: bool = True,
        log_per_layer: bool = True,
        log_figures: bool = True,
        adapter_name: str = "default",
    ) -> None:
        super().__init__(every_n_steps, adapter_name, log_per_layer, log_figures)
        for name, value in (("top_k", top_k), ("base_rank", base_rank)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise MisconfigurationException(f"{name} must be a positive integer, got {value!r}")
        for name, value in (("niter", niter), ("base_niter", base_niter), ("oversample", oversample)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise MisconfigurationException(f"{name} must be a non-negative integer, got {value!r}")
        if not 0.0 < threshold <= 1.0:
            raise MisconfigurationException(f"threshold must be in (0, 1], got {threshold!r}")
        self.top_k, self.threshold, self.base_rank = top_k, threshold, base_rank
        self.niter, self.base_niter, self.oversample, self.seed = niter, base_niter, oversample, seed
        self.cache_dir, self.cache = cache_dir, cache
        self.bases: dict[str, torch.Tensor] = {}
        """Per layer path: the base's top ``base_rank`` left singular vectors (out × base_rank, float32, CPU)."""
        self.starts: dict[str, torch.Tensor] = {}
        """Per layer path: the right singular vectors the next measurement starts from (in × q, float32, CPU)."""
        self.baseline_seconds = 0.0
        """Wall time of the one-time base SVDs (or of reading them from the cache) at fit start."""
        self.cached_bases = 0
        """How many of the bases were read from the cache."""

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(every_n_steps=self.every_n_steps, top_k=self.top_k, threshold=self.threshold)

    def residual(self, ref: LoRALayerRef, pl_module: pl.LightningModule) -> list[LowRank]:
        """The term s·B₀·A₀ that turns a residual base back into the original weight (none for other inits)."""
        initial = getattr(pl_module, "initial_factors", None) or {}
        if ref.name not in initial:
            return []
        B0, A0 = initial[ref.name]
        device = ref.B.device
        return [(B0.to(device), A0.to(device), ref.scaling)]

    @override
    def on_layers_found(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:  # only rank zero measures
            return
        began, self.cached_bases = time.perf_counter(), 0
        with torch.no_grad(), cpu_threads(self.num_threads):
            for ref in self.layers:
                U, V = self.base_vectors(ref, pl_module)
                self.bases[ref.name], self.starts[ref.name] = U, V
        self.baseline_seconds = time.perf_counter() - began
        rank_zero_info(
            f"{type(self).__name__}: top-{self.base_rank} singular vectors of {len(self.layers)} base weights in "
            f"{self.baseline_seconds:.2f} s ({self.cached_bases} from the cache)"
        )

    def base_vectors(self, ref: LoRALayerRef, pl_module: pl.LightningModule) -> tuple[torch.Tensor, torch.Tensor]:
        """(U: out × base_rank, V: in × q) of the layer's base weight, from the cache or a seeded randomized SVD."""
        W = ref.layer.get_base_layer().weight.detach()
        residual = self.residual(ref, pl_module)
        path = self._cache_path(ref.name, W, residual)
        if path is not None and path.is_file():
            from svdlora_pl.io import open_safetensors

            with open_safetensors(path) as handle:
                self.cached_bases += 1
                return handle.get_tensor("U"), handle.get_tensor("V")
        svd = top_singular_triplets(
            W, residual, self.base_rank, niter=self.base_niter, oversample=self.oversample, seed=self.seed
        )
        U = svd.U[:, : self.base_rank].float().cpu().contiguous()
        V = svd.V[:, : self.top_k + self.oversample].float().cpu().contiguous()
        if path is not None:
            from safetensors.torch import save

            from svdlora_pl.io import atomic_write_bytes

            atomic_write_bytes(path, save({"U": U, "V": V}, metadata={"module": ref.name}))
        return U, V

    def _cache_path(self, name: str, W: torch.Tensor, residual: list[LowRank]) -> Path | None:
        """``<cache_dir>/<digest>.safetensors``: the digest covers the module's path, the weight's shape, dtype, sum
        and an evenly strided sample, the residual factors, and the SVD settings."""
        if not self.cache:
            return None
        if self.cache_dir is None:
            from svdlora_pl.embedded.tiny import cache_root

            root = cache_root() / "intruder_bases"
        else:
            root = Path(self.cache_dir)
        flat = W.reshape(-1)
        sample = flat[:: max(1, flat.numel() // SAMPLE)].float().cpu().numpy()
        settings: list[Any] = [name, list(W.shape), str(W.dtype), float(W.sum(dtype=torch.float32))]
        settings += [self.base_rank, self.base_niter, self.oversample, self.top_k, self.seed]
        digest = hashlib.sha256(repr(settings).encode())
        digest.update(sample.tobytes())
        for B0, A0, scale in residual:
            digest.update(repr(float(scale)).encode())
            for tensor in (B0, A0):
                digest.update(tensor.detach().float().cpu().numpy().tobytes())
        return root / f"{digest.hexdigest()[:32]}.safetensors"

    @override
    def measure_layers(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, dict[str, float]]:
        results = {}
        for ref in self.layers:
            W = ref.layer.get_base_layer().weight.detach()
            device = W.device
            found = intruder_dimensions(
                W,
                [(ref.B.detach(), ref.A.detach(), ref.scaling)],
                self.bases[ref.name].to(device),
                self.top_k,
                self.threshold,
                start=self.starts[ref.name].to(device),
                niter=self.niter,
                oversample=self.oversample,
                seed=self.seed,
            )
            self.starts[ref.name] = found.svd.V.float().cpu()
            results[short_name(ref.name)] = {
                "intruders": float(found.count),
                "base_similarity": float(found.cosines.min()),
            }
        return results

    @override
    def extra_summaries(self, per_layer: dict[str, dict[str, float]]) -> dict[str, float]:
        return {summary_tag("intruders", "total"): float(sum(row["intruders"] for row in per_layer.values()))}

    @override
    def metric_names(self) -> list[str]:
        return ["intruders", "base_similarity"]

    @override
    def summary_tags(self) -> list[str]:
        return [summary_tag("intruders", "total"), summary_tag("base_similarity", "min")]

    @override
    def heatmap_metrics(self) -> dict[str, tuple[float, float]]:
        return {"intruders": (0.0, float(self.top_k))}
