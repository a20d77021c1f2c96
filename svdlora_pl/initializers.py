"""LoRA initializers under the name configs use (``class_path: svdlora_pl.initializers.RandomInit``).

The classes live in :mod:`svdlora_pl.lora.initializers`; their math in :mod:`svdlora_pl.lora.init_math`.
"""

from svdlora_pl.lora.initializers import (
    LoRAInitializer,
    MiLoRAInit,
    PeftInit,
    PiSSAInit,
    RandomInit,
    SVDTeacherInit,
)

__all__ = ["LoRAInitializer", "MiLoRAInit", "PeftInit", "PiSSAInit", "RandomInit", "SVDTeacherInit"]
