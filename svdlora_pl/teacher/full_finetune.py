"""Teacher updates of a real full fine-tune: ΔW = W_finetuned − W_base per LoRA target module, streamed.

Usage::

    from svdlora_pl.teacher.delta_svd import SVDOptions, delta_svd
    from svdlora_pl.teacher.full_finetune import open_pair

    pair = open_pair("Qwen/Qwen2.5-0.5B-Instruct", "runs/full/model")   # checked: same architecture, same keys
    for name, delta in pair.deltas():                                  # one module at a time
        result = delta_svd(delta, 16, SVDOptions("randomized", niter=4))

Model sources (``base`` / ``finetuned``): the embedded tiny name ``svdlora:tiny-qwen2`` (its cached
``save_pretrained`` directory), a local ``save_pretrained`` directory with ``model.safetensors`` or a sharded
``model.safetensors.index.json``, or a Hugging Face Hub name, fetched through
``huggingface_hub.snapshot_download(allow_patterns=["*.safetensors", "*.json"])`` (the local HF cache first;
``HF_HUB_OFFLINE=1`` never touches the network). Pickle checkpoints (``pytorch_model.bin``) are refused: loading
a pickle can run code. The two ``config.json`` must agree on :data:`ARCH_FIELDS`.

Modules: every 2-D ``<module>.weight`` whose last path component is a target name (default
:data:`svdlora_pl.lora.settings.QWEN_LINEAR_MODULES`), named by its module path without ``.weight``
(``model.layers.0.self_attn.q_proj``), the naming of :mod:`svdlora_pl.lora.factor_files`. Each module is read on its own
(``safe_open`` + ``get_tensor`` per key, file closed after): at any time the process holds one module's two
weights and its ΔW, never two models (~2 weight matrices of a 7B model instead of 2 × 15 GB).

Precision: ΔW is computed in float32 (float64 for float64 checkpoints) from the two stored tensors, so it is the
difference of what is on disk, correctly rounded; its SVD is :mod:`svdlora_pl.teacher.delta_svd`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from svdlora_pl.errors import InputError
from svdlora_pl.io import open_safetensors
from svdlora_pl.lora.settings import QWEN_LINEAR_MODULES
from svdlora_pl.training.loading import local_model_dir

ARCH_FIELDS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
)
"""``config.json`` fields that two checkpoints of one architecture share (compared where either has them)."""

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
HUB_PATTERNS = ["*.safetensors", "*.json"]
_PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


@dataclass(frozen=True)
class Checkpoint:
    """One resolved model: its directory, ``config.json``, and where each tensor key is stored.

    Args:
        name: the model as the user gave it.
        role: the option that named it (``base``, ``finetuned``), for messages.
        directory: the ``save_pretrained`` directory (the Hub snapshot for a Hub name).
        config: the parsed ``config.json``.
        files: tensor key -> safetensors file holding it.
        shapes: tensor key -> shape (read from the file headers, no data).
        index: ``model.safetensors.index.json`` or ``model.safetensors``: the file named in messages.
    """

    name: str
    role: str
    directory: Path
    config: dict[str, Any]
    files: dict[str, Path]
    shapes: dict[str, tuple[int, ...]]
    index: Path


def _locate(name: str, role: str) -> Path:
    """Directory of a model: the tiny name's cache, a local directory, or a Hub snapshot (cache first)."""
    local = local_model_dir(name)
    if local is not None:
        if not local.is_dir():
            raise InputError(f"{role}: {name}: no such model directory")
        return local
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=HUB_PATTERNS))
    except Exception as error:  # the Hub boundary: network, cache, validation and HTTP errors all mean "not found"
        detail = (str(error).strip().splitlines() or [""])[0]
        raise InputError(
            f"{role}: {name}: not a local directory, and not found on the Hugging Face Hub or in its cache "
            f"({type(error).__name__}: {detail})"
        ) from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not a readable JSON file: {error}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def _weight_map(directory: Path, role: str) -> tuple[dict[str, Path], Path]:
    """(tensor key -> file, the file to name in messages) of a directory's safetensors checkpoint."""
    index, single = directory / INDEX_NAME, directory / SINGLE_NAME
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise InputError(f"{index}: weight_map: expected a non-empty object of tensor key -> file name")
        files: dict[str, Path] = {}
        for key, name in weight_map.items():
            if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
                raise InputError(f"{index}: weight_map: {key}: {name!r} is not a .safetensors file name")
            files[key] = directory / name
        for file in dict.fromkeys(files.values()):
            if not file.is_file():
                raise InputError(f"{index}: weight_map: shard {file.name} not found in {directory}")
        return files, index
    if single.is_file():
        return {key: single for key in _header(single)}, single
    pickles = sorted(p.name for pattern in _PICKLES for p in directory.glob(pattern))
    if pickles:
        raise InputError(
            f"{role}: {directory}: only a pickle checkpoint ({pickles[0]}), which is refused (loading a pickle can "
            "run code): re-save the model with save_pretrained (safetensors)"
        )
    if (directory / "adapter_config.json").is_file():
        raise InputError(f"{role}: {directory}: a PEFT adapter, not a full model (use adapter)")
    raise InputError(f"{role}: {directory}: no {SINGLE_NAME} or {INDEX_NAME}")


def _header(file: Path) -> dict[str, tuple[int, ...]]:
    """Tensor key -> shape of one safetensors file, from its header only."""
    with open_safetensors(file) as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}


def resolve_checkpoint(name: str, role: str = "base") -> Checkpoint:
    """Resolve a tiny name, local directory or Hub name to a :class:`Checkpoint` (headers read, no weights).

    Raises:
        InputError: no such directory or Hub model, a pickle-only checkpoint, no ``config.json``, a missing shard,
            an unreadable file, or a key of the index absent from its shard.
    """
    directory = _locate(name, role)
    files, index = _weight_map(directory, role)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise InputError(f"{role}: {directory}: no config.json")
    config = _read_json(config_path)
    shapes: dict[str, tuple[int, ...]] = {}
    for file in dict.fromkeys(files.values()):
        shapes.update(_header(file))
    for key, file in files.items():
        if key not in shapes:
            raise InputError(f"{index}: {key}: not in its shard {file.name}")
    return Checkpoint(name, role, directory, config, files, {k: shapes[k] for k in files}, index)


def _arch_value(config: dict[str, Any], field: str) -> Any:
    if field in config:
        return config[field]
    text = config.get("text_config")
    return text.get(field) if isinstance(text, dict) else None


def check_same_architecture(base: Checkpoint, finetuned: Checkpoint) -> None:
    """Raise InputError naming the first :data:`ARCH_FIELDS` entry on which the two ``config.json`` differ."""
    for field in ARCH_FIELDS:
        a, b = _arch_value(base.config, field), _arch_value(finetuned.config, field)
        if a != b:
            raise InputError(
                f"{finetuned.role}: {finetuned.directory / 'config.json'}: {field} = {b!r} differs from "
                f"{base.role}'s {a!r} ({base.directory / 'config.json'}): not the same architecture"
            )


def _natural(key: str) -> list[Any]:
    """Sort key putting layer 2 before layer 10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _target_keys(checkpoint: Checkpoint, targets: Sequence[str]) -> dict[str, str]:
    """Module name -> key of every 2-D ``.weight`` whose module's last name is a target."""
    found = {}
    for key, shape in checkpoint.shapes.items():
        module, _, leaf = key.rpartition(".")
        if leaf == "weight" and len(shape) == 2 and module.rpartition(".")[2] in targets:
            found[module] = key
    return found


def plan_modules(base: Checkpoint, finetuned: Checkpoint, targets: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Module -> (out, in) of every target module, in natural order; both checkpoints must hold each one alike."""
    modules = _target_keys(base, targets)
    leaves = {m.rpartition(".")[2] for m in modules}
    for target in targets:
        if target not in leaves:
            known = sorted({k.rpartition(".")[0].rpartition(".")[2] for k, s in base.shapes.items() if len(s) == 2})
            raise InputError(f"target_modules: {target!r} matches no 2-D weight of {base.index} ({', '.join(known)})")
    for module, key in _target_keys(finetuned, targets).items():
        if module not in modules:
            raise InputError(f"{base.index}: {key}: missing ({finetuned.role} {finetuned.index} has it)")
    plan: dict[str, tuple[int, int]] = {}
    for module in sorted(modules, key=_natural):
        key = modules[module]
        shape = base.shapes[key]
        if key not in finetuned.shapes:
            raise InputError(f"{finetuned.index}: {key}: missing ({base.role} {base.index} has it)")
        if finetuned.shapes[key] != shape:
            raise InputError(
                f"{finetuned.files[key]}: {key}: shape {list(finetuned.shapes[key])} differs from "
                f"{base.role}'s {list(shape)} ({base.files[key]})"
            )
        plan[module] = (shape[0], shape[1])
    return plan


@dataclass(frozen=True)
class WeightPair:
    """A base and a fine-tuned checkpoint of one architecture, and the target modules to difference.

    Args:
        base: the base checkpoint.
        finetuned: the fine-tuned checkpoint.
        shapes: module -> (out, in), in the order :meth:`deltas` yields them.
        targets: the target module names used.
    """

    base: Checkpoint
    finetuned: Checkpoint
    shapes: dict[str, tuple[int, int]]
    targets: tuple[str, ...]

    @property
    def source(self) -> str:
        """``"base -> finetuned"``, as the user named them."""
        return f"{self.base.name} -> {self.finetuned.name}"

    @property
    def elements(self) -> int:
        """Total number of ΔW entries over the modules."""
        return sum(m * n for m, n in self.shapes.values())

    def deltas(self) -> Iterator[tuple[str, Tensor]]:
        """Yield ``(module, ΔW)`` one module at a time; ΔW = W_finetuned − W_base (float32, or float64).

        Each weight is read with its own ``safe_open`` (the file is closed and unmapped after the read), and
        nothing of a module is kept once the next one is requested: peak memory is one module's weights.

        Raises:
            InputError: NaN/Inf in a weight (naming the file and key), a non-floating dtype, an unreadable tensor.
        """
        for module in self.shapes:
            key = f"{module}.weight"
            delta = _read(self.finetuned, key, None)
            delta = _read(self.base, key, delta)
            yield module, delta
            del delta


def _read(checkpoint: Checkpoint, key: str, minuend: Tensor | None) -> Tensor:
    """The weight ``key`` as a fresh float32+ tensor, or ``minuend − weight`` computed in place on ``minuend``."""
    file = checkpoint.files[key]
    with open_safetensors(file, key) as handle:
        try:
            weight = handle.get_tensor(key)  # a view of the file's memory map: copied or read, never written
        except RuntimeError as error:
            raise InputError(f"{file}: {key}: unreadable tensor: {error}") from None
        if not weight.dtype.is_floating_point:
            raise InputError(f"{file}: {key}: dtype {weight.dtype} is not floating point (quantized?)")
        if not bool(torch.isfinite(weight).all()):
            raise InputError(f"{file}: {key}: NaN or infinite values")
        if minuend is None:
            return weight.to(torch.promote_types(weight.dtype, torch.float32), copy=True)
        return minuend.to(torch.promote_types(minuend.dtype, weight.dtype)).sub_(weight)


def open_pair(base: str, finetuned: str, targets: Sequence[str] = tuple(QWEN_LINEAR_MODULES)) -> WeightPair:
    """Resolve both models, check their architecture and plan the target modules (no weights read yet).

    Args:
        base: base model (tiny name, local directory, Hub name).
        finetuned: fine-tuned model of the same architecture.
        targets: last names of the modules to difference (default: every Qwen2 linear projection).
    """
    targets = tuple(dict.fromkeys(targets))
    if not targets:
        raise InputError("target_modules: name at least one module")
    base_ckpt = resolve_checkpoint(base, "base")
    finetuned_ckpt = resolve_checkpoint(finetuned, "finetuned")
    check_same_architecture(base_ckpt, finetuned_ckpt)
    return WeightPair(base_ckpt, finetuned_ckpt, plan_modules(base_ckpt, finetuned_ckpt, targets), targets)
