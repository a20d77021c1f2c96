"""Preemption Checkpoint
=====================

On SIGTERM (a SLURM preemption, Kubernetes evicting a pod, ``kill``), finishes the optimizer step in progress, saves
a checkpoint of the run at that step, and stops the fit with :class:`~svdlora_pl.errors.Preempted`; ``svdlora``
then prints where the checkpoint is and exits with code 143 (128 + SIGTERM), so a supervisor sees a stopped run, not
a finished one. Resuming with ``--ckpt_path`` continues the run exactly: the same batches in the same order (the
training loader resumes mid-epoch), the same optimizer, scheduler and RNG states. At most the step in progress is
repeated; nothing is lost.

Without it, Lightning's own SIGTERM handling stops after the next micro-batch (possibly in the middle of a
gradient-accumulation step) without a checkpoint, and its exception exits with status 0. ``QwenLoRAModule`` adds this
callback itself (``configure_callbacks``); in another Lightning project::

    trainer:
      callbacks:
        - class_path: svdlora_pl.callbacks.PreemptionCheckpoint
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from svdlora_pl.errors import Preempted


class PreemptionCheckpoint(Callback):
    """Saves a checkpoint and stops at the first optimizer-step boundary after a SIGTERM.

    Under DDP the ranks agree at every step boundary whether any of them was signalled
    (``strategy.reduce_boolean_decision``), so all stop at the same step and save one checkpoint together.

    Args:
        filename: Checkpoint file name; ``{step}`` is the optimizer step it holds. It is written to the
            ``ModelCheckpoint`` callback's directory if there is one, else to ``<log_dir>/checkpoints``.
    """

    def __init__(self, filename: str = "preempted-step={step}.ckpt") -> None:
        self.filename = filename
        self.requested = False
        self.saved: Path | None = None
        self._last_step = -1
        self._previous: Any = None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After Lightning installs its own SIGTERM handler (which would stop mid-accumulation, with exit status 0).
        self._last_step = trainer.global_step
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self._last_step:  # an accumulation micro-batch: the step is not finished
            return
        self._last_step = trainer.global_step
        if self.saved is None and trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            self.saved = self.checkpoint_path(trainer)
            trainer.save_checkpoint(self.saved, weights_only=False)  # the whole state: optimizer, scheduler, loops

    # Stop once Lightning has written the step's logged values (after the batch-end hooks): at the next batch,
    # epoch end or validation, whichever comes first. A run whose last step it was simply finishes.
    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._stop(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop(trainer)

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop(trainer)

    def _stop(self, trainer: pl.Trainer) -> None:
        if self.saved is not None:
            raise Preempted(self.saved, trainer.global_step)

    def checkpoint_path(self, trainer: pl.Trainer) -> Path:
        """Where the checkpoint of the current step goes."""
        saver = trainer.checkpoint_callback
        directory = getattr(saver, "dirpath", None) or Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"
        return Path(directory) / self.filename.format(step=trainer.global_step)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)
        self._previous = None
