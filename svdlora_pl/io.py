"""File input and output: safetensors read with one-line errors, and atomic output (nothing half-written is ever left
at a destination path).

Safetensors files are opened through :func:`open_safetensors`, which never unpickles anything and turns a missing,
truncated or foreign file into one :class:`~svdlora_pl.errors.InputError` naming it. Output files are written to a temporary sibling and renamed over the destination (``os.replace`` is atomic on
POSIX and Windows), whole (:func:`atomic_write_bytes`) or streamed (:func:`atomic_file`); directories are filled
under a temporary sibling name and renamed into place.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from svdlora_pl.errors import InputError


@contextmanager
def open_safetensors(path: str | os.PathLike[str], what: str = "") -> Iterator[Any]:
    """Yield ``safetensors.safe_open(path, framework="pt")``: tensors read lazily from the file's memory map.

    A missing file, or one that is not safetensors (a pickle, a truncated download), raises one
    :class:`InputError` naming it (and ``what`` in it, e.g. a tensor key) instead of a traceback; the file is never
    unpickled. Errors raised by the block itself pass through unchanged.
    """
    from safetensors import SafetensorError, safe_open

    file = Path(path)
    where = f"{file}: {what}: " if what else f"{file}: "
    if not file.is_file():
        pickled = [
            p.name for p in (file.with_suffix(".bin"), file.with_suffix(".pt"), file.with_suffix(".pth")) if p.is_file()
        ]
        hint = f" ({pickled[0]} is a pickle and is refused; save tensors with safetensors)" if pickled else ""
        raise InputError(f"{where}file not found{hint}")
    try:
        handle = safe_open(str(file), framework="pt")
    except (SafetensorError, OSError, ValueError) as error:
        hint = (
            " (pickled checkpoints are refused; save tensors with safetensors)" if file.suffix != ".safetensors" else ""
        )
        raise InputError(f"{where}not a readable safetensors file{hint}: {error}") from None
    with handle:
        try:
            yield handle
        except (SafetensorError, OSError) as error:
            raise InputError(f"{where}unreadable tensor data: {error}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Yield a binary file open on a temporary sibling of ``path``; on success it is renamed over ``path``.

    For output written in pieces (streamed, never held whole in memory). On an error the temporary file is removed
    and ``path`` keeps its old content.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.chmod(staging, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(staging, target)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory, then rename."""
    with atomic_file(path) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a staging directory; on success it replaces ``path`` whole, on error it is removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp creates 0700
        old = staging.with_name(staging.name + ".old")
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_writable(path: str | os.PathLike[str], field: str) -> None:
    """Refuse a path that cannot be created: some existing ancestor is a file, or the nearest one is not writable.

    ``field`` names the option in the one-line :class:`InputError`. Nothing is created here.
    """
    target = Path(path).absolute()
    for ancestor in [target, *target.parents]:
        if ancestor.exists():
            break
    if ancestor != target and not ancestor.is_dir():
        raise InputError(f"{field}: {path}: {ancestor} is a file, not a directory")
    writable = ancestor if ancestor.is_dir() else ancestor.parent
    if not os.access(writable, os.W_OK | os.X_OK):
        raise InputError(f"{field}: {path}: {writable} is not writable")


def check_output_dir(
    output: Path, inputs: Sequence[str | os.PathLike[str]], overwrite: bool, field: str = "output_dir"
) -> None:
    """Refuse an output directory that would replace an input, is a file, lies under a file, cannot be written, or
    is non-empty without ``overwrite``. ``field`` names the option in the one-line error (``output_dir``)."""
    target = Path(output).resolve()
    for given in inputs:
        source = Path(given).resolve()
        if target == source or target in source.parents:
            raise InputError(f"{field}: {output} would replace the input {given}")
    if target.exists() and not target.is_dir():
        raise InputError(f"{field}: {output} exists and is not a directory")
    check_writable(output, field)
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise InputError(f"{field}: {output} exists and is not empty (set overwrite to replace it)")


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, recursively through dicts, lists and tuples.

    Strict JSON has no NaN or infinity: a metric that does not exist (a relative error against a zero reference, a
    loss never logged) is written as ``null``.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(item) for item in value]
    return value


def json_text(value: Any) -> str:
    """Strict JSON of ``value`` for a report file: indented, UTF-8 as is, non-finite floats as ``null``."""
    return json.dumps(finite_or_none(value), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
