"""``svdlora_pl.data.QADataModule``, the name configs use; the class lives in :mod:`svdlora_pl.training.datamodule`."""

from svdlora_pl.training.datamodule import QADataModule

__all__ = ["QADataModule"]
