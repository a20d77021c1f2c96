"""Benchmark: LoRA training steps of a Qwen2.5-7B-shaped model on one GPU — peak memory, tokens/s, MFU.

Run (from the repository root, with the package installed)::

    python benchmarks/gpu_7b.py                            # CUDA: micro-batch 1/2/4 × length 1024/2048 × checkpointing
    python benchmarks/gpu_7b.py --batch-sizes 1 2 --seq-lens 2048 --steps 10 --json gpu_7b.json
    python benchmarks/gpu_7b.py --preset tiny --device cpu --batch-sizes 2 --seq-lens 64 --steps 2   # smoke test

Without ``--device`` the benchmark runs on CUDA; when torch sees no CUDA device, the ``tiny`` preset falls back to
the CPU and any other preset stops with one line (the 7B shape is 30 GB in float32: ``--device cpu`` forces it).

The model is ``transformers.Qwen2ForCausalLM`` with Qwen2.5-7B's shape (hidden 3584, 28 layers, intermediate
18944, 28 heads, 4 key/value heads, vocabulary 152064, untied embeddings, rope_theta 10⁶) and random weights
(``initializer_range`` normal draws, seed 0), built directly on the device: nothing is downloaded. It is wrapped with
LoRA r=16 on all 7 linear projections (:func:`svdlora_pl.lora.settings.wrap_with_lora`, :class:`RandomInit`, dropout
0.05, the defaults of :class:`svdlora_pl.lora.settings.LoRASettings`); AdamW updates the LoRA factors (float32, PEFT's
``autocast_adapter_dtype``). Under ``bf16-mixed`` (the CUDA default, like ``configs/qwen2.5-math-7b-32gb.yaml``)
the frozen weights are bfloat16 and the forward and loss run under ``torch.autocast(dtype=torch.bfloat16)``, as
Lightning's ``bf16-mixed`` does; ``32-true`` (the CPU default) is float32 without autocast.

One step is, in Lightning's order: forward with the loss, zero the gradients, backward, ``optimizer.step()``. The
loss is :meth:`QwenLoRAModule.loss`'s: with ``--loss-chunk-tokens N`` (default 256, the 7B config's
``model.loss_chunk_tokens``) the decoder's hidden states at the supervised positions
(:func:`svdlora_pl.training.losses.supervised_positions`), then ``lm_head`` and cross-entropy N rows at a time, each chunk
recomputed in backward (:func:`svdlora_pl.training.losses.chunked_cross_entropy`); with 0, HF's causal-LM loss on
``labels`` over the full (B, T, V) logits. Gradient checkpointing is switched on as :class:`QwenLoRAModule` does it
(``gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})``, which also hooks the
embedding so that its output requires grad); switching it off also removes that hook
(``disable_input_require_grads``: transformers removes it only for a model with a PEFT config loaded into it, not
for a ``get_peft_model`` wrapper). The forward passes ``use_cache=False`` (a training step reads no KV cache).
Batches are random token ids; for micro-batch > 1 every sequence but the first ends with one padding position
(``attention_mask`` 0, label −100), so attention takes the masked path of a dynamically padded batch
(``--no-padding``: full sequences, no padding). Every label but the padding's is supervised. Each row reseeds
torch, runs ``--warmup`` steps then ``--steps`` timed ones, with a fresh optimizer; a row that runs out of memory
(``torch.cuda.OutOfMemoryError``, or a ``RuntimeError`` saying ``out of memory`` or
``CUBLAS_STATUS_ALLOC_FAILED``) prints ``OOM`` and the run goes on. On CPU, torch runs ``--threads`` intra-op
threads (default 1). ``--json PATH`` writes the rows and the run's metadata, rewritten (atomically) after every
row, so a run stopped by a time limit keeps the rows it finished.

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
      recompute      R   = R_c·[checkpointing] + R_l·[chunked loss]
                     R_c = 2·(N_f − N_h) + 2·N_l + 4·L·T·d   (checkpointing reruns each layer's forward)
                     R_l = 2·N_h                        (the chunked loss reruns lm_head in backward)
      MFU = tok/s · F / peak;   HFU = tok/s · (F + R) / peak

  Attention is counted without causal halving (the PaLM / Megatron convention); layer 0's q/k/v input gradient,
  which autograd skips (the embedding is frozen), is counted (about 0.1% of F for the 7B shape); ``lm_head`` is
  counted at every position although the chunked loss runs it only where a label is (1/T less). The peak is
  dense bf16 tensor-core FLOP/s, vendor spec, from :data:`PEAK_TFLOPS` by device name (``--peak-tflops``
  overrides it). MFU and HFU are skipped without a known peak (e.g. on CPU), on a MIG slice (a fraction of the
  GPU), and under ``32-true`` (float32 matmuls are not measured against the bf16 peak) unless ``--peak-tflops``
  is given;
* plan — the allocated peak predicted by :func:`svdlora_pl.memory.plan.plan_memory` for the same setup (loss chunk
  included; without its CUDA context and allocator slack), and measured/plan (CUDA only: on CPU the RSS also
  holds the interpreter and its libraries).

Below the table, with a peak: a reference throughput, torchtune's single-device LoRA recipe on Llama-3.1-8B at
3,083 tok/s on one RTX 4090 (165 TFLOP/s dense bf16; micro-batch 2, packed length 2048, ``torch.compile``,
activation checkpointing on), compared like with like. With F(shape, T) the model FLOPs per token above, the
reference's shape (Llama-3.1-8B: hidden 4096, 32 layers, intermediate 14336, 32 heads / 8 key/value heads of 128,
vocabulary 128256 untied) and LoRA counted as this benchmark's (r=16 on the 7 projections, under 1% of F)::

    reference MFU  = 3,083 · F(Llama-3.1-8B, 2048) / 165 TFLOP/s          (about 0.63: an optimistic bar)
    scaled         = 3,083 · (peak / 165) · F(Llama-3.1-8B, 2048) / F(this shape, 2048)

and the measured row at micro-batch 2, length 2048, checkpointing on against ``scaled`` ("not run" when that row
is not in the table or ran out of memory).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from svdlora_pl.callbacks.memory_monitor import current_rss_bytes, peak_rss_bytes
from svdlora_pl.io import atomic_write_text
from svdlora_pl.memory import presets as memory_presets
from svdlora_pl.spectral import cpu_threads
from svdlora_pl.training.losses import chunked_cross_entropy, supervised_positions

GIB = float(1 << 30)
SEED = 0
PRESETS: dict[str, dict[str, Any]] = {
    "qwen2.5-7b": {k: v for k, v in memory_presets.PRESETS["qwen2.5-7b"].items() if k != "model_type"},
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
    (("H200", "NVL"), "H200 NVL", 835.0),
    (("H100", "NVL"), "H100 NVL", 835.0),
    (("H200",), "H200", 989.0),
    (("H100", "PCIE"), "H100 PCIe", 756.0),
    (("H100", "HBM3"), "H100 SXM", 989.0),
    (("H100", "SXM"), "H100 SXM", 989.0),
    (("A100",), "A100", 312.0),
    (("RTX 4090",), "RTX 4090", 165.0),
    (("RTX 5090",), "RTX 5090", 209.0),
]
LORA_RANK = 16
DEFAULT_LOSS_CHUNK_TOKENS = 256  # configs/qwen2.5-math-7b-32gb.yaml: model.loss_chunk_tokens
# torchtune's LoRA recipe, Llama-3.1-8B on one RTX 4090: micro-batch 2, packed length 2048, compile, checkpointing
REFERENCE_TOKENS_PER_S, REFERENCE_TFLOPS = 3083.0, 165.0
REFERENCE_ROW = (2, 2048, True)  # (micro-batch, length, checkpointing) of the reference run
REFERENCE_CONFIG = {  # Llama-3.1-8B
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
}


def is_mig(device_name: str) -> bool:
    """Whether a CUDA device name is a MIG slice (``... MIG 3g.40gb``): a fraction of the GPU's compute."""
    return "MIG" in device_name.upper().split()


def peak_tflops(device_name: str) -> tuple[str, float] | None:
    """(table entry, dense bf16 TFLOP/s) of a CUDA device name such as ``NVIDIA H100 80GB HBM3``; None if unknown
    or a MIG slice."""
    upper = device_name.upper()
    if is_mig(device_name):
        return None
    for needles, label, tflops in PEAK_TFLOPS:
        if all(needle in upper for needle in needles):
            return label, tflops
    return None


def resolve_peak(explicit: float | None, device_name: str | None, mixed: bool) -> tuple[float | None, str]:
    """(peak TFLOP/s that MFU is taken against, or None: MFU skipped; where it comes from or why it is skipped).

    ``device_name`` is None off CUDA; ``mixed`` is ``bf16-mixed`` precision (the table's peaks are bf16).
    """
    if explicit:
        return explicit, "--peak-tflops"
    if device_name is None:
        return None, "unknown (MFU skipped)"
    if is_mig(device_name):
        return None, "none for a MIG slice, a fraction of the GPU (MFU skipped; --peak-tflops sets one)"
    known = peak_tflops(device_name)
    if known is None:
        return None, "unknown (MFU skipped)"
    if not mixed:
        return None, (
            f"not used: {known[0]}'s {known[1]:g} TFLOP/s is dense bf16 and this run is float32 "
            "(MFU skipped; --peak-tflops sets one)"
        )
    return known[1], f"{known[0]}, dense bf16, vendor spec"


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


def flops_per_token(shape: Shape, seq_len: int, checkpointing: bool, chunked: bool = False) -> tuple[float, float]:
    """(model FLOPs F, hardware FLOPs F + R) per token; ``chunked``: the chunked loss; see the module docstring."""
    attention = 4 * shape.layers * seq_len * shape.attention
    model = 4 * shape.frozen + 6 * shape.lora + 3 * attention
    recompute = 2 * (shape.frozen - shape.head) + 2 * shape.lora + attention
    hardware = model + (recompute if checkpointing else 0) + (2 * shape.head if chunked else 0)
    return float(model), float(hardware)


def reference_shape(config: dict[str, int] | None = None) -> Shape:
    """The :class:`Shape` of a HF-style config (default Llama-3.1-8B's, :data:`REFERENCE_CONFIG`) with this
    benchmark's LoRA, r=16 on 7 projections."""
    config = REFERENCE_CONFIG if config is None else config
    hidden, inter, layers = (config[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers"))
    head_dim = hidden // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head_dim
    # (in, out) of q, k, v, o, gate, up, down
    linears = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden), (hidden, inter), (hidden, inter)]
    linears.append((inter, hidden))
    head = hidden * config["vocab_size"]
    frozen = layers * sum(a * b for a, b in linears) + head
    lora = layers * LORA_RANK * sum(a + b for a, b in linears)
    return Shape(frozen, head, lora, layers, config["num_attention_heads"] * head_dim)


def reference_comparison(shape: Shape, peak: float, measured: float | None) -> dict[str, float | None]:
    """The reference's implied MFU on its RTX 4090, its tok/s scaled to ``peak`` and this shape, and ``measured``
    (tok/s of the reference's row here, None: not run) over the scaled value; formulas in the module docstring."""
    seq_len, checkpointing = REFERENCE_ROW[1], REFERENCE_ROW[2]
    reference_flops = flops_per_token(reference_shape(), seq_len, checkpointing)[0]
    own_flops = flops_per_token(shape, seq_len, checkpointing)[0]
    scaled = REFERENCE_TOKENS_PER_S * (peak / REFERENCE_TFLOPS) * (reference_flops / own_flops)
    return {
        "reference_tokens_per_s": REFERENCE_TOKENS_PER_S,
        "reference_tflops": REFERENCE_TFLOPS,
        "reference_mfu": REFERENCE_TOKENS_PER_S * reference_flops / (REFERENCE_TFLOPS * 1e12),
        "flops_ratio": reference_flops / own_flops,
        "scaled_tokens_per_s": scaled,
        "measured_tokens_per_s": measured,
        "measured_over_scaled": None if measured is None else measured / scaled,
    }


def reference_lines(comparison: dict[str, float | None], peak: float) -> list[str]:
    """The printed reference comparison of :func:`reference_comparison`."""
    c = comparison
    batch, seq_len, _ = REFERENCE_ROW
    measured = c["measured_tokens_per_s"]
    verdict = "not run" if measured is None else f"{measured:,.0f} tok/s = {c['measured_over_scaled']:.2f}× scaled"
    return [
        f"reference: torchtune LoRA, Llama-3.1-8B, 1× RTX 4090 (batch {batch}, packed length {seq_len}, "
        f"torch.compile, checkpointing on): {REFERENCE_TOKENS_PER_S:,.0f} tok/s = MFU {c['reference_mfu']:.2f} "
        f"of {REFERENCE_TFLOPS:g} TFLOP/s (an optimistic bar; F counted as here, LoRA r={LORA_RANK} on 7 projections)",
        f"scaled: {REFERENCE_TOKENS_PER_S:,.0f} × {peak:g}/{REFERENCE_TFLOPS:g} × F(Llama-3.1-8B, T={seq_len})"
        f"/F(this shape, T={seq_len}) = {REFERENCE_TOKENS_PER_S:,.0f} × {peak / REFERENCE_TFLOPS:.4g} × "
        f"{c['flops_ratio']:.4g} = {c['scaled_tokens_per_s']:,.0f} tok/s; "
        f"measured (batch {batch}, length {seq_len}, checkpointing on): {verdict}",
    ]


def build_model(config: Any, device: torch.device, dtype: torch.dtype) -> tuple[torch.nn.Module, Shape]:
    """The randomly initialized causal LM on ``device`` in ``dtype``, LoRA-wrapped, and its :class:`Shape`."""
    from transformers import AutoModelForCausalLM

    from svdlora_pl.lora.initializers import RandomInit
    from svdlora_pl.lora.settings import LoRASettings, wrap_with_lora

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
    """Switch gradient checkpointing of the PEFT-wrapped ``model``, with exactly one embedding hook while on.

    ``gradient_checkpointing_enable`` registers a hook making the embedding output require grad and forgets any
    earlier one; ``gradient_checkpointing_disable`` removes it only when a PEFT config is loaded into the model
    itself, not for a ``get_peft_model`` wrapper. Both cases are handled here.
    """
    base = model.get_base_model()
    base.disable_input_require_grads()  # the hook of an earlier enable, which transformers forgets or keeps
    if enabled:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_disable()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compute_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], chunk: int) -> torch.Tensor:
    """:meth:`QwenLoRAModule.loss`: the chunked answer-token loss with ``chunk`` rows, or (0) the model's own."""
    if chunk == 0:
        return model(**batch, use_cache=False).loss
    base = model.get_base_model()
    hidden = base.get_decoder()(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state
    hidden, targets = supervised_positions(hidden, batch["labels"])
    return chunked_cross_entropy(hidden, targets, base.get_output_embeddings(), chunk)


def run_steps(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], warmup: int, steps: int, autocast: bool, chunk: int = 0
) -> tuple[float, float]:
    """(seconds of the ``steps`` timed steps after ``warmup`` untimed ones, the first step's loss); a fresh AdamW
    over the LoRA factors; ``chunk``: see :func:`compute_loss`."""
    device = batch["input_ids"].device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    context = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    start = 0.0
    first = torch.zeros(())
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        with context:
            loss = compute_loss(model, batch, chunk)
        if step == 0:
            first = loss.detach()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(device)
    return time.perf_counter() - start, float(first)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a device allocation failure: CUDA's OOM error, or a RuntimeError naming one."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in message or "CUBLAS_STATUS_ALLOC_FAILED" in message)


def measure_row(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], args: argparse.Namespace, autocast: bool
) -> dict[str, float] | None:
    """Time, memory and first loss of one configuration; None when the device ran out of memory."""
    device = batch["input_ids"].device
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    oom = False
    torch.manual_seed(SEED)  # the same dropout masks for a row whatever ran before it
    try:
        seconds, first_loss = run_steps(model, batch, args.warmup, args.steps, autocast, args.loss_chunk_tokens)
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
        oom = True
    if oom:  # outside the except block: the traceback and the tensors it holds are gone
        for p in model.parameters():
            p.grad = None
        gc.collect()
        if device.type == "cuda":
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
        "loss": first_loss,
    }


def make_planner(
    config: Any, mixed: bool, accelerator: str, loss_chunk_tokens: int = 0
) -> tuple[Callable[[int, int, bool], float] | None, str]:
    """A function (micro-batch, length, checkpointing) -> allocated peak in GiB predicted by
    :mod:`svdlora_pl.memory.plan` for this benchmark's setup (``loss_chunk_tokens`` 0: full logits), or None and
    the reason the column is skipped."""
    try:
        from svdlora_pl.lora.settings import LoRASettings
        from svdlora_pl.memory import LoRASpec, TrainingSetup, count_parameters, plan_memory

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
                loss_chunk_tokens=loss_chunk_tokens or None,
            )
            return plan_memory(arch, counts, setup).peak / GIB

        planned(1, 1, False)  # fail here, not in the table, if the API does not fit
    except (ImportError, AttributeError, TypeError, ValueError) as error:
        return None, f"plan column skipped: svdlora_pl.memory.plan does not fit ({type(error).__name__}: {error})"
    return planned, ""


def row_numbers(
    row: dict[str, float] | None,
    shape: Shape,
    seq_len: int,
    ckpt: bool,
    peak: float | None,
    plan: float | None,
    cuda: bool,
    chunked: bool = False,
) -> dict[str, float | None]:
    """MFU, HFU (fractions of ``peak``) and measured/plan of a row; None where not measured."""
    numbers: dict[str, float | None] = {"mfu": None, "hfu": None, "ratio": None}
    if row is not None and peak:
        model_flops, hardware_flops = flops_per_token(shape, seq_len, ckpt, chunked)
        numbers["mfu"] = row["tok_s"] * model_flops / (peak * 1e12)
        numbers["hfu"] = row["tok_s"] * hardware_flops / (peak * 1e12)
    if row is not None and plan is not None and cuda:
        numbers["ratio"] = row["mem1"] / plan
    return numbers


def row_cells(numbers: dict[str, float | None], plan: float | None) -> dict[str, str]:
    """:func:`row_numbers` and the plan of a row as printed ("—" where not measured)."""
    mfu, hfu, ratio = numbers["mfu"], numbers["hfu"], numbers["ratio"]
    return {
        "mfu": "—" if mfu is None else f"{mfu:.1%}",
        "hfu": "—" if hfu is None else f"{hfu:.1%}",
        "plan": "—" if plan is None else f"{plan:.3g}",
        "ratio": "—" if ratio is None else f"{ratio:.3f}",
    }


def row_record(
    batch: int,
    seq_len: int,
    ckpt: bool,
    row: dict[str, float] | None,
    numbers: dict[str, float | None],
    plan: float | None,
    cuda: bool,
) -> dict[str, Any]:
    """One row for ``--json``: its setting, measurements (None: out of memory), MFU, HFU and plan."""
    memory = ("peak_allocated_gib", "peak_reserved_gib") if cuda else ("peak_rss_gib", "rss_gib")
    names = {
        "mem1": memory[0],
        "mem2": memory[1],
        "s_step": "s_per_step",
        "tok_s": "tokens_per_s",
        "loss": "first_loss",
    }
    measured = {out: None if row is None else row[key] for key, out in names.items()}
    setting = {"batch": batch, "seq_len": seq_len, "checkpointing": ckpt, "oom": row is None}
    flops = {"mfu": numbers["mfu"], "hfu": numbers["hfu"]}
    return {**setting, **measured, **flops, "plan_gib": plan, "measured_over_plan": numbers["ratio"]}


def write_json(path: str | None, metadata: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Write ``{**metadata, "rows": rows}`` to ``path`` atomically (nothing without ``--json``)."""
    if path is not None:
        atomic_write_text(path, json.dumps({**metadata, "rows": rows}, indent=1) + "\n")


def format_row(batch: int, seq_len: int, ckpt: bool, row: dict[str, float] | None, cells: dict[str, str]) -> str:
    """One printed table row (``OOM`` in place of the measurements when the row ran out of memory)."""
    head = f"{batch:>5} {seq_len:>6} {'on' if ckpt else 'off':>5}"
    if row is None:
        measured = f"{'OOM':>10} {'':>10} {'':>9} {'':>10} {'':>6} {'':>6}"
    else:
        measured = (
            f"{row['mem1']:>10.2f} {row['mem2']:>10.2f} {row['s_step']:>9.4g} {row['tok_s']:>10,.0f} "
            f"{cells['mfu']:>6} {cells['hfu']:>6}"
        )
    return f"{head} {measured} {cells['plan']:>9} {cells['ratio']:>10}"


def non_negative_int(text: str) -> int:
    """argparse type: an integer ≥ 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or positive, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="qwen2.5-7b", help="model shape")
    parser.add_argument(
        "--device",
        default=None,
        help="torch device (default: cuda; without CUDA only the tiny preset falls back to cpu)",
    )
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
    parser.add_argument(
        "--loss-chunk-tokens",
        type=non_negative_int,
        default=DEFAULT_LOSS_CHUNK_TOKENS,
        help=f"rows per chunk of the chunked answer-token loss (default {DEFAULT_LOSS_CHUNK_TOKENS}, as "
        "configs/qwen2.5-math-7b-32gb.yaml); 0: the model's own loss over full logits",
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="device peak for MFU (default: table, bf16-mixed only)"
    )
    parser.add_argument("--no-padding", action="store_true", help="full sequences without padding positions")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU intra-op threads (default 1: on a busy 2-core machine 2 threads made the tiny smoke test "
        "100x slower; 0: torch's default)",
    )
    parser.add_argument(
        "--json", default=None, metavar="PATH", help="write rows and metadata here, rewritten after every row"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the benchmark; 0 on success."""
    args = build_parser().parse_args(argv)
    # transformers 5 renames gradient_checkpointing_* (the calls QwenLoRAModule makes) with a FutureWarning
    with warnings.catch_warnings(), cpu_threads(args.threads or None):
        warnings.filterwarnings("ignore", message=".*checkpointing.*deprecated", category=FutureWarning)
        return run(args)


def choose_device(requested: str | None, preset: str) -> torch.device:
    """``requested``, else CUDA; without CUDA the tiny preset falls back to the CPU and others stop (one line)."""
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if preset == "tiny":
        return torch.device("cpu")
    raise SystemExit(
        f"no CUDA device (torch {torch.__version__}, torch.version.cuda {torch.version.cuda}): the {preset} preset "
        "is not built on the CPU by default; use --preset tiny, or --device cpu to force it"
    )


def check_args(args: argparse.Namespace) -> None:
    """Stop with one line on arguments no row can run with."""
    if min(args.batch_sizes + args.seq_lens) < 1 or args.steps < 1 or args.warmup < 0:
        raise SystemExit("batch sizes, sequence lengths and --steps must be positive, --warmup non-negative")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        raise SystemExit(f"--peak-tflops must be positive, got {args.peak_tflops:g}")
    if args.json is not None and Path(args.json).is_dir():
        raise SystemExit(f"--json {args.json}: is a directory, give a file path")


def run(args: argparse.Namespace) -> int:
    """The benchmark of the parsed arguments: header, one row per configuration, notes."""
    import transformers
    from transformers import Qwen2Config

    check_args(args)
    device = choose_device(args.device, args.preset)
    cuda = device.type == "cuda"
    precision = args.precision or ("bf16-mixed" if cuda else "32-true")
    mixed = precision == "bf16-mixed"
    chunk = args.loss_chunk_tokens
    name = torch.cuda.get_device_name(device) if cuda else None
    peak, peak_source = resolve_peak(args.peak_tflops, name, mixed)
    config = Qwen2Config(**PRESETS[args.preset])
    start = time.perf_counter()
    torch.manual_seed(SEED)
    model, shape = build_model(config, device, torch.bfloat16 if mixed else torch.float32)
    synchronize(device)
    print_header(args, config, model, shape, device, name or "CPU", precision, peak, peak_source)
    print(f"built in {time.perf_counter() - start:.1f} s", flush=True)
    print_table_header(cuda)
    planner, note = make_planner(config, mixed, "gpu" if cuda else "cpu", chunk)
    metadata = {
        "benchmark": "benchmarks/gpu_7b.py",
        "device": str(device),
        "device_name": name or "CPU",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "peak_tflops": peak,
        "peak_source": peak_source,
        "precision": precision,
        "preset": args.preset,
        "shape": PRESETS[args.preset],
        "flops_counts": {**asdict(shape), "lora_rank": LORA_RANK},
        "loss_chunk_tokens": chunk,
        "padded": not args.no_padding,
        "warmup": args.warmup,
        "steps": args.steps,
    }
    records: list[dict[str, Any]] = []
    write_json(args.json, metadata, records)
    measured: dict[tuple[int, int, bool], float | None] = {}
    for seq_len in args.seq_lens:
        for batch_size in args.batch_sizes:
            batch = make_batch(batch_size, seq_len, config.vocab_size, not args.no_padding, device)
            for ckpt in (True, False):
                set_checkpointing(model, ckpt)
                row = measure_row(model, batch, args, mixed)
                plan = planner(batch_size, seq_len, ckpt) if planner else None
                measured[(batch_size, seq_len, ckpt)] = row["tok_s"] if row else None
                numbers = row_numbers(row, shape, seq_len, ckpt, peak, plan, cuda, chunk > 0)
                print(format_row(batch_size, seq_len, ckpt, row, row_cells(numbers, plan)), flush=True)
                records.append(row_record(batch_size, seq_len, ckpt, row, numbers, plan, cuda))
                write_json(args.json, metadata, records)
    print(
        "\nMFU = tok/s · (4·N_f + 6·N_l + 12·L·T·d) / peak; HFU adds the recompute 2·(N_f − N_h) + 2·N_l + 4·L·T·d "
        f"with checkpointing and 2·N_h with the chunked loss (N_f = {shape.frozen:,}, N_h = {shape.head:,}, "
        f"N_l = {shape.lora:,}, L = {shape.layers}, d = {shape.attention})"
    )
    if cuda:
        print("plan: memory_plan's allocated peak (no CUDA context or allocator slack); meas/plan = peak alloc / plan")
    else:
        print("memory: process RSS (interpreter and libraries included; ru_maxrss is never reset); meas/plan skipped")
    if note:
        print(note)
    if peak:
        comparison = reference_comparison(shape, peak, measured.get(REFERENCE_ROW))
        print("\n".join(reference_lines(comparison, peak)))
        write_json(args.json, {**metadata, "reference": comparison}, records)
    return 0


def print_header(
    args: argparse.Namespace,
    config: Any,
    model: torch.nn.Module,
    shape: Shape,
    device: torch.device,
    name: str,
    precision: str,
    peak: float | None,
    peak_source: str,
) -> None:
    """Print what runs where: the model, the software, the device, its peak and the loss."""
    import transformers

    frozen = sum(p.numel() for p in model.parameters()) - shape.lora
    chunk = args.loss_chunk_tokens
    print(
        f"LoRA training steps: {args.preset} shape ({config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"intermediate {config.intermediate_size}, {config.num_attention_heads}/{config.num_key_value_heads} heads, "
        f"vocab {config.vocab_size}), random weights, {frozen:,} frozen + {shape.lora:,} LoRA parameters "
        f"(r={LORA_RANK}, 7 projections), AdamW"
    )
    print(
        f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
        f"device {device} ({name}), precision {precision}, peak "
        + (f"{peak:g} TFLOP/s ({peak_source})" if peak else peak_source)
        + f"; {args.warmup} warmup + {args.steps} timed steps per row"
        + ("; unpadded batches" if args.no_padding else "; micro-batch > 1 padded by one position")
    )
    print(
        f"loss: chunked, {chunk} answer-token rows per lm_head + cross-entropy chunk (--loss-chunk-tokens {chunk})"
        if chunk
        else "loss: the model's own over full (B, T, V) logits (--loss-chunk-tokens 0)"
    )


def print_table_header(cuda: bool) -> None:
    """Print the table's two header lines and its rule."""
    mem = ("peak alloc", "peak resv") if cuda else ("peak RSS", "RSS")
    header = (
        f"{'batch':>5} {'seq':>6} {'ckpt':>5} {mem[0]:>10} {mem[1]:>10} {'s/step':>9} {'tok/s':>10} "
        f"{'MFU':>6} {'HFU':>6} {'plan GiB':>9} {'meas/plan':>10}"
    )
    print(f"{'':>18} {'GiB':>10} {'GiB':>10}\n{header}\n{'-' * len(header)}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
