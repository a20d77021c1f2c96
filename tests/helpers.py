"""Small shared pieces for the tests: a seeded tiny fit and a TensorBoard scalar reader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger


def make_trainer(root: Path, **overrides: Any) -> pl.Trainer:
    """A CPU fp32 trainer writing TensorBoard logs under ``root``; quiet, one log point per step."""
    options: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_epochs=1,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=TensorBoardLogger(root, name="lightning_logs"),
        default_root_dir=root,
    )
    options.update(overrides)
    return pl.Trainer(**options)


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the TensorBoard event files in ``log_dir``: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}
