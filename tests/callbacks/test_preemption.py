"""SIGTERM during ``svdlora fit``: exit 143 with a checkpoint of the last optimizer step, and a resumed run that logs
exactly the losses of an uninterrupted one (gradient accumulation on, so the stop must wait for a step boundary)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import ROOT, read_scalars

from svdlora_pl.callbacks import PreemptionCheckpoint

ARGS = [
    "-c", "configs/tiny.yaml", "--trainer.max_steps=24", "--trainer.limit_val_batches=1",
    "--trainer.accumulate_grad_batches=2", "--data.batch_size=4", "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false", "--model.lora.dropout=0.1",  # dropout: the RNG state must resume too
]  # fmt: skip


def svdlora(*args: str, **kwargs) -> subprocess.Popen:
    command = [sys.executable, "-m", "svdlora_pl.cli", "fit", *ARGS, *args]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kwargs)


def losses(root: Path) -> dict[int, float]:
    (run,) = (root / "lightning_logs").iterdir()
    return dict(read_scalars(run)["train/loss"])


def test_sigterm_saves_a_checkpoint_exits_143_and_the_resumed_run_matches(tmp_path):
    interrupted = svdlora(
        f"--trainer.default_root_dir={tmp_path / 'a'}",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.every_n_train_steps=3",
        f"--trainer.callbacks.dirpath={tmp_path / 'a' / 'ckpt'}",
    )
    deadline = time.monotonic() + 300
    while not list((tmp_path / "a" / "ckpt").glob("*step=3.ckpt")):  # training is under way
        assert interrupted.poll() is None and time.monotonic() < deadline, interrupted.stderr.read()[-3000:]
        time.sleep(0.05)
    interrupted.send_signal(signal.SIGTERM)
    _, stderr = interrupted.communicate(timeout=300)
    assert interrupted.returncode == 143, stderr[-3000:]
    (checkpoint,) = (tmp_path / "a" / "ckpt").glob("preempted-step=*.ckpt")
    assert f"resume with --ckpt_path {checkpoint}" in stderr and "Traceback" not in stderr
    stopped_at = int(checkpoint.stem.rpartition("=")[2])
    assert 3 <= stopped_at < 24
    assert not list((tmp_path / "a").rglob("adapter_model.safetensors"))  # not a finished run

    resumed = svdlora(f"--trainer.default_root_dir={tmp_path / 'b'}", f"--ckpt_path={checkpoint}")
    whole = svdlora(f"--trainer.default_root_dir={tmp_path / 'c'}")
    for process in (resumed, whole):
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
    before, after, uninterrupted = losses(tmp_path / "a"), losses(tmp_path / "b"), losses(tmp_path / "c")
    assert sorted(before) == list(range(stopped_at)) and sorted(after) == list(range(stopped_at, 24))
    assert {**before, **after} == uninterrupted  # the same batches, dropout draws and optimizer: bit for bit
    assert list((tmp_path / "b").rglob("adapter_model.safetensors"))


def test_defaults_and_checkpoint_place(tmp_path):
    from helpers import make_trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    callback = PreemptionCheckpoint()
    assert not callback.requested and callback.filename == "preempted-step={step}.ckpt"
    trainer = make_trainer(tmp_path, callbacks=[ModelCheckpoint(dirpath=tmp_path / "here")])
    assert callback.checkpoint_path(trainer) == tmp_path / "here" / "preempted-step=0.ckpt"
    bare = make_trainer(tmp_path, enable_checkpointing=False)
    assert callback.checkpoint_path(bare) == Path(bare.log_dir) / "checkpoints" / "preempted-step=0.ckpt"
