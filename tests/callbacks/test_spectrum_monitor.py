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
    monitor = LoRASpectrumMonitor(every_n_steps=2, ranks=[1, 4])
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
        f"spectrum/energy@4/{layer}",
        f"spectrum/recon_error@1/{layer}",
        "spectrum/effective_rank/mean",
        "spectrum/stable_rank/max",
        "spectrum/frobenius_norm/min",
        f"spectrum/spectral_norm/{layer}",
    ):
        assert key in scalars, key
    # 16 micro-batches / 4 = 4 optimizer steps; measured at step 0 (the start) and every 2 steps
    assert [step for step, _ in scalars["spectrum/energy@1/mean"]] == [0, 2, 4]
    assert len([k for k in scalars if k.startswith("spectrum/energy@1/layers.")]) == 4 * 7


def test_start_is_the_documented_zero_update_and_values_match_dense_svd(monitored_run):
    module, monitor, log_dir = monitored_run
    scalars = read_scalars(log_dir)
    layer = "layers.1.mlp.down_proj"
    first = {key: series[0][1] for key, series in scalars.items() if key.endswith(layer)}
    assert first[f"spectrum/energy@1/{layer}"] == 1.0 and first[f"spectrum/frobenius_norm/{layer}"] == 0.0
    (ref,) = [r for r in monitor.layers if r.name == f"model.{layer}"]
    delta = (ref.scaling * ref.B.detach().double() @ ref.A.detach().double()).numpy()
    sigma = np.linalg.svd(delta, compute_uv=False)
    last = {key: series[-1][1] for key, series in scalars.items() if key.endswith(layer)}
    assert last[f"spectrum/energy@1/{layer}"] == pytest.approx(sigma[0] ** 2 / (sigma**2).sum(), rel=1e-5)
    assert last[f"spectrum/spectral_norm/{layer}"] == pytest.approx(sigma[0], rel=1e-5)
    assert last[f"spectrum/stable_rank/{layer}"] == pytest.approx((sigma**2).sum() / sigma[0] ** 2, rel=1e-5)


def test_histograms_and_figures_reach_tensorboard(monitored_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    module, monitor, log_dir = monitored_run
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    assert {"spectrum_fig/energy@4", "spectrum_fig/spectra"} <= set(events.Tags()["images"])
    # the last histogram holds the singular values of the final update (measured after the last optimizer step)
    layer = "layers.0.self_attn.q_proj"
    (ref,) = [r for r in monitor.layers if r.name == f"model.{layer}"]
    sigma = np.linalg.svd((ref.scaling * ref.B.detach().double() @ ref.A.detach().double()).numpy(), compute_uv=False)
    histogram = events.Histograms(f"spectrum_sv/{layer}")[-1].histogram_value
    assert histogram.num == 4
    assert histogram.sum == pytest.approx(sigma[:4].sum(), rel=1e-6)
    assert histogram.max == pytest.approx(sigma[0], rel=1e-6) and histogram.min == pytest.approx(sigma[3], rel=1e-6)


def test_heat_map_shows_the_logged_energy_of_every_layer(monitored_run):
    _, monitor, log_dir = monitored_run
    scalars = read_scalars(log_dir)
    step, final = 4, {key: series[-1] for key, series in scalars.items() if key.startswith("spectrum/energy@4/layers.")}
    assert {s for s, _ in final.values()} == {step}  # the weights now are the ones measured at step 4
    image = monitor.figures(step)["spectrum_fig/energy@4"].axes[0].images[0].get_array()
    for key, (_, value) in final.items():
        layer, kind = key.removeprefix("spectrum/energy@4/layers.").split(".", 1)
        column = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].index(kind.split(".")[1])
        assert image[int(layer), column] == pytest.approx(value, rel=1e-6)


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
    trainer = make_trainer(tmp_path, max_steps=4, callbacks=[LoRASpectrumMonitor(every_n_steps=2, ranks=[1])])
    trainer.fit(PeftMLP(), torch.utils.data.DataLoader(data, batch_size=8))
    scalars = read_scalars(Path(trainer.log_dir))
    assert [s for s, _ in scalars["spectrum/energy@1/0"]] == [0, 2, 4]
    assert "spectrum/effective_rank/2" in scalars


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
