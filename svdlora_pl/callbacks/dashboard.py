"""TensorBoard Dashboard
=====================

Makes a run's TensorBoard readable at hundreds of LoRA modules: writes, at the start of training, a custom-scalars
layout (losses first; every monitor metric as a mean line with its min–max band over layers; one multi-line chart per
metric and module kind with one line per layer) and the run's hyper-parameters as an HPARAMS session whose metrics
are the run's final losses and monitor summaries, one row per run. :class:`DashboardLogger` is Lightning's
TensorBoard logger without its two constant cards (``hp_metric``, ``epoch``).

``svdlora fit`` uses both by default. In any LightningCLI run::

    trainer:
      logger:
        class_path: svdlora_pl.callbacks.DashboardLogger
        init_args:
          save_dir: lightning_logs
      callbacks:
        - class_path: svdlora_pl.callbacks.TensorBoardDashboard
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from svdlora_pl.callbacks.step_monitor import LoRAStepMonitor
from svdlora_pl.callbacks.tags import AGGREGATES, layer_regex, module_kind, summary_tag

LOSS_CHARTS: dict[str, list[str]] = {
    "loss (train, val)": ["train/loss", "val/loss"],
    "val/token_accuracy": ["val/token_accuracy"],
    "val/perplexity": ["val/perplexity"],
    "train/lr": ["train/lr"],
}
"""The first category of the layout: chart title -> the tags it draws (``QwenLoRAModule``'s keys)."""
HPARAMS_METRICS = ("train/loss", "val/loss", "val/token_accuracy", "val/perplexity")
"""Metrics of every HPARAMS row besides the monitors' summaries: TensorBoard shows each one's last value."""
OPTIMIZER_KEYS = ("lr", "weight_decay", "betas", "momentum", "eps")
HEADLINE_HPARAMS = ("model/initializer/class_path", "model/lora/r", "model/lora/alpha", "optimizer/lr", "seed")
"""Hyper-parameters listed first in the HPARAMS dashboard, whose table shows the first few columns by default."""


class DashboardLogger(TensorBoardLogger):
    """Lightning's :class:`~lightning.pytorch.loggers.TensorBoardLogger` without its constant cards.

    ``default_hp_metric`` is off (no ``hp_metric`` card holding −1; :class:`TensorBoardDashboard` writes the
    hyper-parameters with real metrics instead), and the ``epoch`` scalar Lightning adds to every logged step is not
    written (the x axis is the optimizer step; epoch e starts at step e × steps per epoch). Everything else is
    :class:`~lightning.pytorch.loggers.TensorBoardLogger`'s, arguments included.
    """

    def __init__(
        self, save_dir: str, name: str | None = "lightning_logs", version: int | str | None = None, **kwargs: Any
    ):
        kwargs.setdefault("default_hp_metric", False)
        super().__init__(save_dir, name=name, version=version, **kwargs)

    @override
    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics({key: value for key, value in metrics.items() if key != "epoch"}, step)


class TensorBoardDashboard(Callback):
    """Writes a run's custom-scalars layout and its HPARAMS session to TensorBoard.

    At the start of training (after every callback's ``on_fit_start``, so the monitors know their layers), on global
    rank zero, into the run's own event file:

    - the custom-scalars layout (TensorBoard's CUSTOM SCALARS tab), in this order: the category ``train and
      validation`` with ``charts``; ``LoRA updates (mean, min-max over N layers)``, any summary a monitor lists
      beyond mean/min/max (``weights/intruders/total``), then one chart per metric of every
      :class:`~svdlora_pl.callbacks.step_monitor.LoRAStepMonitor` attached, drawing ``weights/<metric>/mean`` with the
      band from ``.../min`` to ``.../max`` (listed in reverse in the layout: TensorBoard 2.21 draws margin charts in
      reverse order);
      then per metric a collapsed category ``<metric> per layer`` with one multi-line chart per module kind, one
      line per layer (28 lines for Qwen2.5-7B; TensorBoard draws a run's lines in one colour with distinct markers,
      and names them in the chart's list of matches), for monitors that log per layer;
    - the HPARAMS session: the LightningModule's and DataModule's ``hparams`` (``model/…``, ``data/…``;
      nested keys joined with ``/``, lists as text, ``None`` and keys starting with ``_`` left out), the optimizer's
      class and defaults (``optimizer/…``), ``trainer/…`` settings and the seed, ``headline`` first; its metrics are
      ``metrics`` and every monitor's
      summary tags, whose last logged values the HPARAMS table shows. The session ends at fit end (status
      success) or on an exception (failure).

    Use it with :class:`DashboardLogger` (or a ``TensorBoardLogger(default_hp_metric=False)``): with Lightning's
    default ``hp_metric`` the HPARAMS row is Lightning's, holding only that placeholder.

    Logged metrics: none (the layout and the HPARAMS summaries are not scalars).

    Args:
        charts: The first layout category, chart title -> the tags it draws (exact names); ``None``: ``train/loss``
            with ``val/loss``, ``val/token_accuracy``, ``val/perplexity``, ``train/lr``.
        metrics: HPARAMS metrics besides the monitors' summaries; ``None``: ``train/loss``, ``val/loss``,
            ``val/token_accuracy``, ``val/perplexity``.
        headline: Hyper-parameters listed first (TensorBoard's table shows the first few columns by default);
            ``None``: ``model/initializer/class_path``, ``model/lora/r``, ``model/lora/alpha``, ``optimizer/lr``,
            ``seed``.
        layout: Write the custom-scalars layout.
        hparams: Write the HPARAMS session.
    """

    def __init__(
        self,
        charts: dict[str, list[str]] | None = None,
        metrics: Sequence[str] | None = None,
        headline: Sequence[str] | None = None,
        layout: bool = True,
        hparams: bool = True,
    ) -> None:
        if charts is not None and any(not isinstance(tags, list) or not tags for tags in charts.values()):
            raise MisconfigurationException(f"charts must map each title to a non-empty list of tags, got {charts!r}")
        self.charts = dict(LOSS_CHARTS if charts is None else charts)
        self.metrics = list(HPARAMS_METRICS if metrics is None else metrics)
        self.headline = list(HEADLINE_HPARAMS if headline is None else headline)
        self.layout = layout
        self.hparams = hparams
        self._writers: list[Any] = []

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and not any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers):
            raise MisconfigurationException(f"{type(self).__name__} needs a TensorBoardLogger: the Trainer has none")

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        monitors = [callback for callback in trainer.callbacks if isinstance(callback, LoRAStepMonitor)]
        summaries = []
        self._writers = [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        if self.layout:
            summaries.append(layout_summary(build_layout(self.charts, monitors)))
        if self.hparams:
            metrics = list(dict.fromkeys(self.metrics + [tag for m in monitors for tag in m.summary_tags()]))
            summaries += hparams_summaries(hparam_values(trainer, pl_module), metrics, self.headline)
        for writer in self._writers:
            for summary in summaries:
                writer._get_file_writer().add_summary(summary, trainer.global_step)
            writer.flush()

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_session(trainer, success=True)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._end_session(trainer, success=False)

    def _end_session(self, trainer: pl.Trainer, success: bool) -> None:
        if not (self.hparams and self._writers):
            return
        summary = session_end_summary(success)
        for writer in self._writers:
            writer._get_file_writer().add_summary(summary, trainer.global_step)
            writer.flush()
        self._writers = []


def build_layout(charts: Mapping[str, Sequence[str]], monitors: Sequence[LoRAStepMonitor]) -> Any:
    """The custom-scalars ``Layout`` proto described in :class:`TensorBoardDashboard`."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    def multiline(title: str, patterns: Sequence[str]) -> Any:
        return layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=list(patterns)))

    exact = [multiline(title, [f"^{re.escape(tag)}$" for tag in tags]) for title, tags in charts.items()]
    categories = [layout_pb2.Category(title="train and validation", chart=exact)]
    summary, per_layer = [], []
    for monitor in monitors:
        per_kind = Counter(module_kind(ref.name) for ref in monitor.layers)
        for metric in monitor.metric_names():
            tags = [summary_tag(metric, agg) for agg in AGGREGATES]
            band = layout_pb2.MarginChartContent.Series(value=tags[0], lower=tags[1], upper=tags[2])
            summary.append(layout_pb2.Chart(title=metric, margin=layout_pb2.MarginChartContent(series=[band])))
            if not monitor.log_per_layer:
                continue
            charts_of_metric = [
                multiline(f"{metric} · {kind} ({count} layers)", [layer_regex(metric, kind)])
                for kind, count in per_kind.items()
            ]
            per_layer.append(layout_pb2.Category(title=f"{metric} per layer", chart=charts_of_metric, closed=True))
        extra = [tag for tag in monitor.summary_tags() if tag.rpartition("/")[2] not in AGGREGATES]
        summary += [multiline(tag, [f"^{re.escape(tag)}$"]) for tag in extra]
    if summary:
        # TensorBoard 2.21 draws a category's multi-line charts first and its margin charts in reverse layout order:
        # listing the margin charts reversed shows them in metric order.
        lines = [chart for chart in summary if chart.HasField("multiline")]
        bands = [chart for chart in summary if chart.HasField("margin")][::-1]
        count = max(len(monitor.layers) for monitor in monitors)
        title = f"LoRA updates (mean, min-max over {count} layers)"
        categories.append(layout_pb2.Category(title=title, chart=lines + bands))
    return layout_pb2.Layout(category=categories + per_layer)


def layout_summary(layout: Any) -> Any:
    """A ``Summary`` holding ``layout`` under the tag the custom-scalars plugin reads."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.plugins.custom_scalar import metadata

    tensor = TensorProto(dtype="DT_STRING", string_val=[layout.SerializeToString()], tensor_shape=TensorShapeProto())
    value = Summary.Value(tag=metadata.CONFIG_SUMMARY_TAG, tensor=tensor, metadata=metadata.create_summary_metadata())
    return Summary(value=[value])


def hparam_values(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, bool | float | str]:
    """The HPARAMS values of a run: module, data, optimizer and trainer settings (see :class:`TensorBoardDashboard`)."""
    values: dict[str, Any] = {}
    flatten_into(values, "model", dict(pl_module.hparams))
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None:
        flatten_into(values, "data", dict(datamodule.hparams))
    if trainer.optimizers:
        optimizer = trainer.optimizers[0]
        values["optimizer/class"] = type(optimizer).__name__
        flatten_into(values, "optimizer", {k: v for k, v in optimizer.defaults.items() if k in OPTIMIZER_KEYS})
    trainer_values = {
        "max_epochs": trainer.max_epochs,
        "max_steps": trainer.max_steps,
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "precision": trainer.precision,
        "world_size": trainer.world_size,
    }
    flatten_into(values, "trainer", trainer_values)
    if os.environ.get("PL_GLOBAL_SEED"):
        values["seed"] = int(os.environ["PL_GLOBAL_SEED"])
    return values


def flatten_into(values: dict[str, Any], prefix: str, params: Mapping[str, Any]) -> None:
    """Add ``params`` to ``values`` as ``prefix/key`` (nested mappings and dataclasses joined with ``/``): numbers and
    booleans as they are, anything else as text; ``None`` values and keys starting with ``_`` are left out."""
    for key, value in params.items():
        if str(key).startswith("_"):  # LightningCLI's ``_instantiator`` and other private entries
            continue
        name = f"{prefix}/{key}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, Mapping):
            flatten_into(values, name, value)
        elif isinstance(value, bool | int | float | str):
            values[name] = value
        elif value is not None:
            values[name] = str(value)


def _hparams_summary(tag: str, plugin_data: Any) -> Any:
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import metadata

    return Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(plugin_data))])


def hparams_summaries(
    values: Mapping[str, bool | float | str], metrics: Sequence[str], headline: Sequence[str] = ()
) -> list[Any]:
    """The HPARAMS plugin's experiment and session-start summaries of one run.

    TensorBoard orders the experiment's hyper-parameters by their ``differs`` flag, then by name, and its table shows
    the first few: the ``headline`` ones are flagged so they come first.
    """
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    infos, start = [], plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    order = sorted(values, key=lambda name: (name not in headline, headline.index(name) if name in headline else 0))
    for name in order:
        value = values[name]
        if isinstance(value, bool):
            kind, start.hparams[name].bool_value = api_pb2.DATA_TYPE_BOOL, value
        elif isinstance(value, int | float):
            kind, start.hparams[name].number_value = api_pb2.DATA_TYPE_FLOAT64, float(value)
        else:
            kind, start.hparams[name].string_value = api_pb2.DATA_TYPE_STRING, str(value)
        infos.append(api_pb2.HParamInfo(name=name, type=kind, differs=name in headline))
    experiment = api_pb2.Experiment(
        hparam_infos=infos, metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metrics]
    )
    return [
        _hparams_summary(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)),
        _hparams_summary(metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start)),
    ]


def session_end_summary(success: bool) -> Any:
    """The HPARAMS plugin's session-end summary: status success or failure, now."""
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    status = api_pb2.STATUS_SUCCESS if success else api_pb2.STATUS_FAILURE
    end = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
    return _hparams_summary(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end))


def apply_cli_defaults(trainer: pl.Trainer, configured_logger: Any) -> None:
    """``svdlora``'s dashboard defaults on a Trainer built from a config: a :class:`DashboardLogger` where Lightning
    made its default TensorBoard logger (the config names no logger: ``configured_logger`` is ``None`` or ``True``),
    and a :class:`TensorBoardDashboard` when the run logs to TensorBoard and the config adds none."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if configured_logger in (None, True) and any(isinstance(lg, TensorBoardLogger) for lg in trainer.loggers):
        trainer.loggers = [DashboardLogger(trainer.default_root_dir, version=SLURMEnvironment.job_id())]
    tensorboard = any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers)
    if tensorboard and not any(isinstance(callback, TensorBoardDashboard) for callback in trainer.callbacks):
        trainer.callbacks.append(TensorBoardDashboard())
