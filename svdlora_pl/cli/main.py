"""The ``svdlora`` console script: LightningCLI's ``fit``/``validate``/``test``/``predict`` and the tools.

A user error ends the program with one line on stderr, ``svdlora: error: <file or field>: <problem>``, and exit
code 2: a bad command line or config (jsonargparse's ``ArgumentError``, followed by one hint line naming the
subcommand's ``--help``) or a bad value, file or field found later (:class:`~svdlora_pl.errors.InputError`).
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence

from jsonargparse import ArgumentError

from svdlora_pl.errors import InputError, Preempted, TrainingDiverged

EXIT_USAGE = 2
EXIT_SIGTERM = 143
"""128 + SIGTERM: a run stopped by the signal (after saving a checkpoint), not a finished one."""

TOOLS: dict[str, str] = {
    "aggregate": "svdlora_pl.cli.aggregate",
    "compare": "svdlora_pl.cli.compare",
    "estimate-memory": "svdlora_pl.cli.estimate_memory",
    "experiment": "svdlora_pl.cli.experiment",
    "factorize": "svdlora_pl.cli.factorize",
    "federate": "svdlora_pl.cli.federate",
    "synthesize": "svdlora_pl.cli.synthesize",
}
"""Tool subcommands beside LightningCLI's: name -> module whose ``main(argv) -> int`` runs it."""


def one_line(message: object) -> str:
    """A (possibly multi-line) message on one line."""
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def error(message: object, hint: str | None = None) -> int:
    """Print ``svdlora: error: MESSAGE`` (and the hint) to stderr; returns the exit code 2."""
    print(f"svdlora: error: {one_line(message)}", file=sys.stderr)
    if hint:
        print(hint, file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``svdlora`` console script."""
    logging.basicConfig(format="%(message)s")
    logging.getLogger("svdlora_pl").setLevel(logging.INFO)
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args and not args[0].startswith("-") else None
    try:
        if command in TOOLS:
            return importlib.import_module(TOOLS[command]).main(args[1:])
        if command is None and (not args or args[0] in ("-h", "--help")):
            print(f"tool subcommands: {', '.join(sorted(TOOLS))} (svdlora TOOL --help)\n")
        from svdlora_pl.cli.lightning import run_lightning

        run_lightning(None if argv is None else args)  # None: LightningCLI reads sys.argv itself
    except ArgumentError as problem:
        return error(problem, f"see 'svdlora {command or ''} --help'".replace("  ", " "))
    except InputError as problem:
        return error(problem)
    except TrainingDiverged as problem:  # a numerical failure, not the user's input: exit 1, no traceback
        print(f"svdlora: {one_line(problem)}", file=sys.stderr)
        return 1
    except Preempted as stop:
        print(f"svdlora: {stop}", file=sys.stderr)
        return EXIT_SIGTERM
    return 0
