"""``svdlora estimate-memory``: the memory plan of a ``svdlora fit`` config on one device, without loading any weights
(:func:`svdlora_pl.memory.estimate.estimate_memory`). The config is given and resolved exactly as for ``svdlora fit``
(stackable ``-c``, every ``--model.*``/``--data.*``/``--trainer.*`` option) and nothing is instantiated; the table
goes to stdout, and a plan over the budget exits 2 with one line of numbers after it."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser
from typing_extensions import override

from svdlora_pl.cli.lightning import FitConfigCLI, fit_values
from svdlora_pl.errors import InputError
from svdlora_pl.io import atomic_write_text, check_writable, json_text
from svdlora_pl.memory.estimate import estimate_memory
from svdlora_pl.memory.table import format_table, over_budget_message

DESCRIPTION = (
    "Memory plan of a svdlora fit config on one device (the model is built on the meta device: nothing is "
    "downloaded or allocated): weights, LoRA parameters, gradients, optimizer states, activations with and without "
    "gradient checkpointing, logits, CUDA overhead, total against budget_gb (GB = 10^9 bytes). The config is read "
    "as svdlora fit reads it: -c files stack, options override them. Exit 2 with one line when it does not fit."
)


class EstimateMemoryCLI(FitConfigCLI):
    """``svdlora fit``'s options plus the tool's own at the root: ``--budget_gb``, ``--model_config``, ``--json``."""

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_function_arguments(estimate_memory, skip={"config"}, fail_untyped=True)
        parser.add_argument("--json", type=Path | None, default=None, help="Also write the plan as JSON to this file.")


def check_json_path(path: Path) -> None:
    """Refuse a ``--json`` target that cannot be written (before the plan is computed)."""
    if path.is_dir():
        raise InputError(f"json: {path} is a directory")
    check_writable(path, "json")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``svdlora estimate-memory``; a config that does not fit raises InputError (exit 2)."""
    args = sys.argv[1:] if argv is None else argv
    options = EstimateMemoryCLI(args, prog="svdlora estimate-memory", description=DESCRIPTION).config
    if options.json is not None:
        check_json_path(Path(options.json))
    report: dict[str, Any] = {
        "config": [str(path) for path in options.get("config") or []],
        **estimate_memory(fit_values(options), budget_gb=options.budget_gb, model_config=options.model_config),
    }
    if options.json is not None:
        atomic_write_text(options.json, json_text(report))
    print(format_table(report))
    if not report["fits"]:
        raise InputError(over_budget_message(report))
    return 0
