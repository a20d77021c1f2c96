"""TensorBoardDashboard and DashboardLogger on a tiny fit: no constant cards, losses first, the custom-scalars layout
and the HPARAMS session read back from the event file, heat maps that vary; the command line's defaults."""

from __future__ import annotations

import re
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from helpers import make_trainer, read_scalars
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from svdlora_pl.callbacks import DashboardLogger, LoRAIntruderMonitor, LoRASpectrumMonitor, TensorBoardDashboard
from svdlora_pl.callbacks.dashboard import apply_cli_defaults
from svdlora_pl.callbacks.tags import time_series_groups
from svdlora_pl.lora.settings import LoRASettings
from svdlora_pl.training.datamodule import QADataModule
from svdlora_pl.training.module import QwenLoRAModule


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = tmp_path_factory.mktemp("dashboard")
    pl.seed_everything(0)
    module = QwenLoRAModule(
        lora=LoRASettings(r=4, alpha=8, dropout=0.0), optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3)
    )
    callbacks = [
        TensorBoardDashboard(),  # first in the list: it still sees the monitors' layers (it writes at train start)
        LoRASpectrumMonitor(every_n_steps=2),
        LoRAIntruderMonitor(every_n_steps=2, cache_dir=str(root / "cache")),
    ]
    trainer = make_trainer(
        root, logger=DashboardLogger(str(root)), limit_train_batches=6, limit_val_batches=2, callbacks=callbacks
    )
    trainer.fit(module, QADataModule(batch_size=2))
    events = EventAccumulator(str(trainer.log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return Path(trainer.log_dir), events


def test_no_constant_cards_and_the_losses_come_first(run):
    log_dir, events = run
    scalars = read_scalars(log_dir)
    assert "epoch" not in scalars and "hp_metric" not in scalars
    constant = [tag for tag, series in scalars.items() if len(series) > 1 and len({v for _, v in series}) == 1]
    assert not [tag for tag in constant if "intruders" not in tag]  # a count of intruders may stay 0 early on
    tags = events.Tags()
    assert time_series_groups(tags["scalars"] + tags["images"] + tags["histograms"])[:3] == ["train", "val", "weights"]


def test_layout_read_back_from_the_event_file(run):
    from tensorboard.plugins.custom_scalar import layout_pb2

    _, events = run
    (event,) = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    first = layout.category[0]
    assert first.title == "train and validation" and not first.closed
    assert first.chart[0].title == "loss (train, val)"
    scalars = events.Tags()["scalars"]
    matched = [t for t in scalars if any(re.search(p, t) for p in first.chart[0].multiline.tag)]
    assert sorted(matched) == ["train/loss", "val/loss"]
    summary = layout.category[1]
    assert summary.title == "LoRA updates (mean, min-max over 28 layers)" and not summary.closed
    assert summary.chart[0].title == "weights/intruders/total" and summary.chart[0].HasField("multiline")
    margins = {chart.title: chart.margin.series[0] for chart in summary.chart[1:]}
    assert margins["intruders"].value == "weights/intruders/mean"
    assert margins["energy@1"].upper == "weights/energy@1/max"
    # TensorBoard 2.21 draws margin charts in reverse layout order: the layout lists them reversed
    assert list(margins)[::-1][:4] == ["energy@1", "recon_error@1", "energy@2", "recon_error@2"]
    per_layer = {category.title: category for category in layout.category[2:]}
    assert set(per_layer) == {f"{m} per layer" for m in ("energy@1", "recon_error@1", "energy@2", "recon_error@2")} | {
        f"{m} per layer"
        for m in ("effective_rank", "stable_rank", "frobenius_norm", "spectral_norm", "intruders", "base_similarity")
    }
    for category in per_layer.values():
        assert category.closed and len(category.chart) == 7
        for chart in category.chart:
            assert len([t for t in scalars if re.search(chart.multiline.tag[0], t)]) == 4  # one line per layer


def test_hparams_session_read_back_from_the_event_file(run):
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    _, events = run
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content[metadata.EXPERIMENT_TAG]).experiment
    start = plugin_data_pb2.HParamsPluginData.FromString(content[metadata.SESSION_START_INFO_TAG]).session_start_info
    end = plugin_data_pb2.HParamsPluginData.FromString(content[metadata.SESSION_END_INFO_TAG]).session_end_info
    metrics = [info.name.tag for info in experiment.metric_infos]
    assert metrics[:2] == ["train/loss", "val/loss"]
    assert {"weights/effective_rank/mean", "weights/intruders/total", "weights/base_similarity/min"} <= set(metrics)
    names = [info.name for info in experiment.hparam_infos]
    assert names[:5] == ["model/initializer/class_path", "model/lora/r", "model/lora/alpha", "optimizer/lr", "seed"]
    assert not [name for name in names if "/_" in name]  # LightningCLI's private entries are left out
    assert start.hparams["model/lora/r"].number_value == 4
    assert start.hparams["optimizer/lr"].number_value == pytest.approx(3e-3)
    assert start.hparams["model/initializer/class_path"].string_value.endswith("RandomInit")
    assert (
        start.hparams["data/batch_size"].number_value == 2 and start.hparams["optimizer/class"].string_value == "AdamW"
    )
    assert end.status == api_pb2.STATUS_SUCCESS


def test_heat_maps_vary_across_modules(run):
    _, events = run
    images = events.Tags()["images"]
    assert {"weights/heatmap/energy@1", "weights/heatmap/effective_rank", "weights/heatmap/intruders"} <= set(images)
    from io import BytesIO

    from matplotlib.image import imread

    picture = imread(BytesIO(events.Images("weights/heatmap/energy@1")[-1].encoded_image_string), format="png")
    assert picture.shape[0] > 100 and np.ptp(picture[..., :3]) > 0.5  # a rendered map with distinct colours


def test_dashboard_logger_drops_lightnings_constant_cards(tmp_path):
    logger = DashboardLogger(str(tmp_path))
    logger.log_hyperparams({"lr": 0.1})  # Lightning's own call at fit start: no hp_metric placeholder
    logger.log_metrics({"epoch": 0, "train/loss": 1.5}, step=3)
    logger.finalize("success")
    assert set(read_scalars(Path(logger.log_dir))) == {"train/loss"}


def cli_trainer(tmp_path: Path, **options) -> pl.Trainer:
    return pl.Trainer(default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False, **options)


def test_command_line_defaults(tmp_path):
    default = cli_trainer(tmp_path)  # the config names no logger
    apply_cli_defaults(default, None)
    assert type(default.logger) is DashboardLogger and Path(default.logger.save_dir) == tmp_path
    assert [type(c) for c in default.callbacks if isinstance(c, TensorBoardDashboard)] == [TensorBoardDashboard]
    chosen = TensorBoardLogger(tmp_path, name="mine")
    configured = cli_trainer(tmp_path, logger=chosen)
    apply_cli_defaults(configured, chosen)
    assert configured.logger is chosen and any(isinstance(c, TensorBoardDashboard) for c in configured.callbacks)
    for logger in (False, CSVLogger(tmp_path)):
        other = cli_trainer(tmp_path, logger=logger)
        apply_cli_defaults(other, logger)
        assert not any(isinstance(c, TensorBoardDashboard) for c in other.callbacks)
        assert not any(isinstance(lg, DashboardLogger) for lg in other.loggers)


def test_fails_fast_without_tensorboard(tmp_path):
    trainer = make_trainer(tmp_path, logger=CSVLogger(tmp_path), callbacks=[TensorBoardDashboard()])
    with pytest.raises(MisconfigurationException, match="needs a TensorBoardLogger"):
        TensorBoardDashboard().setup(trainer, pl.LightningModule(), "fit")


def test_invalid_charts():
    with pytest.raises(MisconfigurationException, match="charts must map"):
        TensorBoardDashboard(charts={"loss": []})
