"""The gradient of the task loss with respect to each frozen LoRA target weight, at the base weights, as its top SVD.

For a Linear layer y = W·x, the loss gradient over a batch is G = Σ_t δ_t·x_tᵀ, a sum over tokens t of the gradient
δ_t = ∂L/∂y_t at the layer's output and its input x_t. Hooks on every LoRA layer see both: a forward hook keeps x_t,
a hook on the output tensor receives δ_t in backward. Nothing else is differentiated: for the collection the LoRA
factors stop requiring gradients and the input embeddings' output starts to, so backward computes activation
gradients only; no weight, base or LoRA, gets a ``.grad`` (and a DDP wrapper's parameter hooks never fire).

Estimators:

- ``exact``: G accumulated densely per layer (out×in, float32, float64 for a float64 model), then its SVD: the
  reference, and PEFT's LoRA-GA memory (a weight-sized gradient per layer).
- ``sketch``: :class:`svdlora_pl.spectral.sketch.GradientSketch` per layer, O((out + in)·k) memory, one pass by
  default (more passes add power iterations, one forward and backward over the batches each). A layer whose dense
  gradient needs no more memory or no more arithmetic per token than its sketch
  (:func:`svdlora_pl.spectral.sketch.holds_dense`: every layer of the tiny model, none of Qwen2.5-7B) is held whole
  and decomposed exactly.

The result is the mean gradient over ``num_batches`` batches of every process (sketches or gradients are averaged
over the processes of a distributed run, so every rank gets the same factors). Under gradient checkpointing the
recomputed forward of a layer is recognized (its input from the first forward is still pending) and skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from svdlora_pl.lora.layers import LoRALayerRef, find_lora_layers
from svdlora_pl.spectral import FactoredSVD
from svdlora_pl.spectral.sketch import DenseGradient, GradientSketch, TestMatrices, holds_dense

Estimator = Literal["exact", "sketch"]


@dataclass
class TrainingBatches:
    """What a data-driven initializer may use of the fit it starts (given by ``QwenLoRAModule`` at fit start).

    Args:
        batches: ``batches(n)`` yields the first n training batches of this process, in the fit's own seeded order,
            already on the model's device; each call starts again from the first batch.
        loss: The fit's loss of one batch (its forward, under the fit's precision), a scalar to differentiate.
        mean: Averages a tensor over the processes of a distributed run (the identity on one process).
        input_embeddings: The model's input embedding module (its output is made to require gradients).
        broadcast: Rank zero's copy of a tensor on every process (the identity on one process): the final factors go
            through it, so ranks whose arithmetic differs in the last bit still start identical.
    """

    batches: Callable[[int], Iterator[Any]]
    loss: Callable[[Any], Tensor]
    mean: Callable[[Tensor], Tensor]
    input_embeddings: torch.nn.Module
    broadcast: Callable[[Tensor], Tensor] = lambda tensor: tensor  # noqa: E731


@dataclass
class GradientEstimate:
    """The top singular triplets of every layer's mean gradient, and what they cost.

    Args:
        svds: ``{module path: FactoredSVD}`` of G, ``rank`` triplets each (float64 from a sketch, the gradient's dtype
            from ``exact``).
        forward_backward: Forward and backward passes run (batches × passes).
        seconds: Wall time of the collection and the SVDs.
        accumulator_bytes: Memory held by the accumulators (dense gradients or sketches, and test matrices).
        layers_sketched: Layers estimated from a sketch (the others were held whole: exact).
    """

    svds: dict[str, FactoredSVD]
    forward_backward: int
    seconds: float
    accumulator_bytes: int
    layers_sketched: int = 0


class _Collector:
    """Hooks feeding each LoRA layer's (x, δ) pairs to ``update``; the collection-time gradient switches."""

    def __init__(self, layers: list[LoRALayerRef], update: Callable[[str, Tensor, Tensor], None]) -> None:
        self.layers, self.update = layers, update
        self.pending: dict[str, Tensor] = {}

    def _forward(self, name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
            if name in self.pending or not output.requires_grad:  # a recomputation (checkpointing), or no backward
                return
            self.pending[name] = args[0].detach()
            output.register_hook(lambda grad: self.update(name, self.pending.pop(name), grad.detach()))

        return hook

    def run(self, data: TrainingBatches, num_batches: int) -> None:
        """One forward and backward of each of the first ``num_batches`` batches, hooks on, no parameter gradients."""
        params = [p for ref in self.layers for p in (ref.A, ref.B)]
        was = [p.requires_grad for p in params]
        handles = [ref.layer.register_forward_hook(self._forward(ref.name)) for ref in self.layers]
        handles.append(data.input_embeddings.register_forward_hook(lambda m, a, out: out.requires_grad_(True)))
        try:
            for p in params:
                p.requires_grad_(False)
            with torch.enable_grad():
                for batch in data.batches(num_batches):
                    data.loss(batch).backward()
                    self.pending.clear()
        finally:
            for handle in handles:
                handle.remove()
            for p, requires in zip(params, was, strict=True):
                p.requires_grad_(requires)


def _accumulators(
    layers: list[LoRALayerRef], rank: int, estimator: Estimator, oversample: int, passes: int, seed: int
) -> tuple[dict[str, GradientSketch | DenseGradient], TestMatrices]:
    """One accumulator per layer: a sketch, or the dense gradient where :func:`holds_dense` (or ``exact`` is asked)."""
    dtype = torch.promote_types(layers[0].layer.get_base_layer().weight.dtype, torch.float32)
    device = layers[0].A.device
    matrices = TestMatrices(seed, device)
    accumulators: dict[str, GradientSketch | DenseGradient] = {}
    for ref in layers:
        out, inp = ref.B.shape[0], ref.A.shape[1]
        if estimator == "exact" or holds_dense(out, inp, rank, oversample, passes):
            accumulators[ref.name] = DenseGradient(out, inp, rank, dtype, device)
        else:
            accumulators[ref.name] = GradientSketch(out, inp, rank, matrices, oversample, passes)
    return accumulators, matrices


def _collect(
    model: torch.nn.Module,
    adapter: str,
    data: TrainingBatches,
    num_batches: int,
    rank: int,
    estimator: Estimator,
    oversample: int = 40,
    passes: int = 1,
    seed: int = 0,
) -> tuple[dict[str, GradientSketch | DenseGradient], int]:
    """Run the passes over the batches; the accumulators averaged over processes, and their bytes."""
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    layers = find_lora_layers(model, adapter)
    accumulators, matrices = _accumulators(layers, rank, estimator, oversample, passes, seed)
    collector = _Collector(layers, lambda name, x, delta: accumulators[name].update(x, delta))
    for index in range(passes):
        collector.run(data, num_batches)
        for accumulator in accumulators.values():
            accumulator.accumulators = {key: data.mean(value) for key, value in accumulator.accumulators.items()}
            if index + 1 < passes:
                accumulator.next_pass(1.0 / num_batches)
    return accumulators, sum(a.nbytes() for a in accumulators.values()) + matrices.nbytes()


def dense_gradients(model: torch.nn.Module, adapter: str, data: TrainingBatches, num_batches: int) -> dict[str, Tensor]:
    """The mean loss gradient of every LoRA layer's frozen weight, accumulated densely in the hooks (out×in each,
    float32, or float64 for a float64 model): ``{module path: G}``, averaged over batches and processes."""
    accumulators, _ = _collect(model, adapter, data, num_batches, rank=1, estimator="exact")
    return {name: accumulator.gradient(1.0 / num_batches) for name, accumulator in accumulators.items()}


def gradient_svds(
    model: torch.nn.Module,
    adapter: str,
    data: TrainingBatches,
    *,
    rank: int,
    num_batches: int,
    estimator: Estimator = "sketch",
    oversample: int = 40,
    passes: int = 1,
    seed: int = 0,
) -> GradientEstimate:
    """The top-``rank`` SVD of the mean loss gradient of every LoRA layer's frozen weight, at the current weights.

    Call it with a zero LoRA update (B = 0) to get the gradient at the base weights. See the module docstring.

    Args:
        model: A model holding PEFT LoRA layers.
        adapter: The adapter whose layers are measured.
        data: The batches and loss of the fit (:class:`TrainingBatches`).
        rank: Singular triplets per layer.
        num_batches: Batches of this process the gradient is averaged over.
        estimator: ``sketch`` (streamed, O((out + in)·k); a layer whose dense gradient needs no more memory or
            arithmetic than its sketch is held whole instead, exactly) or ``exact`` (dense, out×in per layer).
        oversample: Sketch size k = rank + oversample.
        passes: Passes over the batches (sketch only; 1: one-pass sketch, more: power iterations).
        seed: Seed of the sketches' test matrices.
    """
    started = time.perf_counter()
    accumulators, nbytes = _collect(model, adapter, data, num_batches, rank, estimator, oversample, passes, seed)
    svds = {name: accumulator.svd(1.0 / num_batches) for name, accumulator in accumulators.items()}
    forward_backward = num_batches * (1 if estimator == "exact" else passes)
    sketched = sum(isinstance(a, GradientSketch) for a in accumulators.values())
    return GradientEstimate(svds, forward_backward, time.perf_counter() - started, nbytes, sketched)
