"""LoRA initializers under the name configs use (``class_path: svdlora_pl.initializers.RandomInit``).

The classes live in :mod:`svdlora_pl.lora.initializers` and :mod:`svdlora_pl.lora.gradient_init`; their math in
:mod:`svdlora_pl.lora.init_math`.
"""

from svdlora_pl.lora.gradient_init import GradientSVDInit
from svdlora_pl.lora.initializers import (
    LoRAInitializer,
    MiLoRAInit,
    PeftInit,
    PiSSAInit,
    RandomInit,
    SVDTeacherInit,
)

__all__ = [
    "GradientSVDInit", "LoRAInitializer", "MiLoRAInit", "PeftInit", "PiSSAInit", "RandomInit", "SVDTeacherInit",
]  # fmt: skip
