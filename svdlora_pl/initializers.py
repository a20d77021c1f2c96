"""LoRA initializers: how the factors of a freshly created PEFT LoRA model get their starting values.

An initializer is selected on :class:`svdlora_pl.model.QwenLoRAModule` by ``class_path``::

    model:
      initializer:
        class_path: svdlora_pl.initializers.RandomInit
        init_args:
          distribution: gaussian

Writing a new one means writing one subclass of :class:`LoRAInitializer`: it may pick PEFT's own
``init_lora_weights`` value (:meth:`LoRAInitializer.peft_init`), and it may rewrite the factors (and, for
residual schemes, the frozen base weights) once the LoRA layers exist (:meth:`LoRAInitializer.initialize`).
"""

from __future__ import annotations

from typing import Literal

import torch


class LoRAInitializer:
    """Base class of LoRA initializers; subclasses override one or both hooks."""

    def peft_init(self) -> bool | str:
        """Value given to ``peft.LoraConfig(init_lora_weights=...)`` when the LoRA layers are created."""
        return True

    def initialize(self, model: torch.nn.Module, adapter_name: str) -> None:
        """Rewrite factors of ``model`` (a ``peft.PeftModel``) after creation; the default keeps PEFT's values."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class RandomInit(LoRAInitializer):
    """PEFT's default random initialization: B = 0 so the model starts exactly at the base model.

    Args:
        distribution: Distribution of A. ``kaiming_uniform`` (PEFT's default, ``init_lora_weights=True``):
            A ~ U(-b, b) with b = sqrt(6 / ((1 + a²) · in_features)), a = sqrt(5); ``gaussian``
            (``init_lora_weights="gaussian"``): A ~ N(0, 1/r²).
    """

    def __init__(self, distribution: Literal["kaiming_uniform", "gaussian"] = "kaiming_uniform") -> None:
        if distribution not in ("kaiming_uniform", "gaussian"):
            raise ValueError(f"distribution must be 'kaiming_uniform' or 'gaussian', got {distribution!r}")
        self.distribution = distribution

    def peft_init(self) -> bool | str:
        return True if self.distribution == "kaiming_uniform" else "gaussian"
