"""Data-driven LoRA initialization inside a fit: the training batches an initializer sees, and the starting factors a
residual scheme leaves in checkpoints.

``QwenLoRAModule`` calls :func:`initialize_at_fit_start` at the start of a fresh LoRA fit, after ``configure_model``
and before the step-0 validation and the first optimizer step: it runs a data-driven initializer's pass (e.g.
``GradientSVDInit``) and logs what the initialization cost. A residual data-driven scheme (LoRA-GA) rewrote the frozen base from data no checkpoint holds, so its
starting factors B₀, A₀ travel in every checkpoint (:func:`save_initial_factors`) and rebuild that base when a run is
resumed or loaded (:func:`restore_initial_factors`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.utilities import move_data_to_device
from torch.utils.data import DataLoader

from svdlora_pl.lora.gradients import TrainingBatches
from svdlora_pl.lora.layers import find_lora_layers
from svdlora_pl.lora.residual import snapshot_factors
from svdlora_pl.lora.settings import ADAPTER_NAME

if TYPE_CHECKING:
    from svdlora_pl.training.module import QwenLoRAModule

CHECKPOINT_KEY = "initial_factors"
log = logging.getLogger(__name__)


def training_batches(module: QwenLoRAModule) -> TrainingBatches:
    """The fit's first training batches (this process's shard, epoch 0's seeded order), loss and process mean.

    The batches come from a loader of its own over the training loader's dataset, sampler and collate function, so
    the fit's loader (and the position it keeps for resuming) is untouched.
    """
    trainer = module.trainer
    source = trainer.train_dataloader
    if not isinstance(source, DataLoader):
        raise TypeError(f"a data-driven initializer needs one training DataLoader, got {type(source).__name__}")

    def batches(count: int) -> Iterator[Any]:
        loader = DataLoader(
            source.dataset, batch_size=source.batch_size, sampler=source.sampler, collate_fn=source.collate_fn
        )
        for index, batch in enumerate(loader):
            if index == count:
                return
            yield move_data_to_device(batch, module.device)

    def loss(batch: Any) -> torch.Tensor:
        with trainer.precision_plugin.train_step_context():
            return module.loss(batch)

    return TrainingBatches(
        batches=batches,
        loss=loss,
        mean=lambda tensor: trainer.strategy.reduce(tensor, reduce_op="mean"),
        input_embeddings=module.hf_model().get_input_embeddings(),
        broadcast=broadcast_from_rank_zero,
    )


def broadcast_from_rank_zero(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as rank zero has it, on every process (in place; unchanged without a process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        tensor = tensor.contiguous()
        torch.distributed.broadcast(tensor, src=0)
    return tensor


def initialize_at_fit_start(module: QwenLoRAModule) -> None:
    """Run a data-driven initializer's pass and keep a residual's start; log what the initialization cost
    (``weights/init/*`` at step 0: a data-free initializer's seconds are those of ``configure_model``'s LoRA set-up)."""
    if not module.initializer.needs_data:
        log_initialization_cost(module, {"forward_backward_passes": 0.0, "seconds": module.init_seconds})
        return
    cost = module.initializer.initialize_with_data(module.model, ADAPTER_NAME, training_batches(module))
    if module.initializer.modifies_base:
        module.initial_factors = snapshot_factors(module.model, ADAPTER_NAME)
    if module.trainer.is_global_zero:
        log.info("%s: %s", type(module.initializer).__name__, ", ".join(f"{k} {v:.4g}" for k, v in cost.items()))
    log_initialization_cost(module, cost)


def log_initialization_cost(module: QwenLoRAModule, cost: dict[str, float]) -> None:
    """Log what the initialization cost under ``weights/init/`` at step 0 (every initializer: the study's budget)."""
    for logger in module.loggers:
        logger.log_metrics({f"weights/init/{key}": value for key, value in cost.items()}, step=0)


def save_initial_factors(module: QwenLoRAModule, checkpoint: dict[str, Any]) -> None:
    """Keep a data-driven residual scheme's starting factors in ``checkpoint``."""
    if module.initial_factors is not None and module.initializer.needs_data:
        checkpoint[CHECKPOINT_KEY] = {name: {"B": B, "A": A} for name, (B, A) in module.initial_factors.items()}


def restore_initial_factors(module: QwenLoRAModule, checkpoint: dict[str, Any]) -> None:
    """Rebuild the residual base W − s·B₀·A₀ of a data-driven scheme from the starting factors in ``checkpoint``."""
    saved = checkpoint.get(CHECKPOINT_KEY)
    if not saved or not module.initializer.modifies_base or module.model is None:
        return
    from svdlora_pl.lora.init_math import residual_weight

    with torch.no_grad():
        for ref in find_lora_layers(module.model, ADAPTER_NAME):
            B0, A0 = saved[ref.name]["B"], saved[ref.name]["A"]
            weight = ref.layer.get_base_layer().weight
            weight.copy_(residual_weight(weight, B0.to(weight.device), A0.to(weight.device), ref.scaling))
    module.initial_factors = {name: (parts["B"], parts["A"]) for name, parts in saved.items()}
