"""2-process CPU DDP runs (gloo) through the ``svdlora`` command: one adapter, logs once, and the loss curve of a
single process with the same global batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import ROOT, TEACHER_TARGETS, read_scalars, teacher_file


def fit(root: Path, *args: str) -> Path:
    command = [
        sys.executable, "-m", "svdlora_pl.cli", "fit", "-c", "configs/tiny.yaml",
        "--trainer.max_steps=6", "--trainer.limit_val_batches=2", f"--trainer.default_root_dir={root}",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", *args,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (root / "lightning_logs").iterdir()
    return run_dir


def test_two_process_ddp_fit_logs_once_and_saves_one_adapter(tmp_path):
    run_dir = fit(
        tmp_path,
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.callbacks+=svdlora_pl.callbacks.LoRASpectrumMonitor",
        "--trainer.callbacks.every_n_steps=2",
        "--trainer.callbacks.ranks=[1,4]",
    )
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert len(list(tmp_path.rglob("adapter_model.safetensors"))) == 1
    scalars = read_scalars(run_dir)
    assert [step for step, _ in scalars["weights/energy@4/mean"]] == [0, 2, 4, 6]
    assert len(scalars["train/loss"]) == 6


def test_ddp_svd_init_matches_one_process_with_the_same_global_batch(tmp_path):
    factors, _ = teacher_file(tmp_path, 8)
    common = [
        f"--model.lora.target_modules=[{','.join(TEACHER_TARGETS)}]",
        "--model.lora.dropout=0.0",
        "--model.initializer=svdlora_pl.initializers.SVDTeacherInit",
        f"--model.initializer.factors={factors}",
        "--model.initializer.mode=residual",
        "--data.eval_batch_size=8",
    ]
    single = read_scalars(fit(tmp_path / "one", *common, "--data.batch_size=8"))
    ddp = read_scalars(
        fit(
            tmp_path / "two",
            *common,
            "--data.batch_size=4",
            "--data.eval_batch_size=4",  # 2 batches of 4 per rank: the same 16 samples as 2 batches of 8
            "--trainer.devices=2",
            "--trainer.strategy=ddp",
        )
    )
    one_loss = [value for _, value in single["train/loss"]]
    two_loss = [value for _, value in ddp["train/loss"]]
    assert len(one_loss) == len(two_loss) == 6
    # Same samples in every step; DDP averages the two ranks' per-token means where one process takes the mean
    # over all answer tokens, so the curves agree to the imbalance of answer lengths between the ranks' halves.
    for one, two in zip(one_loss, two_loss, strict=True):
        assert abs(one - two) <= 0.02 * one
    assert abs(one_loss[0] - two_loss[0]) <= 0.01 * one_loss[0]
    # step-0 validation: each rank takes every other sample, the synced mean equals one process over all 16
    assert abs(single["val/loss"][0][1] - ddp["val/loss"][0][1]) < 1e-4
