"""Errors that the package reports to users as one line, without a traceback."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input (file, field, value); the CLI prints its one-line message and exits with code 2."""
