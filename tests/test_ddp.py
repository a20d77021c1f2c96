"""A 2-process CPU DDP run (gloo) through the ``svdlora`` command with the spectrum monitor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import read_scalars


def test_two_process_ddp_fit_logs_once_and_saves_one_adapter(tmp_path):
    command = [
        sys.executable,
        "-m",
        "svdlora_pl.cli",
        "fit",
        "-c",
        "configs/tiny.yaml",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.max_steps=6",
        "--trainer.limit_val_batches=2",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
        "--trainer.callbacks+=svdlora_pl.callbacks.LoRASpectrumMonitor",
        "--trainer.callbacks.every_n_steps=2",
        "--trainer.callbacks.ranks=[1,4]",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "lightning_logs").iterdir()
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert len(list(tmp_path.rglob("adapter_model.safetensors"))) == 1
    scalars = read_scalars(run_dir)
    assert [step for step, _ in scalars["spectrum/energy@4/mean"]] == [0, 2, 4, 6]
    assert len(scalars["train/loss"]) == 6
