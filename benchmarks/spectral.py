"""Benchmark of issue 3: spectral metrics of a Qwen2.5-7B-shaped LoRA adapter, factored vs dense.

Run (from the repository root, with the package installed)::

    python benchmarks/spectral.py            # all four distinct shapes; dense SVD of the 18944-wide ones takes minutes
    python benchmarks/spectral.py --quick    # dense comparison for the 512×3584 and 3584×3584 shapes only

It prints, in one run, measured on this machine:

* the wall time of ``svdvals_of_modules`` for all 28 × 7 = 196 modules (best of 3), with its default single thread
  and with torch's thread count (many small QRs suffer from thread synchronization when the cores are busy);
* per distinct shape (one sample module each): the time of the factored singular values of that module
  (``factored_svdvals``, 1 thread, best of 5) and of dense float32 ``torch.linalg.svdvals`` of the formed ΔW (all
  threads, one run; for a wide ΔW also of ΔWᵀ, which can be much faster), their ratio against the faster dense run,
  and the largest relative disagreement max_{i≤r} |σᵢ − σᵢ_ref| / σᵢ_ref over the r non-zero singular values. The reference is numpy's float64 dense SVD where that is affordable (512×3584 and 3584×3584); for the 18944-wide
  shapes it is dense float32 ``svdvals``, itself accurate only to about float32 precision;
* the callback overhead: wall time of the tiny default fit (LoRA r=8, batch 8, fp32, CPU) without
  ``LoRASpectrumMonitor`` and with it at ``every_n_steps=10`` and 50, median of 3 interleaved runs, as ratios;
* one PASS/FAIL line per target of the issue. The exit code is 1 if a target fails.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from svdlora_pl.spectral import cpu_threads, factored_svdvals, svdvals_of_modules

# Qwen2.5-7B: hidden 3584, intermediate 18944, 28 heads of 128 with 4 key/value heads (k, v: 4·128 = 512 outputs).
QWEN25_7B_MODULES = {
    "self_attn.q_proj": (3584, 3584),
    "self_attn.k_proj": (512, 3584),
    "self_attn.v_proj": (512, 3584),
    "self_attn.o_proj": (3584, 3584),
    "mlp.gate_proj": (18944, 3584),
    "mlp.up_proj": (18944, 3584),
    "mlp.down_proj": (3584, 18944),
}  # (out, in) = (m, n)
N_LAYERS, RANK, ALPHA = 28, 16, 32
DECAY = 0.75  # column j of B is scaled by DECAY**j: σ_r/σ_1 ≈ 0.75**15 ≈ 0.013, a decaying, non-trivial spectrum
SMALL_SHAPES = {(512, 3584), (3584, 3584)}  # where a float64 dense reference is affordable (and --quick's sample)
TARGET_ALL_S, TARGET_SPEEDUP, TARGET_REL = 1.0, 1000.0, 1e-4
NOTES = """
factored: factored_svdvals of one module (float64, 1 thread, best of 5). dense f32: torch.linalg.svdvals of the formed
float32 ΔW (all threads, one run); dense f32ᵀ: the same on ΔWᵀ (wide shapes); speed-up against the faster dense run.
Relative disagreement: max over the r non-zero σᵢ of |σᵢ − σᵢ_ref| / σᵢ_ref; f64 = numpy float64 dense SVD; the
18944-wide shapes are compared with dense float32 only (a float64 dense SVD of them would take too long)."""


@dataclass
class Target:
    """One target of the issue: what was measured against which limit; ``passed`` is None when not measured."""

    name: str
    measured: str
    passed: bool | None

    def line(self) -> str:
        verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[self.passed]
        return f"{verdict}  {self.name}: {self.measured}"


def make_adapter(seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """Random float32 LoRA factors with the real shapes: B = G_B·diag(DECAY^j), A = G_A/√n, scale alpha/r."""
    g = torch.Generator().manual_seed(seed)
    decay = DECAY ** torch.arange(RANK, dtype=torch.float32)
    adapter = {}
    for layer in range(N_LAYERS):
        for module, (m, n) in QWEN25_7B_MODULES.items():
            B = torch.randn(m, RANK, generator=g) * decay
            A = torch.randn(RANK, n, generator=g) / n**0.5
            adapter[f"model.layers.{layer}.{module}"] = (B, A, ALPHA / RANK)
    return adapter


def wall_times(fn: Callable[[], object], repeat: int) -> list[float]:
    """Wall times of ``repeat`` calls of ``fn`` (seconds); the benchmark reports the best."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def max_rel(values: torch.Tensor | np.ndarray, ref: torch.Tensor | np.ndarray, r: int) -> float:
    """max_{i<r} |valuesᵢ − refᵢ| / refᵢ over the r leading (non-zero) singular values, in float64."""
    v, w = np.asarray(values, dtype=np.float64)[:r], np.asarray(ref, dtype=np.float64)[:r]
    return float(np.max(np.abs(v - w) / w))


def timed_svdvals(W: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Dense ``torch.linalg.svdvals(W)`` and its wall time (one run: the large ones take minutes)."""
    start = time.perf_counter()
    S = torch.linalg.svdvals(W)
    return S, time.perf_counter() - start


def bench_spectra(quick: bool = False) -> list[Target]:
    """Factored vs dense singular values of the 7B-shaped adapter; prints a table, returns the three targets."""
    adapter = make_adapter()
    print(
        f"Qwen2.5-7B-shaped LoRA adapter: {N_LAYERS} layers × {len(QWEN25_7B_MODULES)} modules = {len(adapter)}, "
        f"r={RANK}, float32 factors, alpha/r={ALPHA / RANK:g}; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"load average at start (other processes share the cores): {os.getloadavg()[0]:.2f}")
    runs = wall_times(lambda: svdvals_of_modules(adapter), repeat=3)
    t_all = min(runs)
    print(
        f"svdvals_of_modules, all {len(adapter)} modules (float64 QR core, 1 thread): best of 3 {t_all:.3f} s "
        f"(runs: {', '.join(f'{t:.3f}' for t in runs)} s)"
    )
    t_threads = min(wall_times(lambda: svdvals_of_modules(adapter, num_threads=None), repeat=3))
    print(f"  the same with torch's {torch.get_num_threads()} threads: best of 3 {t_threads:.3f} s\n")

    samples = {}  # one module (from layer 0) per distinct shape
    for module, shape in QWEN25_7B_MODULES.items():
        if shape not in samples.values() and (not quick or shape in SMALL_SHAPES):
            samples[module] = shape
    header = (
        f"{'shape (m×n)':<12} {'module':<10} {'factored':>10} {'dense f32':>10} {'dense f32ᵀ':>10} {'speed-up':>10} "
    )
    header += f"{'ours vs f64':>12} {'f32 vs f64':>11} {'ours vs f32':>12}"
    print(header + "\n" + "-" * len(header))
    speedup, rel_ours = {}, []
    for module, (m, n) in samples.items():
        B, A, scale = adapter[f"model.layers.0.{module}"]
        with cpu_threads(1):
            t_fact = min(wall_times(lambda B=B, A=A, scale=scale: factored_svdvals(B, A, scale), repeat=5))
        ours = factored_svdvals(B, A, scale)
        W = scale * (B @ A)  # float32 ΔW, formed only for the dense comparison
        dense32, t_dense = timed_svdvals(W)
        # σ(W) = σ(Wᵀ): for a wide W also time the tall orientation, and compare with the faster dense run
        t_tall = timed_svdvals(W.mT.contiguous())[1] if m < n else math.inf
        del W
        speedup[(m, n)] = min(t_dense, t_tall) / t_fact
        vs32 = max_rel(ours, dense32, RANK)
        if (m, n) in SMALL_SHAPES:
            ref64 = np.linalg.svd(scale * (B.double().numpy() @ A.double().numpy()), compute_uv=False)
            ours64, f32_64 = max_rel(ours, ref64, RANK), max_rel(dense32, ref64, RANK)
            rel_ours.append(ours64)
            cols = f"{ours64:>12.1e} {f32_64:>11.1e}"
        else:
            rel_ours.append(vs32)
            cols = f"{'—':>12} {'—':>11}"
        tall = f"{t_tall:>9.2f}s" if m < n else f"{'—':>10}"
        print(
            f"{f'{m}×{n}':<12} {module.split('.')[-1]:<10} {t_fact * 1e3:>8.2f}ms {t_dense:>9.2f}s {tall} "
            f"{speedup[(m, n)]:>9.0f}× {cols} {vs32:>12.1e}"
        )
    print(NOTES)
    print(f"load average at end: {os.getloadavg()[0]:.2f}\n")

    big = (3584, 18944)
    return [
        Target(f"all {len(adapter)} modules ≤ {TARGET_ALL_S:g} s", f"{t_all:.3f} s", t_all <= TARGET_ALL_S),
        Target(
            f"≥ {TARGET_SPEEDUP:.0f}× faster than dense on the 3584×18944 module",
            f"{speedup[big]:.0f}×" if big in speedup else "not measured (--quick)",
            speedup[big] >= TARGET_SPEEDUP if big in speedup else None,
        ),
        Target(
            f"singular values agree with dense to ≤ {TARGET_REL:g} relative",
            f"max {max(rel_ours):.1e} (vs float64 dense" + (")" if quick else "; vs float32 dense for 18944-wide)"),
            max(rel_ours) <= TARGET_REL,
        ),
    ]  # fmt: skip


def tiny_fit_seconds(callbacks: list, steps: int) -> float:
    """Wall time of the training loop (``on_train_start`` to ``on_train_end``) of the tiny default fit
    (LoRA r=8, batch 8, fp32 CPU) for ``steps`` optimizer steps; model loading and tokenization excluded."""
    import tempfile

    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    class LoopTimer(pl.Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.start = time.perf_counter()

        def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.seconds = time.perf_counter() - self.start

    from svdlora_pl.lora.settings import LoRASettings
    from svdlora_pl.training.datamodule import QADataModule
    from svdlora_pl.training.module import QwenLoRAModule

    pl.seed_everything(0, verbose=False)
    module = QwenLoRAModule(lora=LoRASettings(r=8, alpha=16, dropout=0.0), optimizer=torch.optim.AdamW)
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            precision="32-true",
            max_steps=steps,
            limit_val_batches=0,
            logger=TensorBoardLogger(root),
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            log_every_n_steps=1,
            callbacks=callbacks,
        )
        start = time.perf_counter()
        trainer.fit(module, QADataModule(batch_size=8))
        return time.perf_counter() - start


def bench_callback_overhead(quick: bool = False) -> list[Target]:
    """The tiny fit's training loop with and without LoRASpectrumMonitor; runs interleaved, median of 5 each."""
    from svdlora_pl.callbacks import LoRASpectrumMonitor

    steps = 50 if quick else 200
    settings: dict[str, Callable[[], list]] = {
        "without monitor": lambda: [],
        "every_n_steps=10": lambda: [LoRASpectrumMonitor(every_n_steps=10)],
        "every_n_steps=50": lambda: [LoRASpectrumMonitor(every_n_steps=50)],
    }
    tiny_fit_seconds([], 5)  # warm-up: builds the tiny model, first-call overheads
    times: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(5):
        for name, make in settings.items():
            times[name].append(tiny_fit_seconds(make(), steps))
    median = {name: sorted(values)[2] for name, values in times.items()}
    print(f"\ncallback overhead: tiny fit's training loop, {steps} optimizer steps, median of 5 interleaved runs")
    for name, seconds in median.items():
        print(f"  {name:18s} {seconds:7.2f} s   ratio {seconds / median['without monitor']:.3f}")
    overhead = {name: median[name] / median["without monitor"] - 1 for name in list(settings)[1:]}
    return [
        Target(
            "monitor overhead at every_n_steps=10 ≤ 5%",
            f"{overhead['every_n_steps=10']:+.1%}",
            overhead["every_n_steps=10"] <= 0.05,
        ),
        Target(
            "monitor overhead at every_n_steps=50 (default) ≤ 1%",
            f"{overhead['every_n_steps=50']:+.1%}",
            overhead["every_n_steps=50"] <= 0.01,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="dense comparison for the two smaller shapes only")
    args = parser.parse_args(argv)
    targets = bench_spectra(quick=args.quick)
    targets += bench_callback_overhead(quick=args.quick)
    print("targets:")
    for target in targets:
        print("  " + target.line())
    return 1 if any(t.passed is False for t in targets) else 0


if __name__ == "__main__":
    raise SystemExit(main())
