"""Checkpoints given by the user (``--ckpt_path``): read safely, and checked against the config they resume under.

A checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain containers only, a pickle that would
run code is refused, never executed. When a run resumes or evaluates from a checkpoint, the config (files and
command line) decides every option; the checkpoint only supplies the trained tensors, so the options that shape
those tensors must agree with it: the base model, full fine-tuning vs LoRA, the LoRA rank, alpha, target modules and
rsLoRA scaling, and a residual initializer (it rewrote the frozen base the trained factors belong to). Everything
else (``eval_generate``, ``max_new_tokens``, ``predictions_file``, dropout, the learning rate, ...) is the config's.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from svdlora_pl.errors import InputError

FIELD = "ckpt_path"
LIGHTNING_NAMES = ("last", "best", "hpc", "registry")
"""``ckpt_path`` values Lightning resolves itself (not files)."""
STRUCTURAL_LORA = ("r", "alpha", "target_modules", "use_rslora")


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint at ``path``, loaded with ``weights_only=True`` on the CPU.

    Raises:
        InputError: naming ``ckpt_path``: a missing file or a directory, a truncated or foreign file, a pickle that
            needs arbitrary objects (refused, not executed), or a file without a ``state_dict``.
    """
    import torch

    file = Path(path)
    if file.is_dir():
        raise InputError(f"{FIELD}: {path} is a directory, not a checkpoint file")
    if not file.is_file():
        raise InputError(f"{FIELD}: {path}: file not found")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(
            f"{FIELD}: {path}: refused: not a weights-only checkpoint (loading it would unpickle arbitrary objects)"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        reason = str(error).splitlines()[0].split(". ")[0]
        raise InputError(f"{FIELD}: {path}: not a readable checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise InputError(f"{FIELD}: {path}: not a Lightning checkpoint (no state_dict)")
    return checkpoint


def _initializer(spec: Any) -> tuple[Any, bool]:
    """(class and arguments, whether it rewrites the base) of an initializer given as its spec or its config."""
    from svdlora_pl.lora.initializers import from_spec

    if isinstance(spec, Mapping):
        spec = {"class_path": spec.get("class_path"), "init_args": dict(spec.get("init_args") or {})}
    initializer = from_spec(spec)
    described = initializer.spec()
    return (described["class_path"].rpartition(".")[2], described["init_args"]), initializer.modifies_base


def _mismatch(field: str, config: Any, saved: Any, path: str) -> InputError:
    return InputError(
        f"model.{field}: {config!r} in the config, {saved!r} in the checkpoint {path} (use the run's own settings, "
        "e.g. -c <log_dir>/config.yaml)"
    )


def check_matches(checkpoint: Mapping[str, Any], model: Mapping[str, Any], path: str) -> None:
    """Refuse a checkpoint whose trained tensors do not fit the configured model (see the module docstring).

    Args:
        checkpoint: The loaded checkpoint (its ``hyper_parameters`` are the saved module arguments).
        model: The ``model`` section of the resolved config (``QwenLoRAModule``'s arguments).
        path: The checkpoint's path, for the message.

    Raises:
        InputError: naming the first field that differs, with both values.
    """
    saved = checkpoint.get("hyper_parameters") or {}
    if not saved:
        return
    if saved.get("model_name_or_path") != model.get("model_name_or_path"):
        raise _mismatch("model_name_or_path", model.get("model_name_or_path"), saved.get("model_name_or_path"), path)
    saved_lora, lora = saved.get("lora"), model.get("lora")
    if (saved_lora is None) != (lora is None):
        kind = {True: "null (full fine-tuning)", False: "LoRA"}
        raise _mismatch("lora", kind[lora is None], kind[saved_lora is None], path)
    if lora is not None:
        for key in STRUCTURAL_LORA:
            if key in saved_lora and saved_lora[key] != lora.get(key):
                raise _mismatch(f"lora.{key}", lora.get(key), saved_lora[key], path)
    if "initializer" in saved and lora is not None:
        (before, rewrote), (now, rewrites) = _initializer(saved["initializer"]), _initializer(model.get("initializer"))
        if (rewrote or rewrites) and before != now:  # the trained factors belong to the base the initializer made
            raise _mismatch("initializer", now, before, path)
