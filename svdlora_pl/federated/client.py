"""One client's round: start from the global state, run a Lightning fit on its shard, return its LoRA factors.

The client is the package's own training: a :class:`~svdlora_pl.training.module.QwenLoRAModule` of the client's rank
(alpha = scaling × r, so every client has the same scaling s) and a
:class:`~svdlora_pl.training.datamodule.QADataModule` on its shard, fitted by a ``lightning.Trainer`` in-process on the
CPU in fp32 for ``client.local_steps`` optimizer steps at a constant learning rate. How it starts:

- round 1, or nothing sent: PEFT's fresh init (A random, B = 0): the model is the base;
- ``fold`` (stack, FLoRA): the global update G = B·A it is sent is added into the frozen base weights (W ← W + G),
  then a fresh LoRA trains on top; the client returns only this round's update;
- ``init`` (svd, zeropad: FlexLoRA, HetLoRA): its LoRA starts at the global update it is sent (m ≤ r_k components;
  B·A arrives with the scaling folded in, so the client loads B/√s and A/√s); components beyond m keep PEFT's fresh
  init (A random, B = 0), so they can still learn. The client returns its whole update from the base.

The factors go back with the client's scaling s (ΔW_k = s·B_k·A_k), its number of training records (the weight of
its update) and its mean training loss over the last optimizer steps.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from svdlora_pl.errors import InputError
from svdlora_pl.federated.settings import Payload, Plan
from svdlora_pl.federated.split import make_shards
from svdlora_pl.lora.factors import LoRAFactors

Factors = Mapping[str, tuple[torch.Tensor, torch.Tensor]]
"""``{base module path: (B, A)}`` with B·A the update itself (scaling 1)."""


@dataclass(frozen=True)
class ClientResult:
    """What a client returns after its round.

    Attributes:
        factors: Its LoRA factors per base module path, with its PEFT scaling.
        num_examples: Its number of training records (the weight of its update with ``weighting: examples``).
        train_loss: Mean training loss of its last optimizer steps (NaN when none was logged).
        seconds: Wall time of the round on the client.
    """

    factors: dict[str, LoRAFactors]
    num_examples: int
    train_loss: float
    seconds: float


def client_seed(plan: Plan, partition: int, server_round: int) -> int:
    """The seed of a client's round: its fresh LoRA factors and the order of its records."""
    return plan.seed * 1_000_003 + server_round * 1_009 + partition


def start_from(layers: Mapping[str, object], payload: Payload, arrays: Factors | None) -> None:
    """Apply what the server sent to a freshly built LoRA model (see the module docstring).

    Args:
        layers: ``{base module path: LoRALayerRef}`` of the client's model.
        payload: ``none``, ``fold`` or ``init``.
        arrays: The global update's factors (scaling folded in), for every module of ``layers``.
    """
    if payload == "none" or not arrays:
        return
    missing = sorted(set(layers) - set(arrays))
    if missing:
        raise InputError(f"the server sent no factors for {missing[0]} (a client and server of different settings?)")
    with torch.no_grad():
        for name, ref in layers.items():
            B, A = arrays[name]
            if payload == "fold":
                weight = ref.layer.base_layer.weight
                weight.add_((B.to(torch.float64) @ A.to(torch.float64)).to(weight.dtype))
                continue
            m = min(A.shape[0], ref.A.shape[0])
            root = math.sqrt(abs(ref.scaling))
            ref.A[:m].copy_(A[:m] / root)
            ref.B[:, :m].copy_(B[:, :m] / root)
            ref.B[:, m:].zero_()


def _trainer(plan: Plan, root: Path):  # -> lightning.pytorch.Trainer
    import lightning.pytorch as pl

    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_steps=plan.client.local_steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=plan.client.gradient_clip_val,
        log_every_n_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
    )


def train_client(
    plan: Plan,
    partition: int,
    server_round: int,
    payload: Payload = "none",
    arrays: Factors | None = None,
    train_file: str | None = None,
) -> ClientResult:
    """Run one client's round (see the module docstring).

    Args:
        plan: The run's plan (as the server sent it).
        partition: The client's partition id: its rank is ``plan.ranks[partition]``, its shard the partition-th.
        server_round: The round (1-based); with the partition it seeds the client's init and record order.
        payload: What to do with ``arrays``: ``none``, ``fold`` or ``init``.
        arrays: The global update, ``{module: (B, A)}`` with B·A the update.
        train_file: The node's own training records instead of its shard of ``plan.split`` (a real client's data).
    """
    import lightning.pytorch as pl

    from svdlora_pl.lora.layers import find_lora_layers
    from svdlora_pl.lora.settings import LoRASettings
    from svdlora_pl.training.datamodule import QADataModule
    from svdlora_pl.training.module import QwenLoRAModule

    start = time.perf_counter()
    rank = plan.rank_of(partition)
    seed = client_seed(plan, partition, server_round)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    pl.seed_everything(seed, verbose=False)
    settings = plan.client
    lora = LoRASettings(r=rank, alpha=settings.scaling * rank, dropout=settings.dropout)
    lora.target_modules = list(settings.target_modules)
    module = QwenLoRAModule(
        model_name_or_path=plan.model_name_or_path,
        lora=lora,
        optimizer=partial(torch.optim.AdamW, lr=settings.lr, weight_decay=0.0),
        lr_schedule="constant",
        warmup_ratio=0.0,
        initial_eval=False,
    )
    module.configure_model()
    layers = {ref.name: ref for ref in find_lora_layers(module.model)}
    start_from(layers, payload, arrays)
    with tempfile.TemporaryDirectory(prefix=f"svdlora-client{partition}-") as tmp:
        if train_file is None:
            shard = make_shards(plan.split, len(plan.ranks), plan.seed)[partition]
            train_file = str(shard.write_jsonl(Path(tmp) / "shard.jsonl"))
        data = QADataModule(
            train_file=train_file,
            tokenizer=plan.model_name_or_path,
            max_length=settings.max_length,
            batch_size=settings.batch_size,
            seed=seed,
        )
        trainer = _trainer(plan, Path(tmp))
        trainer.fit(module, data)
        num_examples = len(data.dataset("train"))
    loss = trainer.callback_metrics.get("train/loss")
    factors = {
        name: LoRAFactors(ref.B.detach().float().clone(), ref.A.detach().float().clone(), ref.scaling)
        for name, ref in layers.items()
    }
    return ClientResult(
        factors, num_examples, float("nan") if loss is None else float(loss), time.perf_counter() - start
    )
