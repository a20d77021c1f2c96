"""Shared command-line pieces of the tool subcommands (``svdlora aggregate|factorize|synthesize``)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from svdlora_pl.errors import InputError


class ToolParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as an :class:`InputError` (one line, exit 2 from ``svdlora``)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"{self.prog.removeprefix('svdlora ')}: {message}")


def check_output_dir(output: Path, inputs: Sequence[str | os.PathLike[str]], overwrite: bool) -> None:
    """Refuse an ``--output-dir`` that would replace an input, is a file, or is non-empty without ``--overwrite``."""
    target = output.resolve()
    for given in inputs:
        source = Path(given).resolve()
        if target == source or target in source.parents:
            raise InputError(f"--output-dir: {output} would replace the input {given}")
    if target.exists() and not target.is_dir():
        raise InputError(f"--output-dir: {output} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise InputError(f"--output-dir: {output} exists and is not empty (pass --overwrite to replace it)")
