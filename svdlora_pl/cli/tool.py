"""Running a library function as an ``svdlora`` tool: its options and help come from its signature and docstring.

Every tool module in :mod:`svdlora_pl.cli` is a few lines over this one runner::

    from svdlora_pl.cli.tool import run_tool
    from svdlora_pl.teacher.factorize import factorize

    def main(argv=None) -> int:
        return run_tool("factorize", factorize, argv, summary=print_summary)  # print_summary(result, options)

The parser is jsonargparse's, as LightningCLI's is for ``svdlora fit``: each parameter is an option named as in
Python (``--output_dir``), typed and documented by the function's ``Args:`` section; nested dataclass parameters
give dotted options (``--svd.method randomized``); lists are written as YAML (``--adapters [a, b]``) or appended
one at a time (``--adapters+=c``). ``-c/--config`` reads YAML (stackable, the last wins, command-line options
after it win over it) and ``--print_config`` prints the resolved options as YAML that ``-c`` accepts back.

A bad command line raises :class:`jsonargparse.ArgumentError`, a bad value found by the function raises
:class:`~svdlora_pl.errors.InputError`; :func:`svdlora_pl.cli.main.main` turns either into one line and exit
code 2.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

Result = TypeVar("Result")


def describe(function: Callable[..., Any]) -> str:
    """The prose of ``function``'s docstring (its ``Args:`` section becomes the options' help instead)."""
    from docstring_parser import parse

    doc = parse(inspect.getdoc(function) or "")
    return "\n\n".join(part for part in (doc.short_description, doc.long_description) if part)


def tool_parser(name: str, function: Callable[..., Any]) -> ArgumentParser:
    """The parser of ``svdlora NAME``: ``-c/--config``, ``--print_config`` and one option per parameter."""
    parser = ArgumentParser(prog=f"svdlora {name}", description=describe(function), exit_on_error=False)
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="YAML file of options (stackable)")
    if dataclasses.is_dataclass(function):
        parser.add_class_arguments(function, fail_untyped=True, sub_configs=True)
    else:
        parser.add_function_arguments(function, fail_untyped=True, as_positional=False, sub_configs=True)
    return parser


def parse_tool_args(parser: ArgumentParser, argv: Sequence[str] | None) -> dict[str, Any]:
    """Keyword arguments of the tool's function: ``argv`` parsed, dataclass options built, ``config`` dropped."""
    parsed = parser.parse_args(None if argv is None else list(argv))
    values = parser.instantiate_classes(parsed)
    values.pop("config", None)
    return {key: value.as_dict() if isinstance(value, Namespace) else value for key, value in vars(values).items()}


def run_tool(
    name: str,
    function: Callable[..., Result],
    argv: Sequence[str] | None,
    summary: Callable[[Result, dict[str, Any]], None] | None = None,
) -> int:
    """Parse ``argv`` for ``function``, call it, print ``summary(result, options)``; returns the exit code (0)."""
    options = parse_tool_args(tool_parser(name, function), argv)
    result = function(**options)
    if summary is not None:
        summary(result, options)
    return 0
