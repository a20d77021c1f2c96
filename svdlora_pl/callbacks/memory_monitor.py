"""Memory Monitor
==============

Logs, during training, how much memory a run takes: on CUDA the peak of PyTorch's allocator over each interval of
optimizer steps, on CPU the process's resident set size. At the end of training it prints one line with the run's
peak, the number to compare with ``svdlora estimate-memory``.

Enable it in any LightningCLI run::

    trainer:
      callbacks:
        - class_path: svdlora_pl.callbacks.MemoryMonitor
          init_args:
            every_n_steps: 10
"""

from __future__ import annotations

import os
import sys

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from svdlora_pl.callbacks.step_monitor import OptimizerStepCallback

GIB = float(1 << 30)
CUDA_KEYS = ("memory/peak_allocated_gib", "memory/peak_reserved_gib", "memory/allocated_gib")
CPU_KEYS = ("memory/peak_rss_gib", "memory/rss_gib")


def current_rss_bytes() -> int | None:
    """Resident set size of this process now: ``/proc/self/statm`` (Linux), else psutil if installed, else None."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int | None:
    """High-water mark of this process's resident set size (``getrusage`` ru_maxrss); None where unavailable.

    The kernel never resets it: it is the peak since the process started, setup and earlier fits included.
    """
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux and BSD


class MemoryMonitor(OptimizerStepCallback):
    """Logs the memory of the training process every ``every_n_steps`` optimizer steps.

    Where the model runs on CUDA it reads PyTorch's caching allocator for that device; elsewhere (CPU, and also
    MPS) the process's resident memory. The CUDA peaks cover the interval since the previous measurement: the
    callback calls ``torch.cuda.reset_peak_memory_stats`` at the start of training and after each measurement
    (other code reading ``torch.cuda.max_memory_*`` during the fit sees these resets). The CPU peak cannot be
    reset: it is the process's high-water mark since it started, model loading and earlier fits included.

    With several processes (DDP) every rank measures its own device and the logged values are the maximum over
    ranks (``trainer.strategy.reduce(..., "max")``: one barrier and one all-reduce of a few numbers per
    measurement), the rank closest to running out of memory.

    Logged metrics (GiB = 2³⁰ bytes, at ``trainer.global_step`` after the optimizer step):

    - on CUDA: ``memory/peak_allocated_gib`` (``torch.cuda.max_memory_allocated`` since the previous measurement:
      tensors), ``memory/peak_reserved_gib`` (``torch.cuda.max_memory_reserved``: what the allocator held from
      the driver, tensors plus its cache; the CUDA context itself is not counted), ``memory/allocated_gib``
      (``torch.cuda.memory_allocated`` now, between steps: weights, gradients, optimizer states);
    - elsewhere: ``memory/peak_rss_gib`` (``getrusage`` ru_maxrss, the process's high-water mark; absent on
      Windows) and ``memory/rss_gib`` (resident set size now, from ``/proc/self/statm``, or psutil if installed).

    At the end of training, rank zero prints one line with the run's peak (CUDA: the largest peak allocated and
    reserved over all intervals, the last one included; CPU: the process's peak RSS).

    Args:
        every_n_steps: Interval in optimizer steps (gradient-accumulation micro-batches do not count); the peaks
            cover every step of the interval.
    """

    def __init__(self, every_n_steps: int = 10) -> None:
        super().__init__(every_n_steps)
        self.device: torch.device | None = None
        self.run_peak: dict[str, float] = {}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(every_n_steps=self.every_n_steps)

    @property
    def on_cuda(self) -> bool:
        return self.device is not None and self.device.type == "cuda"

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not trainer.loggers:
            raise MisconfigurationException(f"{type(self).__name__} needs a logger: the Trainer has none")
        self.device = trainer.strategy.root_device
        if not self.on_cuda and current_rss_bytes() is None and peak_rss_bytes() is None:
            raise MisconfigurationException(
                f"{type(self).__name__}: cannot read this process's memory here (no /proc, resource or psutil)"
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.run_peak = {}
        if self.on_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    @override
    def on_interval(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = self.measure(trainer)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.measure(trainer)  # the steps after the last logged measurement
        if not trainer.is_global_zero or not self.run_peak:
            return
        if self.on_cuda:
            line = (
                f"peak allocated {self.run_peak['memory/peak_allocated_gib']:.2f} GiB, "
                f"peak reserved {self.run_peak['memory/peak_reserved_gib']:.2f} GiB on {self.device}"
            )
        elif "memory/peak_rss_gib" in self.run_peak:
            line = f"peak RSS {self.run_peak['memory/peak_rss_gib']:.2f} GiB (process high-water mark)"
        else:
            line = f"largest measured RSS {self.run_peak['memory/rss_gib']:.2f} GiB"
        ranks = f", max over {trainer.world_size} ranks" if trainer.world_size > 1 else ""
        print(f"{type(self).__name__}: {line}{ranks}", flush=True)

    def measure(self, trainer: pl.Trainer) -> dict[str, float]:
        """Read this rank's memory, reduce to the maximum over ranks, fold into ``run_peak``; GiB by key.

        Every rank must call it at the same step (it is a collective under DDP).
        """
        if self.on_cuda:
            values = {
                CUDA_KEYS[0]: torch.cuda.max_memory_allocated(self.device),
                CUDA_KEYS[1]: torch.cuda.max_memory_reserved(self.device),
                CUDA_KEYS[2]: torch.cuda.memory_allocated(self.device),
            }
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            values = {CPU_KEYS[0]: peak_rss_bytes(), CPU_KEYS[1]: current_rss_bytes()}
        present = {key: float(value) for key, value in values.items() if value is not None}
        numbers = list(present.values())
        if trainer.world_size > 1:  # a collective; NCCL reduces CUDA tensors (and MPS has no float64)
            device = self.device if self.on_cuda else "cpu"
            local = torch.tensor(numbers, dtype=torch.float64, device=device)
            numbers = trainer.strategy.reduce(local, reduce_op="max").tolist()
        metrics = {key: value / GIB for key, value in zip(present, numbers, strict=True)}
        for key, value in metrics.items():
            self.run_peak[key] = max(self.run_peak.get(key, 0.0), value)
        return metrics
