"""Benchmark: what the gradient-SVD initializer (``GradientSVDInit``) costs, as ratios measured in one run.

Run (from the repository root, with the package installed)::

    python benchmarks/gradient_init.py                 # tiny model, 8 batches of 8, 5 interleaved repeats
    python benchmarks/gradient_init.py --repeats 3 --batches 4

Printed:

1. **Time** on the tiny model (CPU, fp32, one intra-op thread): collecting the gradient with ``estimator: sketch``
   over N training batches (``gradient_svds``, one pass, the SVDs included; the tiny layers are small enough that
   holding their gradients whole is cheaper than sketching them, ``holds_dense``) against N plain forward and backward passes of the same
   LoRA model on the same batches (the loss, ``backward()`` into the LoRA factors, no hooks). Median of interleaved
   repeats. Target: <= 1.3x.
2. **Memory** for one Qwen2.5-7B-shaped decoder layer (q, k, v, o, gate, up, down; r = 16): the sketches'
   accumulators (allocated, ``GradientSketch.nbytes``; the test matrices are shared by all 28 layers and counted
   once per model) against the weight gradients a PEFT-style collection materializes for the same seven weights,
   in bf16 (``weight.grad`` of a bf16 model) and in float32 (an exact float32 accumulation). Target: >= 20x less.
3. **The 7B reference config's plan** (``svdlora estimate-memory``, no download): the initialization phase of
   ``GradientSVDInit`` with the sketch and with the exact estimator, against the 32 GB budget.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

ROOT_CONFIG = "configs/qwen2.5-math-7b-32gb.yaml"
QWEN_7B = {"hidden": 3584, "intermediate": 18944, "kv": 512}


def tiny_timing(batches: int, batch_size: int, repeats: int) -> tuple[float, float, int, int]:
    """(median seconds of the sketch collection, median seconds of the plain passes) over ``batches`` batches, and
    (layers the collection holds whole, layers)."""
    from svdlora_pl.lora.gradients import TrainingBatches, gradient_svds
    from svdlora_pl.lora.layers import find_lora_layers
    from svdlora_pl.lora.settings import LoRASettings
    from svdlora_pl.spectral.sketch import holds_dense
    from svdlora_pl.training.datamodule import QADataModule
    from svdlora_pl.training.module import QwenLoRAModule

    torch.manual_seed(0)
    module = QwenLoRAModule(lora=LoRASettings(r=8, alpha=16.0, dropout=0.0))
    module.configure_model()
    with torch.no_grad():
        for ref in find_lora_layers(module.model):
            ref.B.zero_()
    data = QADataModule(batch_size=batch_size)
    data.setup("fit")
    loader = data.train_dataloader()
    fixed = [batch for _, batch in zip(range(batches), loader, strict=False)]
    source = TrainingBatches(
        batches=lambda n: iter(fixed[:n]), loss=module.loss, mean=lambda t: t,
        input_embeddings=module.hf_model().get_input_embeddings(),
    )  # fmt: skip

    def plain() -> None:
        for batch in fixed:
            module.loss(batch).backward()
        module.zero_grad(set_to_none=True)

    def sketch() -> None:
        gradient_svds(module.model, "default", source, rank=8, num_batches=batches)

    plain()
    sketch()  # warm-up: allocator, lazy imports
    times: dict[str, list[float]] = {"plain": [], "sketch": []}
    for _ in range(repeats):
        for name, run in (("plain", plain), ("sketch", sketch)):
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    layers = find_lora_layers(module.model)
    whole = sum(holds_dense(ref.B.shape[0], ref.A.shape[1], 8) for ref in layers)
    return statistics.median(times["sketch"]), statistics.median(times["plain"]), whole, len(layers)


def layer_memory(rank: int = 16, layers: int = 28) -> tuple[int, int, int, int]:
    """(sketch accumulator bytes of one 7B layer, its share of the test matrices, bf16 and fp32 gradient bytes)."""
    from svdlora_pl.spectral.sketch import GradientSketch, TestMatrices

    h, i, kv = QWEN_7B["hidden"], QWEN_7B["intermediate"], QWEN_7B["kv"]
    shapes = [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)]
    matrices = TestMatrices(seed=0)
    sketches = [GradientSketch(out, inp, rank, matrices) for out, inp in shapes]
    weights = sum(out * inp for out, inp in shapes)
    return sum(s.nbytes() for s in sketches), matrices.nbytes() // layers, 2 * weights, 4 * weights


def init_plans() -> dict[str, dict]:
    """The 7B reference config's initialization phase with each estimator."""
    from svdlora_pl.cli.lightning import resolve_fit_config
    from svdlora_pl.memory.estimate import estimate_memory

    plans = {}
    for estimator in ("sketch", "exact"):
        config = resolve_fit_config([
            "-c", ROOT_CONFIG, "--model.initializer=svdlora_pl.initializers.GradientSVDInit",
            f"--model.initializer.estimator={estimator}",
        ])  # fmt: skip
        plans[estimator] = estimate_memory(config)
    return plans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=8, help="training batches N")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per batch")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing repeats (median)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    sketch, plain, whole, layers = tiny_timing(args.batches, args.batch_size, args.repeats)
    print(f"1. tiny model, {args.batches} batches of {args.batch_size} (CPU, 1 thread, median of {args.repeats}):")
    print(
        f"   collection (estimator sketch, r = 8; {whole} of {layers} layers held whole, being cheaper than a sketch) "
        f"{sketch:.3f} s, plain forward+backward {plain:.3f} s: {sketch / plain:.2f}x (target <= 1.3x)"
    )

    accumulators, share, bf16, fp32 = layer_memory()
    held = accumulators + share
    print("2. one Qwen2.5-7B-shaped decoder layer, r = 16, oversample 40 (k = 56, s = 113):")
    print(f"   sketch {held / 1e6:.1f} MB ({accumulators / 1e6:.1f} MB accumulators + {share / 1e6:.2f} MB share of the"
          f" test matrices) vs weight gradients {bf16 / 1e6:.0f} MB in bf16: {bf16 / held:.1f}x less,"
          f" {fp32 / 1e6:.0f} MB in float32: {fp32 / held:.1f}x less (target >= 20x)")  # fmt: skip

    plans = init_plans()
    budget = plans["sketch"]["budget_bytes"]
    print(f"3. {ROOT_CONFIG} (bf16, micro-batch 1 x 1024, checkpointing), budget {budget / 1e9:.0f} GB:")
    print(f"   training step {plans['sketch']['plan']['total'] / 1e9:.2f} GB")
    for estimator, report in plans.items():
        init = report["init_phase"]
        verdict = "fits" if init["total"] <= budget else "does NOT fit"
        print(f"   initialization, {estimator}: {init['total'] / 1e9:.2f} GB ({verdict}; accumulators "
              f"{init['accumulators'] / 1e9:.2f} GB, held layer inputs {init['held_inputs'] / 1e9:.2f} GB)")  # fmt: skip


if __name__ == "__main__":
    main()
