"""Benchmark: LoRA training steps of a Qwen2.5-7B-shaped model on one GPU — peak memory, tokens/s, MFU.

Run (from the repository root, with the package installed)::

    python benchmarks/gpu_7b.py                            # CUDA: micro-batch 1/2/4 × length 1024/2048 × checkpointing
    python benchmarks/gpu_7b.py --batch-sizes 1 2 --seq-lens 2048 --steps 10
    python benchmarks/gpu_7b.py --preset tiny --device cpu --batch-sizes 2 --seq-lens 64 --steps 2   # smoke test

The model is ``transformers.Qwen2ForCausalLM`` with Qwen2.5-7B's shape (hidden 3584, 28 layers, intermediate
18944, 28 heads, 4 key/value heads, vocabulary 152064, untied embeddings, rope_theta 10⁶) and random weights
(``initializer_range`` normal draws), built directly on the device: nothing is downloaded. It is wrapped with
LoRA r=16 on all 7 linear projections (:func:`svdlora_pl.lora.wrap_with_lora`, :class:`RandomInit`, dropout
0.05, the defaults of :class:`svdlora_pl.lora.LoRASettings`); AdamW updates the LoRA factors (float32, PEFT's
``autocast_adapter_dtype``). Under ``bf16-mixed`` (the CUDA default, like ``configs/qwen2.5-math-7b-32gb.yaml``)
the frozen weights are bfloat16 and the forward and loss run under ``torch.autocast(dtype=torch.bfloat16)``, as
Lightning's ``bf16-mixed`` does; ``32-true`` (the CPU default) is float32 without autocast.

One step is, in Lightning's order: forward with the loss (HF's causal-LM loss on ``labels``), zero the
gradients, backward, ``optimizer.step()``. Gradient checkpointing is switched as :class:`QwenLoRAModule` does it
(``gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})``). The forward passes
``use_cache=False`` (a training step reads no KV cache). Batches are random token ids; for micro-batch > 1 every
sequence but the first ends with one padding position (``attention_mask`` 0, label −100), so attention takes the
masked path of a dynamically padded batch (``--no-padding``: full sequences, no mask). Each row runs ``--warmup``
steps then ``--steps`` timed ones, with a fresh optimizer; an out-of-memory row prints ``OOM``. On CPU, torch
runs ``--threads`` intra-op threads (default 1).

Columns:

* memory — CUDA: ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` over the row's steps (peaks reset
  and the allocator's cache emptied before each row; the CUDA context is not included). CPU: the process's peak
  RSS (``getrusage`` ru_maxrss — a high-water mark that cannot be reset, so a row shows the maximum so far) and
  its RSS after the row;
* tok/s — B·T positions per second over the timed steps (padding positions are computed, so counted);
* MFU and HFU — achieved FLOP/s over the device's peak. Per token of a sequence of length T, with N_f the
  weights of the frozen matmuls (the 7 projections of every layer and ``lm_head``; the embedding is a lookup),
  N_h those of ``lm_head``, N_l the LoRA parameters, L layers and d = heads·head_dim::

      model FLOPs    F   = 2·N_f + 2·N_l               forward
                         + 2·N_f + 4·N_l               backward: input gradients (frozen: no weight gradient;
                                                       LoRA: input and weight gradients)
                         + 3 · 4·L·T·d                 attention QKᵀ and A·V (2·T·d each), forward + 2× backward
                     F   = 4·N_f + 6·N_l + 12·L·T·d
      recompute      R   = 2·(N_f − N_h) + 2·N_l + 4·L·T·d   (checkpointing reruns each layer's forward)
      MFU = tok/s · F / peak;   HFU = tok/s · (F + R·[checkpointing]) / peak

  Attention is counted without causal halving (the PaLM / Megatron convention); layer 0's q/k/v input gradient,
  which autograd skips (the embedding is frozen), is counted (about 0.1% of F for the 7B shape). The peak is
  dense bf16 tensor-core FLOP/s, vendor spec, from :data:`PEAK_TFLOPS` by device name (``--peak-tflops``
  overrides it); without a known peak (e.g. on CPU) MFU is skipped;
* plan — the allocated peak predicted by :func:`svdlora_pl.memory_plan.plan_memory` for the same setup (without
  its CUDA context and allocator slack), and measured/plan (CUDA only: on CPU the RSS also holds the interpreter
  and its libraries).

Below the table: a reference throughput, torchtune's single-device LoRA recipe at 3,083 tok/s for a 7-8B model on
an RTX 4090-class card (165 TFLOP/s), scaled to this device by peak FLOP/s (reference × peak / 165), and the best
measured tok/s against it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from svdlora_pl import memory_plan
from svdlora_pl.callbacks.memory_monitor import current_rss_bytes, peak_rss_bytes
from svdlora_pl.spectral import cpu_threads

GIB = float(1 << 30)
PRESETS: dict[str, dict[str, Any]] = {
    "qwen2.5-7b": {k: v for k, v in memory_plan.PRESETS["qwen2.5-7b"].items() if k != "model_type"},
    "tiny": {  # the same architecture, small enough for a CPU smoke test
        "hidden_size": 64,
        "intermediate_size": 176,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 256,
        "max_position_embeddings": 4096,
        "rope_theta": 1e6,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
    },
}
PEAK_TFLOPS: list[tuple[tuple[str, ...], str, float]] = [  # dense bf16, vendor spec; first match wins
    (("H200",), "H200", 989.0),
    (("H100", "PCIE"), "H100 PCIe", 756.0),
    (("H100", "HBM3"), "H100 SXM", 989.0),
    (("H100", "SXM"), "H100 SXM", 989.0),
    (("A100",), "A100", 312.0),
    (("RTX 4090",), "RTX 4090", 165.0),
    (("RTX 5090",), "RTX 5090", 209.0),
]
REFERENCE_TOKENS_PER_S, REFERENCE_TFLOPS = 3083.0, 165.0  # torchtune LoRA, 7-8B model, RTX 4090-class card
LORA_RANK = 16


def peak_tflops(device_name: str) -> tuple[str, float] | None:
    """(table entry, dense bf16 TFLOP/s) of a CUDA device name such as ``NVIDIA H100 80GB HBM3``; None if unknown."""
    upper = device_name.upper()
    for needles, label, tflops in PEAK_TFLOPS:
        if all(needle in upper for needle in needles):
            return label, tflops
    return None


@dataclass(frozen=True)
class Shape:
    """What the FLOPs formula needs: parameter counts of the matmuls and the attention width."""

    frozen: int
    """N_f: weights of the frozen matmuls (every ``nn.Linear`` of the base, ``lm_head`` included)."""
    head: int
    """N_h: weights of ``lm_head``."""
    lora: int
    """N_l: LoRA parameters."""
    layers: int
    attention: int
    """d = heads · head_dim."""


def flops_per_token(shape: Shape, seq_len: int, checkpointing: bool) -> tuple[float, float]:
    """(model FLOPs F, hardware FLOPs F + R·[checkpointing]) per token; formulas in the module docstring."""
    attention = 4 * shape.layers * seq_len * shape.attention
    model = 4 * shape.frozen + 6 * shape.lora + 3 * attention
    recompute = 2 * (shape.frozen - shape.head) + 2 * shape.lora + attention
    return float(model), float(model + (recompute if checkpointing else 0))


def build_model(config: Any, device: torch.device, dtype: torch.dtype) -> tuple[torch.nn.Module, Shape]:
    """The randomly initialized causal LM on ``device`` in ``dtype``, LoRA-wrapped, and its :class:`Shape`."""
    from transformers import AutoModelForCausalLM

    from svdlora_pl.initializers import RandomInit
    from svdlora_pl.lora import LoRASettings, wrap_with_lora

    with torch.device(device):
        base = AutoModelForCausalLM.from_config(config, dtype=dtype)
    frozen = sum(m.weight.numel() for m in base.modules() if isinstance(m, torch.nn.Linear))
    head = base.get_output_embeddings().weight.numel()
    model = wrap_with_lora(base, LoRASettings(r=LORA_RANK), RandomInit(), "random-weight Qwen2").train()
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    shape = Shape(frozen, head, lora, config.num_hidden_layers, config.num_attention_heads * head_dim)
    return model, shape


def make_batch(batch: int, seq_len: int, vocab: int, padded: bool, device: torch.device) -> dict[str, torch.Tensor]:
    """Random token ids; with ``padded`` every sequence but the first ends with one padding position."""
    generator = torch.Generator().manual_seed(batch * 100_003 + seq_len)
    input_ids = torch.randint(0, vocab, (batch, seq_len), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    if padded and batch > 1:
        attention_mask[1:, -1] = 0
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    batch_tensors = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    return {key: value.to(device) for key, value in batch_tensors.items()}


def set_checkpointing(model: torch.nn.Module, enabled: bool) -> None:
    base = model.get_base_model()
    if enabled:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_disable()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_steps(model: torch.nn.Module, batch: dict[str, torch.Tensor], warmup: int, steps: int, autocast: bool) -> float:
    """Seconds of the ``steps`` timed steps after ``warmup`` untimed ones; a fresh AdamW over the LoRA factors."""
    device = batch["input_ids"].device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    context = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        with context:
            loss = model(**batch, use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(device)
    return time.perf_counter() - start


def measure_row(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], args: argparse.Namespace, autocast: bool
) -> dict[str, float] | None:
    """Time and memory of one configuration; None when CUDA ran out of memory."""
    device = batch["input_ids"].device
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    oom = False
    try:
        seconds = run_steps(model, batch, args.warmup, args.steps, autocast)
    except torch.cuda.OutOfMemoryError:
        oom = True
    if oom:  # outside the except block: the traceback and the tensors it holds are gone
        for p in model.parameters():
            p.grad = None
        gc.collect()
        torch.cuda.empty_cache()
        return None
    if device.type == "cuda":
        memory = (torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device))
    else:
        memory = (peak_rss_bytes() or 0, current_rss_bytes() or 0)
    tokens = batch["input_ids"].numel() * args.steps
    return {
        "mem1": memory[0] / GIB,
        "mem2": memory[1] / GIB,
        "s_step": seconds / args.steps,
        "tok_s": tokens / seconds,
    }


def make_planner(config: Any, mixed: bool, accelerator: str) -> tuple[Callable[[int, int, bool], float] | None, str]:
    """A function (micro-batch, length, checkpointing) -> allocated peak in GiB predicted by
    :mod:`svdlora_pl.memory_plan` for this benchmark's setup, or None and the reason the column is skipped."""
    try:
        from svdlora_pl.lora import LoRASettings
        from svdlora_pl.memory_plan import LoRASpec, TrainingSetup, count_parameters, plan_memory

        settings = LoRASettings(r=LORA_RANK)
        spec = LoRASpec(r=settings.r, dropout=settings.dropout, targets=tuple(settings.target_modules))
        arch, counts = count_parameters(config, spec)

        def planned(batch: int, seq_len: int, checkpointing: bool) -> float:
            setup = TrainingSetup(
                micro_batch=batch,
                seq_len=seq_len,
                base_dtype="bfloat16" if mixed else "float32",
                trainable_dtype="float32",
                autocast_dtype="bfloat16" if mixed else None,
                lora=spec,
                gradient_checkpointing=checkpointing,
                optimizer_states=2,
                accelerator=accelerator,
            )
            return plan_memory(arch, counts, setup).peak / GIB

        planned(1, 1, False)  # fail here, not in the table, if the API does not fit
    except (ImportError, AttributeError, TypeError, ValueError) as error:
        return None, f"plan column skipped: svdlora_pl.memory_plan does not fit ({type(error).__name__}: {error})"
    return planned, ""


def row_cells(
    row: dict[str, float] | None,
    shape: Shape,
    seq_len: int,
    ckpt: bool,
    peak: float | None,
    plan: float | None,
    cuda: bool,
) -> dict[str, str]:
    """MFU, HFU, plan and measured/plan of a row as printed ("—" where not measured)."""
    cells = {"mfu": "—", "hfu": "—", "plan": "—" if plan is None else f"{plan:.3g}", "ratio": "—"}
    if row is not None and peak:
        model_flops, hardware_flops = flops_per_token(shape, seq_len, ckpt)
        cells["mfu"] = f"{row['tok_s'] * model_flops / (peak * 1e12):.1%}"
        cells["hfu"] = f"{row['tok_s'] * hardware_flops / (peak * 1e12):.1%}"
    if row is not None and plan is not None and cuda:
        cells["ratio"] = f"{row['mem1'] / plan:.3f}"
    return cells


def format_row(batch: int, seq_len: int, ckpt: bool, row: dict[str, float] | None, cells: dict[str, str]) -> str:
    head = f"{batch:>5} {seq_len:>6} {'on' if ckpt else 'off':>5}"
    if row is None:
        measured = f"{'OOM':>10} {'':>10} {'':>9} {'':>10} {'':>6} {'':>6}"
    else:
        measured = (
            f"{row['mem1']:>10.2f} {row['mem2']:>10.2f} {row['s_step']:>9.4g} {row['tok_s']:>10,.0f} "
            f"{cells['mfu']:>6} {cells['hfu']:>6}"
        )
    return f"{head} {measured} {cells['plan']:>9} {cells['ratio']:>10}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="qwen2.5-7b", help="model shape")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4], help="micro-batch sizes")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 2048], help="sequence lengths")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per row before timing")
    parser.add_argument(
        "--precision",
        choices=["bf16-mixed", "32-true"],
        default=None,
        help="bf16 weights under bf16 autocast, or float32 (default: bf16-mixed on CUDA, 32-true elsewhere)",
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: table)")
    parser.add_argument("--no-padding", action="store_true", help="full sequences without an attention mask")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU intra-op threads (default 1: on a busy 2-core machine 2 threads made the tiny smoke test "
        "100x slower; 0: torch's default)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # transformers 5 renames gradient_checkpointing_* (the calls QwenLoRAModule makes) with a FutureWarning
    with warnings.catch_warnings(), cpu_threads(args.threads or None):
        warnings.filterwarnings("ignore", message=".*checkpointing.*deprecated", category=FutureWarning)
        return run(args)


def run(args: argparse.Namespace) -> int:
    """The benchmark of the parsed arguments: header, one row per configuration, notes."""
    from transformers import Qwen2Config

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if min(args.batch_sizes + args.seq_lens) < 1 or args.steps < 1 or args.warmup < 0:
        raise SystemExit("batch sizes, sequence lengths and --steps must be positive, --warmup non-negative")
    cuda = device.type == "cuda"
    precision = args.precision or ("bf16-mixed" if cuda else "32-true")
    mixed = precision == "bf16-mixed"
    config = Qwen2Config(**PRESETS[args.preset])
    start = time.perf_counter()
    model, shape = build_model(config, device, torch.bfloat16 if mixed else torch.float32)
    synchronize(device)
    peak = print_header(args, config, model, shape, device, precision, time.perf_counter() - start)
    planner, note = make_planner(config, mixed, "gpu" if cuda else "cpu")
    best = 0.0
    for seq_len in args.seq_lens:
        for batch_size in args.batch_sizes:
            batch = make_batch(batch_size, seq_len, config.vocab_size, not args.no_padding, device)
            for ckpt in (True, False):
                set_checkpointing(model, ckpt)
                row = measure_row(model, batch, args, mixed)
                plan = planner(batch_size, seq_len, ckpt) if planner else None
                best = max(best, row["tok_s"]) if row else best
                cells = row_cells(row, shape, seq_len, ckpt, peak, plan, cuda)
                print(format_row(batch_size, seq_len, ckpt, row, cells), flush=True)
    print(
        "\nMFU = tok/s · (4·N_f + 6·N_l + 12·L·T·d) / peak; HFU adds the recompute 2·(N_f − N_h) + 2·N_l + 4·L·T·d "
        f"with checkpointing (N_f = {shape.frozen:,}, N_h = {shape.head:,}, N_l = {shape.lora:,}, "
        f"L = {shape.layers}, d = {shape.attention})"
    )
    if cuda:
        print("plan: memory_plan's allocated peak (no CUDA context or allocator slack); meas/plan = peak alloc / plan")
    else:
        print("memory: process RSS (interpreter and libraries included; ru_maxrss is never reset); meas/plan skipped")
    if note:
        print(note)
    if peak:
        scaled = REFERENCE_TOKENS_PER_S * peak / REFERENCE_TFLOPS
        print(
            f"reference: torchtune LoRA, 7-8B model, RTX 4090-class card: {REFERENCE_TOKENS_PER_S:,.0f} tok/s; "
            f"scaled by peak FLOP/s: {REFERENCE_TOKENS_PER_S:,.0f} × {peak:g} / {REFERENCE_TFLOPS:g} = "
            f"{scaled:,.0f} tok/s; best measured {best:,.0f} tok/s = {best / scaled:.2f}× the scaled reference"
        )
    return 0


def print_header(
    args: argparse.Namespace,
    config: Any,
    model: torch.nn.Module,
    shape: Shape,
    device: torch.device,
    precision: str,
    built: float,
) -> float | None:
    """Print what runs where and the table header; returns the device's peak TFLOP/s (None: unknown)."""
    import transformers

    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    known = peak_tflops(name) if cuda else None
    peak = args.peak_tflops or (known[1] if known else None)
    source = "--peak-tflops" if args.peak_tflops else (f"{known[0]}, dense bf16, vendor spec" if known else "")
    frozen = sum(p.numel() for p in model.parameters()) - shape.lora
    print(
        f"LoRA training steps: {args.preset} shape ({config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"intermediate {config.intermediate_size}, {config.num_attention_heads}/{config.num_key_value_heads} heads, "
        f"vocab {config.vocab_size}), random weights, {frozen:,} frozen + {shape.lora:,} LoRA parameters "
        f"(r={LORA_RANK}, 7 projections), AdamW; built in {built:.1f} s"
    )
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, device {device} ({name}), "
        f"precision {precision}, peak "
        + (f"{peak:g} TFLOP/s ({source})" if peak else "unknown (MFU skipped)")
        + f"; {args.warmup} warmup + {args.steps} timed steps per row"
        + ("; unpadded batches" if args.no_padding else "; micro-batch > 1 padded by one position")
    )
    mem = ("peak alloc", "peak resv") if cuda else ("peak RSS", "RSS")
    header = (
        f"{'batch':>5} {'seq':>6} {'ckpt':>5} {mem[0]:>10} {mem[1]:>10} {'s/step':>9} {'tok/s':>10} "
        f"{'MFU':>6} {'HFU':>6} {'plan GiB':>9} {'meas/plan':>10}"
    )
    print(f"{'':>18} {'GiB':>10} {'GiB':>10}\n{header}\n{'-' * len(header)}", flush=True)
    return peak


if __name__ == "__main__":
    raise SystemExit(main())
