"""Shared mechanics of the LoRA monitors: act once every N optimizer steps, on rank zero, and log.

:class:`OptimizerStepCallback` holds the interval logic (also used by the memory monitor); a LoRA monitor
subclasses :class:`LoRAStepMonitor` and implements :meth:`LoRAStepMonitor.measure_layers`. The base
class finds the PEFT LoRA layers, refuses to run without a logger, skips the micro-batches of gradient
accumulation (it acts when ``trainer.global_step`` has advanced, i.e. after a real optimizer step), computes
on global rank zero only (DDP replicas hold identical LoRA weights, so nothing is gathered and no rank waits
on another), writes through the trainer's loggers at ``trainer.global_step`` under the tag names of
:mod:`svdlora_pl.callbacks.tags`, and draws heat maps of the last measurement at each validation end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from svdlora_pl.callbacks.tags import flatten, heatmap_tag, summary_tag
from svdlora_pl.errors import TrainingDiverged
from svdlora_pl.lora.layers import LoRALayerRef, find_lora_layers
from svdlora_pl.spectral.threads import cpu_threads

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class OptimizerStepCallback(Callback):
    """Base class: calls :meth:`on_interval` after every ``every_n_steps``-th optimizer step.

    Gradient-accumulation micro-batches do not count: it acts when ``trainer.global_step`` has advanced. A
    subclass overriding ``on_train_start`` calls ``super().on_train_start``.

    Args:
        every_n_steps: Interval in optimizer steps.
    """

    def __init__(self, every_n_steps: int) -> None:
        if not isinstance(every_n_steps, int) or isinstance(every_n_steps, bool) or every_n_steps < 1:
            raise MisconfigurationException(f"every_n_steps must be a positive integer, got {every_n_steps!r}")
        self.every_n_steps = every_n_steps
        self._last_step = -1

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step = trainer.global_step

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == self._last_step:  # an accumulation micro-batch: no optimizer step happened
            return
        self._last_step = step
        if step % self.every_n_steps == 0:
            self.on_interval(trainer, pl_module)

    def on_interval(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Act at ``trainer.global_step``, a multiple of ``every_n_steps``; implemented by subclasses."""
        raise NotImplementedError

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self._last_step}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_step = state_dict.get("last_step", -1)


class LoRAStepMonitor(OptimizerStepCallback):
    """Base class: calls :meth:`measure_layers` every ``every_n_steps`` optimizer steps and logs what it returns.

    A subclass returns ``{layer: {metric: value}}``; this class writes the per-layer and summary tags of
    :mod:`svdlora_pl.callbacks.tags`, keeps the values, and at each validation end draws the layer × module heat
    maps of :meth:`heatmap_metrics` (and a subclass's :meth:`extra_figures`) from the last measurement.

    Args:
        every_n_steps: Interval in optimizer steps (gradient-accumulation micro-batches do not count).
        adapter_name: PEFT adapter whose LoRA layers are measured.
        log_per_layer: Log every layer's metrics, not only the summaries over layers.
        log_figures: Log the heat maps at each validation end (TensorBoard only).
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        adapter_name: str = "default",
        log_per_layer: bool = True,
        log_figures: bool = True,
    ) -> None:
        super().__init__(every_n_steps)
        self.adapter_name = adapter_name
        self.log_per_layer = log_per_layer
        self.log_figures = log_figures
        self.layers: list[LoRALayerRef] = []
        self.last_values: dict[str, dict[str, float]] = {}
        """``{layer: {metric: value}}`` of the last measurement (``layer`` is the short module path)."""
        self.last_step = -1
        """The optimizer step of the last measurement (-1: none yet)."""
        self._start_pending = False

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and not trainer.loggers:
            raise MisconfigurationException(f"{type(self).__name__} needs a logger: the Trainer has none")

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After configure_model: a module that builds its model there has its LoRA layers now, not at setup.
        self.layers = find_lora_layers(pl_module, self.adapter_name)
        if not self.layers:
            raise MisconfigurationException(
                f"{type(self).__name__}: no PEFT LoRA layers with adapter {self.adapter_name!r} "
                f"in {type(pl_module).__name__}"
            )
        self.on_layers_found(trainer, pl_module)

    def on_layers_found(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Prepare per-layer state once :attr:`layers` is known (at fit start); nothing by default."""

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._start_pending = trainer.global_step == 0

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # The starting point (zero for PEFT's default init, the factors otherwise), measured before the first batch:
        # after every ``on_train_start``, including a LightningModule's that initializes LoRA from data there.
        if self._start_pending:
            self._start_pending = False
            self.on_interval(trainer, pl_module)

    @override
    def on_interval(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.check_finite(trainer.global_step)
            with torch.no_grad():
                metrics = self.measure(trainer, pl_module)
            self.log_metrics(trainer, metrics, self.histograms())

    def check_finite(self, step: int) -> None:
        """Raise :class:`~svdlora_pl.errors.TrainingDiverged` naming the first layer whose B or A is not finite."""
        for ref in self.layers:
            for factor, tensor in (("B", ref.B), ("A", ref.A)):
                if not bool(torch.isfinite(tensor).all()):
                    raise TrainingDiverged(f"LoRA factor {factor} holds NaN or infinite values", step, ref.name)

    def measure_layers(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, dict[str, float]]:
        """``{layer: {metric: value}}`` at the current weights, every layer with the same metrics; by subclasses."""
        raise NotImplementedError

    num_threads: int | None = 1
    """CPU threads while measuring (:func:`~svdlora_pl.spectral.cpu_threads`; ``None``: torch's setting). Many small
    factorizations are not worth threads: on busy cores two threads made them up to 500x slower (measured)."""

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Measure every layer, keep the values, and return the tags to log (:func:`~svdlora_pl.callbacks.tags.flatten`
        plus :meth:`extra_summaries`)."""
        with cpu_threads(self.num_threads):
            self.last_values = self.measure_layers(trainer, pl_module)
        self.last_step = trainer.global_step
        return {**flatten(self.last_values, self.log_per_layer), **self.extra_summaries(self.last_values)}

    def extra_summaries(self, per_layer: dict[str, dict[str, float]]) -> dict[str, float]:
        """Summary tags beyond mean/min/max (e.g. a total over layers); none by default."""
        return {}

    def metric_names(self) -> list[str]:
        """The metrics :meth:`measure_layers` returns for every layer (known once the layers are found)."""
        raise NotImplementedError

    def summary_tags(self) -> list[str]:
        """The headline tags of this monitor, listed as metrics in TensorBoard's HPARAMS dashboard."""
        return [summary_tag(metric, "mean") for metric in self.metric_names()]

    def heatmap_metrics(self) -> dict[str, tuple[float, float]]:
        """Metrics drawn as layer × module heat maps at each validation end, with their colour range."""
        return {}

    def histograms(self) -> dict[str, torch.Tensor]:
        """Value sets to log as TensorBoard histograms with the last measurement; none by default."""
        return {}

    def figures(self, step: int) -> dict[str, Figure]:
        """Figures by tag: the heat maps of the last measurement and :meth:`extra_figures` (``step``: the current one)."""
        from svdlora_pl.plots import module_heatmap

        figures: dict[str, Figure] = {}
        if self.last_values:
            for metric, (low, high) in self.heatmap_metrics().items():
                values = {layer: row[metric] for layer, row in self.last_values.items()}
                title = f"{metric} at step {self.last_step}"
                figures[heatmap_tag(metric)] = module_heatmap(values, title, low, high)
        return {**figures, **self.extra_figures(step)}

    def extra_figures(self, step: int) -> dict[str, Figure]:
        """Further figures logged at each validation end; none by default."""
        return {}

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (self.log_figures and trainer.is_global_zero and self.layers) or trainer.sanity_checking:
            return
        loggers = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        if not loggers:
            return
        figures = self.figures(trainer.global_step)
        for logger in loggers:
            for tag, figure in figures.items():
                logger.experiment.add_figure(tag, figure, trainer.global_step, close=False)

    def log_metrics(
        self, trainer: pl.Trainer, metrics: dict[str, float], histograms: dict[str, torch.Tensor] | None = None
    ) -> None:
        """Write ``metrics`` (and, to TensorBoard, ``histograms``) at ``trainer.global_step``; rank zero calls this.

        Hundreds of per-layer scalars go to TensorBoard as one event (one ``Summary`` with many values), which
        costs a fraction of one ``add_scalar`` call per key; other loggers get ``log_metrics``.
        """
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                write_summary(logger.experiment, trainer.global_step, metrics, histograms or {})
            else:
                logger.log_metrics(metrics, step=trainer.global_step)


def write_summary(
    writer: Any, step: int, scalars: dict[str, float], histograms: dict[str, torch.Tensor], max_bins: int = 32
) -> None:
    """Write scalars and histograms to a ``SummaryWriter`` as a single event at ``step``."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from torch.utils.tensorboard.summary import make_histogram

    values = [Summary.Value(tag=tag, simple_value=float(value)) for tag, value in scalars.items()]
    for tag, data in histograms.items():
        array = data.detach().double().cpu().numpy()
        values.append(Summary.Value(tag=tag, histo=make_histogram(array, bins=min(max_bins, max(1, array.size)))))
    writer._get_file_writer().add_summary(Summary(value=values), step)
