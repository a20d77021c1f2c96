"""svdlora-pl: SVD-guided LoRA fine-tuning of Qwen causal LMs with PyTorch Lightning.

Main entry points: :class:`svdlora_pl.model.QwenLoRAModule`, :class:`svdlora_pl.data.QADataModule`, the
initializers in :mod:`svdlora_pl.lora.initializers`, and the ``svdlora`` command (:mod:`svdlora_pl.cli`).
"""

__version__ = "0.1.0"
