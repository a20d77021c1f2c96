"""LoRASpectrumMonitor on real (tiny) Lightning runs: keys, step cadence, values, figures, errors."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from helpers import make_trainer, read_scalars
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from svdlora_pl.callbacks import LoRASpectrumMonitor
from svdlora_pl.callbacks.spectrum_monitor import default_ranks
from svdlora_pl.errors import TrainingDiverged
from svdlora_pl.lora.settings import LoRASettings
from svdlora_pl.training.datamodule import QADataModule
from svdlora_pl.training.module import QwenLoRAModule


def tiny_module() -> QwenLoRAModule:
    return QwenLoRAModule(
        lora=LoRASettings(r=4, alpha=8, dropout=0.0), optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3)
    )


@pytest.fixture(scope="module")
def monitored_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("spectrum")
    pl.seed_everything(0)
    module = tiny_module()
    monitor = LoRASpectrumMonitor(every_n_steps=2)  # r = 4: k = 1, 2
    trainer = make_trainer(
        root, limit_train_batches=16, limit_val_batches=2, accumulate_grad_batches=4, callbacks=[monitor]
    )
    trainer.fit(module, QADataModule(batch_size=2))
    return module, monitor, Path(trainer.log_dir)


def test_keys_logged_once_per_optimizer_step(monitored_run):
    _, _, log_dir = monitored_run
    scalars = read_scalars(log_dir)
    layer = "layers.0.self_attn.q_proj"
    for key in (
        f"weights.energy@1.q_proj/{layer}",
        f"weights.recon_error@1.q_proj/{layer}",
        "weights/effective_rank/mean",
        "weights/stable_rank/max",
        "weights/frobenius_norm/min",
        f"weights.spectral_norm.q_proj/{layer}",
    ):
        assert key in scalars, key
    # 16 micro-batches / 4 = 4 optimizer steps; measured at step 0 (the start) and every 2 steps
    assert [step for step, _ in scalars["weights/energy@1/mean"]] == [0, 2, 4]
    assert len([k for k in scalars if k.startswith("weights.energy@1.")]) == 4 * 7
    assert len([k for k in scalars if k.startswith("weights.energy@2.")]) == 4 * 7
    assert not [k for k in scalars if "@4" in k]  # r = 4: energy@4 would be 1 by construction


def test_default_ranks_stay_below_the_lora_rank():
    assert default_ranks(16) == [1, 4, 8] and default_ranks(8) == [1, 2, 4] and default_ranks(4) == [1, 2]
    assert default_ranks(2) == [1] and default_ranks(1) == []
    monitor = LoRASpectrumMonitor()
    module = tiny_module()  # r = 4
    module.configure_model()
    monitor.on_fit_start(make_trainer(Path(".")), module)
    assert monitor.ranks == [1, 2]
    assert monitor.metric_names()[:4] == ["energy@1", "recon_error@1", "energy@2", "recon_error@2"]


def test_start_is_the_documented_zero_update_and_values_match_dense_svd(monitored_run):
    module, monitor, log_dir = monitored_run
    scalars = read_scalars(log_dir)
    layer = "layers.1.mlp.down_proj"
    first = {key: series[0][1] for key, series in scalars.items() if key.endswith(layer)}
    assert first[f"weights.energy@1.down_proj/{layer}"] == 1.0
    assert first[f"weights.frobenius_norm.down_proj/{layer}"] == 0.0
    (ref,) = [r for r in monitor.layers if r.name == f"model.{layer}"]
    delta = (ref.scaling * ref.B.detach().double() @ ref.A.detach().double()).numpy()
    sigma = np.linalg.svd(delta, compute_uv=False)
    last = {key.partition("/")[0]: series[-1][1] for key, series in scalars.items() if key.endswith(layer)}
    assert last["weights.energy@1.down_proj"] == pytest.approx(sigma[0] ** 2 / (sigma**2).sum(), rel=1e-5)
    assert last["weights.spectral_norm.down_proj"] == pytest.approx(sigma[0], rel=1e-5)
    assert last["weights.stable_rank.down_proj"] == pytest.approx((sigma**2).sum() / sigma[0] ** 2, rel=1e-5)


def test_histograms_and_figures_reach_tensorboard(monitored_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    module, monitor, log_dir = monitored_run
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    assert {"weights/heatmap/energy@1", "weights/heatmap/effective_rank", "weights/spectra"} == set(
        events.Tags()["images"]
    )
    # the last histogram holds the singular values of the final update (measured after the last optimizer step)
    layer = "layers.0.self_attn.q_proj"
    (ref,) = [r for r in monitor.layers if r.name == f"model.{layer}"]
    sigma = np.linalg.svd((ref.scaling * ref.B.detach().double() @ ref.A.detach().double()).numpy(), compute_uv=False)
    histogram = events.Histograms(f"weights.singular_values.q_proj/{layer}")[-1].histogram_value
    assert histogram.num == 4
    assert histogram.sum == pytest.approx(sigma[:4].sum(), rel=1e-6)
    assert histogram.max == pytest.approx(sigma[0], rel=1e-6) and histogram.min == pytest.approx(sigma[3], rel=1e-6)


@pytest.mark.parametrize("metric", ["energy@1", "effective_rank"])
def test_heat_map_shows_the_logged_values_of_every_layer(monitored_run, metric):
    _, monitor, log_dir = monitored_run
    scalars = read_scalars(log_dir)
    step, final = 4, {key: series[-1] for key, series in scalars.items() if key.startswith(f"weights.{metric}.")}
    assert len(final) == 28 and {s for s, _ in final.values()} == {step}  # the weights measured at step 4
    image = monitor.figures(step)[f"weights/heatmap/{metric}"].axes[0].images[0]
    assert image.get_clim() == ((0.0, 1.0) if metric == "energy@1" else (0.0, 4.0))  # colours 0–1, or 0–r
    grid = image.get_array()
    for key, (_, value) in final.items():
        layer, kind = key.partition("/")[2].removeprefix("layers.").split(".", 1)
        column = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].index(kind.split(".")[1])
        assert grid[int(layer), column] == pytest.approx(value, rel=1e-6)
    assert np.ptp(grid) > 0.05  # a trained update: the map varies across modules


def test_non_finite_factors_are_a_divergence_naming_step_and_layer(tmp_path):
    module = tiny_module()
    module.configure_model()
    monitor = LoRASpectrumMonitor()
    trainer = make_trainer(tmp_path)
    monitor.on_fit_start(trainer, module)
    with torch.no_grad():
        monitor.layers[5].A[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match=rf"step 0 in {monitor.layers[5].name}: LoRA factor A"):
        monitor.on_interval(trainer, module)


class PeftMLP(pl.LightningModule):
    """A non-Qwen module: a PEFT-wrapped two-layer MLP regressing random targets."""

    def __init__(self) -> None:
        super().__init__()
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        self.net = get_peft_model(net, LoraConfig(r=2, lora_alpha=2, target_modules=["0", "2"]))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)


def test_any_module_with_peft_lora_layers(tmp_path):
    data = torch.utils.data.TensorDataset(torch.randn(32, 8), torch.randn(32, 3))
    trainer = make_trainer(tmp_path, max_steps=4, callbacks=[LoRASpectrumMonitor(every_n_steps=2)])
    trainer.fit(PeftMLP(), torch.utils.data.DataLoader(data, batch_size=8))
    scalars = read_scalars(Path(trainer.log_dir))
    assert [s for s, _ in scalars["weights.energy@1.0/0"]] == [0, 2, 4]  # r = 2: ranks default to [1]
    assert "weights.effective_rank.2/2" in scalars


class InitializedAtTrainStart(PeftMLP):
    """Sets its LoRA factors in its own ``on_train_start``, as a data-driven initializer does."""

    def on_train_start(self):
        with torch.no_grad():
            for name, param in self.net.named_parameters():
                if "lora_B" in name:
                    param.fill_(0.5)


def test_the_starting_point_is_measured_after_the_modules_own_train_start(tmp_path):
    data = torch.utils.data.TensorDataset(torch.randn(16, 8), torch.randn(16, 3))
    trainer = make_trainer(tmp_path, max_steps=2, callbacks=[LoRASpectrumMonitor(every_n_steps=2)])
    trainer.fit(InitializedAtTrainStart(), torch.utils.data.DataLoader(data, batch_size=8))
    start = read_scalars(Path(trainer.log_dir))["weights/frobenius_norm/min"][0]
    assert start[0] == 0 and start[1] > 0  # not the B = 0 of PEFT's default: the factors the module set


def test_fails_fast_without_a_logger(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=1, logger=False, callbacks=[LoRASpectrumMonitor()])
    with pytest.raises(MisconfigurationException, match="needs a logger"):
        trainer.fit(
            PeftMLP(), torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 8), torch.randn(4, 3)))
        )


def test_fails_fast_without_lora_layers(tmp_path):
    module = PeftMLP()
    module.net = module.net.unload()  # the plain MLP, LoRA layers removed
    with pytest.raises(MisconfigurationException, match="no PEFT LoRA layers"):
        LoRASpectrumMonitor().on_fit_start(make_trainer(tmp_path), module)


@pytest.mark.parametrize("kwargs", [{"every_n_steps": 0}, {"ranks": []}, {"ranks": [0]}, {"figure_layers": 0}])
def test_invalid_arguments(kwargs):
    with pytest.raises(MisconfigurationException):
        LoRASpectrumMonitor(**kwargs)


def test_two_instances_have_distinct_state_keys():
    assert LoRASpectrumMonitor(every_n_steps=10).state_key != LoRASpectrumMonitor(every_n_steps=50).state_key
