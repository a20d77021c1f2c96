"""LoRA Spectrum Monitor
=====================

Logs, during training, the singular spectrum of every LoRA layer's update ΔW = scaling · B·A, computed
exactly in factored form (QR of B and Aᵀ, SVD of the r×r core; never the out×in matrix), so a whole
7B-shaped adapter costs milliseconds.

Enable it in any LightningCLI run::

    trainer:
      callbacks:
        - class_path: svdlora_pl.callbacks.LoRASpectrumMonitor
          init_args:
            every_n_steps: 50
            ranks: null        # null: k = 1, r/4, r/2 (those below the LoRA rank r)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from svdlora_pl.callbacks.step_monitor import LoRAStepMonitor
from svdlora_pl.callbacks.tags import PREFIX, layer_tag, summary_tag
from svdlora_pl.lora.layers import short_name
from svdlora_pl.spectral import spectrum_summary, svdvals_of_modules

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SHAPE_METRICS = ("effective_rank", "stable_rank", "frobenius_norm", "spectral_norm")


def default_ranks(r: int) -> list[int]:
    """The k of ``energy@k`` when none are given: 1, r/4 and r/2, those below r (a rank-r update has energy@r 1)."""
    return sorted({k for k in (1, r // 4, r // 2) if 1 <= k < r})


class LoRASpectrumMonitor(LoRAStepMonitor):
    """Logs per-layer spectral metrics of the LoRA updates every ``every_n_steps`` optimizer steps.

    Works on any LightningModule that holds PEFT LoRA layers. At step 0 (before the first update) it logs the
    starting point; a zero update (PEFT's B = 0 start) has energy@k 1, recon_error@k 0 and effective,
    stable rank and norms 0. The default k stay below the LoRA rank r: a rank-r update has energy@r = 1 and
    recon_error@r = 0 by construction.

    Logged metrics (``<layer>`` is the base-model module path without ``model.``, e.g.
    ``layers.0.self_attn.q_proj``; ``<kind>`` its last component, ``q_proj``; ``<k>`` each of ``ranks``; the
    layout is described in :mod:`svdlora_pl.callbacks.tags`):

    - ``weights.energy@<k>.<kind>/<layer>``: Σ_{i≤k} σ_i² / Σ σ_i², energy captured by the top k directions;
    - ``weights.recon_error@<k>.<kind>/<layer>``: √(Σ_{i>k} σ_i²) / √(Σ σ_i²), relative Frobenius error of the
      best rank-k approximation (= √(1 − energy@k));
    - ``weights.effective_rank.<kind>/<layer>`` (entropy-based, Roy & Vetterli; in [1, r]),
      ``weights.stable_rank.<kind>/<layer>`` (‖ΔW‖_F² / ‖ΔW‖_2²), ``weights.frobenius_norm.<kind>/<layer>``,
      ``weights.spectral_norm.<kind>/<layer>``;
    - ``weights/<metric>/mean``, ``.../min``, ``.../max``: each metric over all layers;
    - with TensorBoard and ``log_histograms``: histogram ``weights.singular_values.<kind>/<layer>``;
    - with TensorBoard and ``log_figures``, at each validation end, from the last measurement: heat maps
      (layers × module kinds) ``weights/heatmap/energy@<k>`` (the smallest k, colours 0–1) and
      ``weights/heatmap/effective_rank`` (colours 0–r), and ``weights/spectra`` (a few layers' spectra).

    Args:
        every_n_steps: Interval in optimizer steps (gradient-accumulation micro-batches do not count).
        ranks: The k of ``energy@k`` and ``recon_error@k``; ``None``: 1, r/4 and r/2 below the smallest LoRA rank r.
        log_per_layer: Log every layer's metrics, not only the summaries over layers.
        log_histograms: Log singular values as TensorBoard histograms.
        log_figures: Log the heat maps and the spectra figure at each validation end (TensorBoard only).
        figure_layers: How many layers (evenly spaced) the spectra figure shows.
        adapter_name: PEFT adapter whose LoRA layers are measured.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        ranks: Sequence[int] | None = None,
        log_per_layer: bool = True,
        log_histograms: bool = True,
        log_figures: bool = True,
        figure_layers: int = 4,
        adapter_name: str = "default",
    ) -> None:
        super().__init__(every_n_steps, adapter_name, log_per_layer, log_figures)
        if ranks is not None and (not ranks or any(not isinstance(k, int) or k < 1 for k in ranks)):
            raise MisconfigurationException(f"ranks must be positive integers or null, got {ranks!r}")
        if figure_layers < 1:
            raise MisconfigurationException(f"figure_layers must be positive, got {figure_layers}")
        self.requested_ranks = None if ranks is None else sorted(set(ranks))
        self.ranks: list[int] = list(self.requested_ranks or [])
        """The k measured: ``ranks``, or the defaults once the layers are found."""
        self.log_histograms = log_histograms
        self.figure_layers = figure_layers
        self.last_spectra: dict[str, torch.Tensor] = {}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(every_n_steps=self.every_n_steps, ranks=self.requested_ranks)

    @override
    def on_layers_found(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.requested_ranks is None:
            self.ranks = default_ranks(min(ref.A.shape[0] for ref in self.layers))

    def spectra(self) -> dict[str, torch.Tensor]:
        """Singular values of every LoRA update, by short layer name (batched over same-shaped layers)."""
        factors = {short_name(ref.name): (ref.B, ref.A, ref.scaling) for ref in self.layers}
        return svdvals_of_modules(factors)

    @override
    def measure_layers(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, dict[str, float]]:
        self.last_spectra = {name: s.detach().cpu() for name, s in self.spectra().items()}
        return {name: spectrum_summary(s, self.ranks) for name, s in self.last_spectra.items()}

    @override
    def metric_names(self) -> list[str]:
        return [name for k in self.ranks for name in (f"energy@{k}", f"recon_error@{k}")] + list(SHAPE_METRICS)

    @override
    def summary_tags(self) -> list[str]:
        return [summary_tag("effective_rank", "mean"), summary_tag("frobenius_norm", "mean")]

    @override
    def heatmap_metrics(self) -> dict[str, tuple[float, float]]:
        top = max((ref.A.shape[0] for ref in self.layers), default=1)
        energy = {f"energy@{self.ranks[0]}": (0.0, 1.0)} if self.ranks else {}
        return {**energy, "effective_rank": (0.0, float(top))}

    @override
    def histograms(self) -> dict[str, torch.Tensor]:
        if not self.log_histograms:
            return {}
        return {layer_tag("singular_values", name): values for name, values in self.last_spectra.items()}

    @override
    def extra_figures(self, step: int) -> dict[str, Figure]:
        """``weights/spectra``: the singular values of a few evenly spaced layers at the last measurement."""
        from svdlora_pl.plots import spectra_plot

        names = list(self.last_spectra)
        if not names:
            return {}
        picks = [names[i] for i in np.linspace(0, len(names) - 1, min(self.figure_layers, len(names))).astype(int)]
        title = f"LoRA singular values at step {self.last_step}"
        return {f"{PREFIX}/spectra": spectra_plot({n: self.last_spectra[n].numpy() for n in picks}, title)}
