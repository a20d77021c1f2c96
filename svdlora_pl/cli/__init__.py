"""The ``svdlora`` command: LightningCLI for fit/validate/test/predict and one small module per tool."""

from svdlora_pl.cli.main import main

__all__ = ["main"]
