"""Memory of a data-driven initialization phase (``GradientSVDInit``): the forward and backward passes that collect
the loss gradient of every LoRA target weight, before the first optimizer step.

What the phase holds on the device, beside the model:

- the frozen weights, buffers and LoRA parameters (no gradients: nothing requires one during the collection, and
  no optimizer state exists yet);
- the activations of one forward and backward, with the configured checkpointing, and the larger of the logits
  peak and one layer's backward (as in a training step);
- the accumulators: ``exact`` a dense float32 gradient per target module (out·in each; PEFT's ``lora_ga`` holds a
  ``weight.grad`` of the same size in the weights' dtype); ``sketch`` per module k·(out + in) + s² floats
  (k = rank + oversample, s = 2k + 1; one pass) or the range and basis of a multi-pass sketch, k·(out + in), and the
  test matrices shared by every module of one shape; a module too small to gain from a sketch is held dense;
- under gradient checkpointing, the inputs of the target modules held from the forward to their backward (a
  checkpointed layer would drop them): per layer the hidden state feeding q/k/v, the attention output feeding o, the
  hidden state feeding gate/up and the intermediate state feeding down, where those modules are targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from svdlora_pl.memory.activations import TrainingSetup, nbytes
from svdlora_pl.memory.architecture import Architecture, ParameterCounts
from svdlora_pl.memory.plan import MemoryPlan, device_total
from svdlora_pl.spectral.sketch import GradientSketch, holds_dense

FLOAT32 = 4


@dataclass(frozen=True)
class GradientInit:
    """The ``GradientSVDInit`` arguments that change memory (the rank it sketches: r, or 2r for ``lora_ga``)."""

    scheme: Literal["lora_one", "lora_ga"] = "lora_one"
    estimator: Literal["sketch", "exact"] = "sketch"
    oversample: int = 40
    passes: int = 1


@dataclass(frozen=True)
class InitPhasePlan:
    """Bytes of the initialization phase on one device; ``total`` adds the CUDA overhead (as a training step's)."""

    estimator: str
    accumulators: int
    test_matrices: int
    held_inputs: int
    peak: int
    total: int


def module_shapes(arch: Architecture, targets: tuple[str, ...]) -> list[tuple[int, int]]:
    """(out, in) of every LoRA target Linear of the model (all layers)."""
    shapes = {
        "q_proj": (arch.q_dim, arch.hidden), "k_proj": (arch.kv_dim, arch.hidden), "v_proj": (arch.kv_dim, arch.hidden),
        "o_proj": (arch.hidden, arch.q_dim), "gate_proj": (arch.intermediate, arch.hidden),
        "up_proj": (arch.intermediate, arch.hidden), "down_proj": (arch.hidden, arch.intermediate),
    }  # fmt: skip
    return [shapes[name] for name in targets if name in shapes] * arch.layers


def held_inputs(arch: Architecture, setup: TrainingSetup, targets: tuple[str, ...]) -> int:
    """Bytes of the target modules' inputs held between forward and backward under checkpointing (else 0)."""
    if not setup.gradient_checkpointing:
        return 0  # without checkpointing autograd keeps them anyway (the LoRA A branch needs them)
    widths = {("q_proj", "k_proj", "v_proj"): arch.hidden, ("o_proj",): arch.q_dim,
              ("gate_proj", "up_proj"): arch.hidden, ("down_proj",): arch.intermediate}  # fmt: skip
    per_token = sum(width for names, width in widths.items() if set(names) & set(targets))
    return per_token * setup.micro_batch * setup.seq_len * nbytes(setup.compute_dtype) * arch.layers


def accumulator_bytes(shapes: list[tuple[int, int]], rank: int, init: GradientInit) -> tuple[int, int]:
    """(accumulators, shared test matrices) in bytes for the given module shapes: dense where the collection holds
    the gradient whole (``exact``, or :func:`~svdlora_pl.spectral.sketch.holds_dense`), a sketch elsewhere."""
    accumulators, test = 0, {}
    for out, inp in shapes:
        if init.estimator == "exact" or holds_dense(out, inp, rank, init.oversample, init.passes):
            accumulators += out * inp * FLOAT32
            continue
        k = min(rank + init.oversample, out, inp)
        s = min(2 * k + 1, out, inp)
        accumulators += GradientSketch.floats(out, inp, rank, init.oversample, init.passes) * FLOAT32
        test[("omega", inp, k)] = inp * k
        if init.passes == 1:
            test.update({("upsilon", out, k): k * out, ("phi", out, s): s * out, ("psi", inp, s): s * inp})
    return accumulators, sum(test.values()) * FLOAT32


def plan_gradient_init(
    arch: Architecture, counts: ParameterCounts, setup: TrainingSetup, plan: MemoryPlan, init: GradientInit
) -> InitPhasePlan:
    """The initialization phase's bytes, from the training plan's static and activation parts (module docstring)."""
    assert setup.lora is not None, "a LoRA initializer needs LoRA"
    rank = setup.lora.r * (2 if init.scheme == "lora_ga" else 1)
    shapes = module_shapes(arch, setup.lora.targets)
    accumulators, test = accumulator_bytes(shapes, rank, init)
    held = held_inputs(arch, setup, setup.lora.targets)
    static = sum(plan.base_weights.values()) + plan.buffers + plan.trainable + plan.fsdp_gather
    peak = static + plan.activations + plan.transient + accumulators + test + held
    return InitPhasePlan(init.estimator, accumulators, test, held, peak, device_total(peak, setup.accelerator))


def gradient_init_of(initializer: Any) -> GradientInit | None:
    """The :class:`GradientInit` of a resolved ``model.initializer`` (``class_path`` mapping), or None for another."""
    if not isinstance(initializer, dict) or not str(initializer.get("class_path", "")).endswith("GradientSVDInit"):
        return None
    args = initializer.get("init_args") or {}
    fields = GradientInit.__dataclass_fields__
    return GradientInit(**{key: value for key, value in args.items() if key in fields})
