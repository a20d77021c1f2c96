"""MemoryMonitor: a real CPU fit (keys, cadence under accumulation, values against /proc), the CUDA path with the
torch.cuda readings replaced, the max over ranks, argument validation, no-logger failure."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from helpers import make_trainer, read_scalars
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from svdlora_pl.callbacks import MemoryMonitor
from svdlora_pl.callbacks.memory_monitor import current_rss_bytes, peak_rss_bytes

GIB = 2**30


class Regression(pl.LightningModule):
    """A linear model on random data: the monitor needs no LoRA layers."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(8, 3)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(batches: int) -> torch.utils.data.DataLoader:
    data = torch.utils.data.TensorDataset(torch.randn(4 * batches, 8), torch.randn(4 * batches, 3))
    return torch.utils.data.DataLoader(data, batch_size=4)


def proc_status_kib(field: str) -> int:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status, in KiB: a source independent of statm and getrusage."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE).group(1))


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    trainer = make_trainer(root, accumulate_grad_batches=2, callbacks=[MemoryMonitor(every_n_steps=1)])
    trainer.fit(Regression(), loader(8))  # 8 micro-batches / 2 = 4 optimizer steps
    return trainer, read_scalars(Path(trainer.log_dir))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_cpu_fit_logs_once_per_optimizer_step(cpu_run):
    trainer, scalars = cpu_run
    assert trainer.global_step == 4
    for key in ("memory/peak_rss_gib", "memory/rss_gib"):
        assert [step for step, _ in scalars[key]] == [1, 2, 3, 4], key
    assert not any(key.startswith("memory/peak_allocated") for key in scalars)
    hwm = proc_status_kib("VmHWM") * 1024 / GIB  # read after the fit: at least every logged peak
    for (_, peak), (_, rss) in zip(scalars["memory/peak_rss_gib"], scalars["memory/rss_gib"], strict=True):
        assert 0.05 < rss <= peak * 1.01 <= hwm * 1.01 + 1e-6  # a Python process with torch: tens of MiB at least
        assert peak < 256  # GiB: far beyond this machine, a unit error would show here


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_rss_readers_agree_with_proc_status():
    rss = current_rss_bytes() / 1024
    assert rss == pytest.approx(proc_status_kib("VmRSS"), rel=0.05)
    assert peak_rss_bytes() / 1024 == pytest.approx(proc_status_kib("VmHWM"), rel=0.05)


def test_interval_and_end_line(tmp_path, capsys):
    trainer = make_trainer(tmp_path, max_steps=5, callbacks=[MemoryMonitor(every_n_steps=2)])
    trainer.fit(Regression(), loader(8))
    scalars = read_scalars(Path(trainer.log_dir))
    assert [step for step, _ in scalars["memory/rss_gib"]] == [2, 4]
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.startswith("MemoryMonitor:")]
    peak = float(re.search(r"peak RSS ([\d.]+) GiB", line).group(1))
    assert peak >= max(v for _, v in scalars["memory/peak_rss_gib"]) - 0.01


def fake_trainer(device: str, world_size: int = 1, reduce=None) -> SimpleNamespace:
    """What the monitor reads from a Trainer; the logger records ``(metrics, step)``."""
    logged: list[tuple[dict[str, float], int]] = []
    logger = SimpleNamespace(log_metrics=lambda metrics, step: logged.append((dict(metrics), step)))
    strategy = SimpleNamespace(root_device=torch.device(device), reduce=reduce)
    return SimpleNamespace(
        loggers=[logger], strategy=strategy, global_step=0, is_global_zero=True, world_size=world_size, logged=logged
    )


def test_cuda_path_reads_the_allocator_and_resets_after_each_measurement(monkeypatch, capsys):
    readings = {"allocated": [3 * GIB, 5 * GIB, 4 * GIB], "reserved": [4 * GIB, 6 * GIB, 6 * GIB]}
    resets: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: readings["allocated"].pop(0))
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device: readings["reserved"].pop(0))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: GIB // 2)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: resets.append(device))
    trainer = fake_trainer("cuda:0")
    monitor = MemoryMonitor(every_n_steps=1)
    monitor.setup(trainer, None, "fit")
    monitor.on_train_start(trainer, None)
    assert resets == [torch.device("cuda:0")]
    for step in (1, 1, 2):  # the repeated step is an accumulation micro-batch: skipped
        trainer.global_step = step
        monitor.on_train_batch_end(trainer, None, None, None, 0)
    monitor.on_train_end(trainer, None)
    assert len(resets) == 4  # start, two measurements, the end
    assert trainer.logged == [
        ({"memory/peak_allocated_gib": 3.0, "memory/peak_reserved_gib": 4.0, "memory/allocated_gib": 0.5}, 1),
        ({"memory/peak_allocated_gib": 5.0, "memory/peak_reserved_gib": 6.0, "memory/allocated_gib": 0.5}, 2),
    ]
    assert "MemoryMonitor: peak allocated 5.00 GiB, peak reserved 6.00 GiB on cuda:0" in capsys.readouterr().out


def test_several_ranks_log_the_maximum(capsys):
    calls: list[str] = []

    def reduce(tensor: torch.Tensor, reduce_op: str) -> torch.Tensor:
        calls.append(reduce_op)
        return tensor * 2  # another rank holding twice as much

    trainer = fake_trainer("cpu", world_size=2, reduce=reduce)
    monitor = MemoryMonitor(every_n_steps=1)
    monitor.setup(trainer, None, "fit")
    monitor.on_train_start(trainer, None)
    trainer.global_step = 1
    rss_before = current_rss_bytes() / GIB
    monitor.on_train_batch_end(trainer, None, None, None, 0)
    monitor.on_train_end(trainer, None)
    assert calls == ["max", "max"]
    ((metrics, step),) = trainer.logged
    assert step == 1 and metrics["memory/rss_gib"] == pytest.approx(2 * rss_before, rel=0.05)
    assert "max over 2 ranks" in capsys.readouterr().out


@pytest.mark.parametrize("every_n_steps", [0, -1, 1.5, True, "10"])
def test_invalid_arguments(every_n_steps):
    with pytest.raises(MisconfigurationException, match="every_n_steps"):
        MemoryMonitor(every_n_steps=every_n_steps)


def test_fails_fast_without_a_logger(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=1, logger=False, callbacks=[MemoryMonitor()])
    with pytest.raises(MisconfigurationException, match="needs a logger"):
        trainer.fit(Regression(), loader(2))


def test_two_instances_have_distinct_state_keys():
    assert MemoryMonitor(every_n_steps=1).state_key != MemoryMonitor(every_n_steps=10).state_key
