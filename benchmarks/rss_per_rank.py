"""Benchmark: peak host memory (RSS) of every process of a multi-process ``svdlora fit`` on the CPU.

Run (from the repository root, with the package installed)::

    python benchmarks/rss_per_rank.py                       # 2 ranks, a 4-layer 1024-wide Qwen2 (~150 MB fp32)
    python benchmarks/rss_per_rank.py --hidden 2048 --layers 8 --ranks 2

Setup (not measured): a Qwen2 model of the given width and depth with seeded random weights and the tiny model's
tokenizer is written with ``save_pretrained`` (safetensors) to a temporary directory. Measured: ``svdlora fit -c
configs/tiny.yaml`` on that model with ``--trainer.devices=N --trainer.strategy=ddp`` (gloo) for a few optimizer
steps. Lightning starts rank 0 as the launched process and ranks 1.. as its subprocesses (``LOCAL_RANK`` in their
environment); every 50 ms the high-water mark (``VmHWM`` of ``/proc/PID/status``) of each process of the tree is read,
and the largest seen per rank is printed, with the weights' own size for scale. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_model(directory: Path, hidden: int, layers: int) -> int:
    """Save a seeded random Qwen2 of that shape with the tiny tokenizer; returns its weights' size in bytes."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from svdlora_pl.training.loading import load_tokenizer

    tokenizer = load_tokenizer("svdlora:tiny-qwen2")
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_hidden_layers=layers,
        num_attention_heads=hidden // 64, num_key_value_heads=max(1, hidden // 256), max_position_embeddings=1024,
        tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc/PID/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def high_water_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rank_of(pid: int) -> str | None:
    """``LOCAL_RANK`` of a launched rank, or None for a helper process (compile workers and the like)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"LOCAL_RANK="):
            return item.split(b"=", 1)[1].decode()
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size of the model")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers")
    parser.add_argument("--ranks", type=int, default=2, help="DDP processes")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        weights = build_model(model_dir, args.hidden, args.layers)
        command = [
            sys.executable, "-m", "svdlora_pl.cli", "fit", "-c", "configs/tiny.yaml",
            f"--model.model_name_or_path={model_dir}", f"--trainer.max_steps={args.steps}",
            "--trainer.limit_val_batches=1", f"--trainer.devices={args.ranks}", "--trainer.strategy=ddp",
            f"--trainer.default_root_dir={tmp}/run", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", "--data.max_length=128",
        ]  # fmt: skip
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peaks: dict[str, int] = {}
        while process.poll() is None:
            for pid in [process.pid, *children(process.pid)]:
                rank = "0" if pid == process.pid else rank_of(pid)
                kb = high_water_kb(pid)
                if rank is not None and kb is not None:
                    peaks[rank] = max(peaks.get(rank, 0), kb)
            time.sleep(0.05)
        if process.returncode != 0:
            sys.exit(f"fit failed ({process.returncode}): {process.stderr.read()[-2000:]}")
        seconds = time.perf_counter() - started
    print(f"model: Qwen2 {args.layers} layers x {args.hidden} wide, fp32 weights {weights / 1e9:.3f} GB")
    print(f"fit: {args.ranks} ranks (ddp, gloo), {args.steps} steps, {seconds:.1f} s")
    for rank in sorted(peaks, key=int):
        print(f"rank {rank}: peak RSS {peaks[rank] / 1e6:.3f} GB ({peaks[rank] * 1e3 / weights:.2f}x the weights)")


if __name__ == "__main__":
    main()
