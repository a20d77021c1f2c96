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
            ranks: [1, 4, 8]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from svdlora_pl.callbacks.step_monitor import LoRAStepMonitor
from svdlora_pl.lora.layers import short_name
from svdlora_pl.spectral import spectrum_summary, svdvals_of_modules

if TYPE_CHECKING:
    from matplotlib.figure import Figure

AGGREGATES = ("mean", "min", "max")


class LoRASpectrumMonitor(LoRAStepMonitor):
    """Logs per-layer spectral metrics of the LoRA updates every ``every_n_steps`` optimizer steps.

    Works on any LightningModule that holds PEFT LoRA layers. At step 0 (before the first update) it logs the
    starting point; a zero update (PEFT's B = 0 start) has energy@k 1, recon_error@k 0 and effective,
    stable rank and norms 0.

    Logged metrics (``<layer>`` is the base-model module path without ``model.``, e.g.
    ``layers.0.self_attn.q_proj``; ``<k>`` each of ``ranks``):

    - ``spectrum/energy@<k>/<layer>``: Σ_{i≤k} σ_i² / Σ σ_i², energy captured by the top k directions;
    - ``spectrum/recon_error@<k>/<layer>``: √(Σ_{i>k} σ_i²) / √(Σ σ_i²), relative Frobenius error of the
      best rank-k approximation;
    - ``spectrum/effective_rank/<layer>`` (entropy-based, Roy & Vetterli), ``spectrum/stable_rank/<layer>``
      (‖ΔW‖_F² / ‖ΔW‖_2²), ``spectrum/frobenius_norm/<layer>``, ``spectrum/spectral_norm/<layer>``;
    - ``spectrum/<metric>/mean``, ``.../min``, ``.../max``: the same metrics aggregated over layers;
    - with TensorBoard and ``log_histograms``: histogram ``spectrum_sv/<layer>`` of the singular values;
    - with TensorBoard and ``log_figures``, at each validation end: figure ``spectrum_fig/energy@<k>``
      (layers × modules heat map at the largest k) and ``spectrum_fig/spectra`` (a few layers' spectra).

    Args:
        every_n_steps: Interval in optimizer steps (gradient-accumulation micro-batches do not count).
        ranks: The k of ``energy@k`` and ``recon_error@k``.
        log_per_layer: Log every layer's metrics, not only the aggregates.
        log_histograms: Log singular values as TensorBoard histograms.
        log_figures: Log the heat map and spectra figures at each validation end (TensorBoard only).
        figure_layers: How many layers (evenly spaced) the spectra figure shows.
        adapter_name: PEFT adapter whose LoRA layers are measured.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        ranks: Sequence[int] = (1, 4, 8),
        log_per_layer: bool = True,
        log_histograms: bool = True,
        log_figures: bool = True,
        figure_layers: int = 4,
        adapter_name: str = "default",
    ) -> None:
        super().__init__(every_n_steps, adapter_name)
        if not ranks or any(not isinstance(k, int) or k < 1 for k in ranks):
            raise MisconfigurationException(f"ranks must be positive integers, got {ranks!r}")
        if figure_layers < 1:
            raise MisconfigurationException(f"figure_layers must be positive, got {figure_layers}")
        self.ranks = sorted(set(ranks))
        self.log_per_layer = log_per_layer
        self.log_histograms = log_histograms
        self.log_figures = log_figures
        self.figure_layers = figure_layers
        self.last_spectra: dict[str, torch.Tensor] = {}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(every_n_steps=self.every_n_steps, ranks=self.ranks)

    def spectra(self) -> dict[str, torch.Tensor]:
        """Singular values of every LoRA update, by short layer name (batched over same-shaped layers)."""
        factors = {short_name(ref.name): (ref.B, ref.A, ref.scaling) for ref in self.layers}
        return svdvals_of_modules(factors)

    @override
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        self.last_spectra = {name: s.cpu() for name, s in self.spectra().items()}
        per_layer = {name: spectrum_summary(s, self.ranks) for name, s in self.last_spectra.items()}
        metrics: dict[str, float] = {}
        for metric in next(iter(per_layer.values())):
            values = np.array([summary[metric] for summary in per_layer.values()])
            metrics.update({f"spectrum/{metric}/{agg}": float(getattr(values, agg)()) for agg in AGGREGATES})
            if self.log_per_layer:
                metrics.update({f"spectrum/{metric}/{name}": summary[metric] for name, summary in per_layer.items()})
        return metrics

    @override
    def histograms(self) -> dict[str, torch.Tensor]:
        if not self.log_histograms:
            return {}
        return {f"spectrum_sv/{name}": values for name, values in self.last_spectra.items()}

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (self.log_figures and trainer.is_global_zero and self.layers) or trainer.sanity_checking:
            return
        loggers = self._tensorboards(trainer)
        if not loggers:
            return
        figures = self.figures(trainer.global_step)
        for logger in loggers:
            for tag, figure in figures.items():
                logger.experiment.add_figure(tag, figure, trainer.global_step, close=False)

    def figures(self, step: int) -> dict[str, Figure]:
        """The figures logged at a validation end, by tag: the energy heat map and a few layers' spectra."""
        from svdlora_pl.plots import energy_heatmap, spectra_plot

        with torch.no_grad():
            spectra = {name: s.cpu() for name, s in self.spectra().items()}
        k = self.ranks[-1]
        energy = {name: spectrum_summary(s, [k])[f"energy@{k}"] for name, s in spectra.items()}
        names = list(spectra)
        picks = [names[i] for i in np.linspace(0, len(names) - 1, min(self.figure_layers, len(names))).astype(int)]
        return {
            f"spectrum_fig/energy@{k}": energy_heatmap(energy, f"energy@{k} at step {step}"),
            "spectrum_fig/spectra": spectra_plot({n: spectra[n].numpy() for n in picks}, "LoRA singular values"),
        }

    @staticmethod
    def _tensorboards(trainer: pl.Trainer) -> list[TensorBoardLogger]:
        return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
