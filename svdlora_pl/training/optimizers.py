"""Building the optimizer a config names, with its argument errors reported as the config fields they are."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from svdlora_pl.errors import InputError

OPTIMIZER_FIELDS = {"learning rate": "lr", "weight_decay": "weight_decay", "epsilon": "eps", "beta": "betas"}
"""Words of torch.optim's argument checks -> the ``init_args`` key they are about."""


def optimizer_field(message: str) -> str:
    """The optimizer argument a ``torch.optim`` ``ValueError`` message is about (``lr``, ``weight_decay``, ...)."""
    lowered = message.lower()
    for words, key in OPTIMIZER_FIELDS.items():
        if words in lowered:
            return key
    return next((word for word in ("momentum", "dampening", "alpha", "lr_decay") if word in lowered), "<argument>")


def build_optimizer(
    factory: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer], params: Iterable[torch.nn.Parameter]
) -> torch.optim.Optimizer:
    """``factory(params)``; torch.optim's checks (``Invalid learning rate: -0.1``) become one-line InputErrors naming
    ``model.optimizer.init_args.<key>``."""
    try:
        return factory(params)
    except ValueError as error:
        raise InputError(f"model.optimizer.init_args.{optimizer_field(str(error))}: {error}") from None
