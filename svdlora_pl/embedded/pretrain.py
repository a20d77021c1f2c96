"""Short causal-LM pretraining of the embedded tiny model on the bundled corpus.

The tiny Qwen2 starts from seeded random weights; LoRA's low-rank view of fine-tuning assumes a pretrained
base, so :mod:`svdlora_pl.embedded.tiny` runs :func:`pretrain` once before caching the model. It is a plain
full-parameter next-token training: the corpus paragraphs (:mod:`svdlora_pl.embedded.datasets.corpus`) are tokenized,
joined with ``<|endoftext|>`` and cut into fixed-length blocks; AdamW with linear warmup and cosine decay,
fp32, gradient clipping, batches drawn by a private ``torch.Generator``. Everything runs inside
``torch.random.fork_rng``, so the caller's random state is left as it was, and the same settings give the
same weights on the same machine.

Usage::

    from svdlora_pl.embedded.pretrain import PretrainSettings, pretrain

    result = pretrain(model, tokenizer, train_paragraphs, heldout_paragraphs, PretrainSettings(steps=300))
    print(result.initial_loss, result.final_loss, result.heldout_perplexity_after)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from svdlora_pl.schedules import warmup_schedule

log = logging.getLogger(__name__)

SEPARATOR = "<|endoftext|>"


@dataclass(frozen=True)
class PretrainSettings:
    """Hyper-parameters of the tiny model's pretraining; every field enters the cache's recipe hash.

    Args:
        steps: Optimizer steps (one batch each).
        batch_size: Blocks per batch.
        seq_len: Tokens per packed block.
        lr: Peak learning rate of AdamW.
        warmup_steps: Steps of linear warmup before the cosine decay.
        min_lr_ratio: Final learning rate as a fraction of ``lr``.
        weight_decay: Decoupled weight decay, applied to matrices only (not to norms and biases).
        betas: AdamW's ``(beta1, beta2)``.
        grad_clip: Maximum global gradient norm.
        seed: Seed of the generator that orders the batches.
    """

    steps: int = 300
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 3e-3
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"PretrainSettings.{name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and 0 <= self.min_lr_ratio <= 1 and self.warmup_steps >= 0 and self.grad_clip > 0):
            raise ValueError(f"PretrainSettings out of range: {self}")

    def to_dict(self) -> dict[str, object]:
        """The settings as a JSON-ready dict."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class PretrainResult:
    """What a pretraining run did and reached.

    Args:
        steps: Optimizer steps taken.
        train_blocks: Packed blocks in the training corpus.
        tokens_seen: Tokens processed (``steps * batch_size * seq_len``).
        initial_loss: Training loss of the first batch, before any update.
        final_loss: Mean training loss of the last tenth of the steps.
        heldout_loss_before: Mean token loss on the held-out corpus before pretraining.
        heldout_loss_after: The same after pretraining.
        seconds: Wall time of the run.
    """

    steps: int
    train_blocks: int
    tokens_seen: int
    initial_loss: float
    final_loss: float
    heldout_loss_before: float
    heldout_loss_after: float
    seconds: float

    @property
    def heldout_perplexity_before(self) -> float:
        return math.exp(self.heldout_loss_before)

    @property
    def heldout_perplexity_after(self) -> float:
        return math.exp(self.heldout_loss_after)


def pack(tokenizer, paragraphs: Sequence[str], seq_len: int) -> torch.Tensor:
    """Token ids of the paragraphs, each followed by ``<|endoftext|>``, cut into ``(n, seq_len)`` blocks.

    Args:
        tokenizer: The tiny model's tokenizer.
        paragraphs: Texts to pack, in order.
        seq_len: Block length; the incomplete last block is dropped.
    """
    separator = tokenizer.convert_tokens_to_ids(SEPARATOR)
    ids: list[int] = []
    for paragraph in paragraphs:
        ids.extend(tokenizer.encode(paragraph, add_special_tokens=False))
        ids.append(separator)
    n_blocks = len(ids) // seq_len
    if n_blocks == 0:
        raise ValueError(f"corpus of {len(ids)} tokens is shorter than one block of {seq_len}")
    return torch.tensor(ids[: n_blocks * seq_len], dtype=torch.long).view(n_blocks, seq_len)


@torch.no_grad()
def corpus_loss(model: torch.nn.Module, blocks: torch.Tensor, batch_size: int) -> float:
    """Mean next-token loss of ``model`` over all packed ``blocks`` (every block has the same length).

    Args:
        model: A causal LM returning ``.loss`` when given ``labels``.
        blocks: ``(n, seq_len)`` token ids.
        batch_size: Blocks per forward pass.
    """
    was_training = model.training
    model.eval()
    total = 0.0
    for start in range(0, len(blocks), batch_size):
        batch = blocks[start : start + batch_size]
        total += model(input_ids=batch, labels=batch).loss.item() * len(batch)
    model.train(was_training)
    return total / len(blocks)


def _optimizer(model: torch.nn.Module, settings: PretrainSettings) -> torch.optim.AdamW:
    matrices = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": settings.weight_decay}, {"params": vectors, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=settings.lr, betas=settings.betas)


def pretrain(
    model: torch.nn.Module,
    tokenizer,
    train: Sequence[str],
    heldout: Sequence[str],
    settings: PretrainSettings,
) -> PretrainResult:
    """Train every parameter of ``model`` in place on the packed ``train`` paragraphs.

    Args:
        model: A causal LM in fp32 (``transformers`` style: ``model(input_ids, labels=...).loss``).
        tokenizer: Its tokenizer (must know ``<|endoftext|>``).
        train: Training paragraphs.
        heldout: Paragraphs the loss is measured on before and after, never trained on.
        settings: Hyper-parameters.
    """
    started = time.perf_counter()
    blocks = pack(tokenizer, train, settings.seq_len)
    heldout_blocks = pack(tokenizer, heldout, settings.seq_len)
    with torch.random.fork_rng(devices=[]):
        generator = torch.Generator().manual_seed(settings.seed)
        heldout_before = corpus_loss(model, heldout_blocks, settings.batch_size)
        optimizer = _optimizer(model, settings)
        schedule = warmup_schedule(optimizer, settings.warmup_steps, settings.steps, "cosine", settings.min_lr_ratio)
        model.train()
        order = torch.empty(0, dtype=torch.long)
        losses: list[float] = []
        every = max(1, settings.steps // 10)
        for step in range(settings.steps):
            if len(order) < settings.batch_size:  # a new pass over the corpus in a fresh random order
                order = torch.randperm(len(blocks), generator=generator)
            batch, order = blocks[order[: settings.batch_size]], order[settings.batch_size :]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if (step + 1) % every == 0 or step + 1 == settings.steps:
                log.info(
                    "pretraining the tiny model: step %d/%d, loss %.3f (%.0f s)",
                    step + 1,
                    settings.steps,
                    losses[-1],
                    time.perf_counter() - started,
                )
        model.eval()
        heldout_after = corpus_loss(model, heldout_blocks, settings.batch_size)
    tail = losses[-max(1, settings.steps // 10) :]
    return PretrainResult(
        steps=settings.steps,
        train_blocks=len(blocks),
        tokens_seen=settings.steps * settings.batch_size * settings.seq_len,
        initial_loss=losses[0],
        final_loss=sum(tail) / len(tail),
        heldout_loss_before=heldout_before,
        heldout_loss_after=heldout_after,
        seconds=time.perf_counter() - started,
    )
