"""``svdlora_pl.model.QwenLoRAModule``, the name configs use; the class lives in :mod:`svdlora_pl.training.module`."""

from svdlora_pl.training.module import QwenLoRAModule

__all__ = ["QwenLoRAModule"]
