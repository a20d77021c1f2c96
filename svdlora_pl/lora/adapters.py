"""PEFT LoRA adapters as per-module factors: read a saved adapter directory, write one back.

A PEFT adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` whose keys look like
``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``. Here a module is named by its base-model
path (``model.layers.0.self_attn.q_proj``, DESIGN.md) and carries its factors in PEFT's orientation:

    ΔW = s · B·A,   A: r×in,  B: out×r,   s = alpha / r   (alpha / √r with ``use_rslora``)

where r and alpha come from ``rank_pattern`` / ``alpha_pattern`` when a pattern matches the module (PEFT's own
matching rule, :func:`peft.utils.other.get_pattern_key`), else from ``r`` / ``lora_alpha``.

Written adapters fold the scaling into the factors and set ``lora_alpha = r`` (s = 1), as PEFT's
``add_weighted_adapter`` does; modules whose rank differs from the most common one get ``rank_pattern`` and
``alpha_pattern`` entries, so plain ``PeftModel.from_pretrained`` rebuilds every module exactly.

Only plain LoRA on ``nn.Linear`` is read: DoRA, bias training, ``modules_to_save``, ``fan_in_fan_out``,
embedding or parameter targets are refused with an :class:`~svdlora_pl.errors.InputError` naming the field.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from svdlora_pl.errors import InputError
from svdlora_pl.io import atomic_directory, open_safetensors
from svdlora_pl.lora.factors import LoRAFactors
from svdlora_pl.lora.layers import PEFT_PREFIX

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"

FACTOR_SUFFIXES = {".lora_A.weight": "A", ".lora_B.weight": "B"}

# Config fields whose non-default value means the adapter is not plain Linear LoRA: field -> allowed values.
_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "use_dora": (False, None),
    "fan_in_fan_out": (False, None),
    "modules_to_save": (None, []),
    "bias": ("none", None),
    "lora_bias": (False, None),
    "target_parameters": (None, []),
    "layer_replication": (None, []),
}


@dataclass(frozen=True)
class LoRAAdapter:
    """A PEFT LoRA adapter read from disk: its config (as saved) and its factors per base module path."""

    path: Path
    config: dict[str, Any]
    modules: dict[str, LoRAFactors]

    @property
    def base_model(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    @property
    def max_rank(self) -> int:
        return max(m.rank for m in self.modules.values())


def peft_key(module: str, factor: str) -> str:
    """The saved PEFT key of ``factor`` ("A" or "B") of base module ``module``."""
    return f"{PEFT_PREFIX}{module}.lora_{factor}.weight"


def split_peft_key(key: str) -> tuple[str, str] | None:
    """``base_model.model.<module>.lora_A.weight`` -> (``<module>``, "A"); None when not a LoRA factor key."""
    for suffix, factor in FACTOR_SUFFIXES.items():
        if key.startswith(PEFT_PREFIX) and key.endswith(suffix):
            module = key[len(PEFT_PREFIX) : -len(suffix)]
            return (module, factor) if module else None
    return None


def lora_scaling(r: int, alpha: float, use_rslora: bool) -> float:
    """PEFT's scaling: s = alpha / r, or alpha / √r with rank-stabilized LoRA."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def module_rank_alpha(config: Mapping[str, Any], module: str) -> tuple[int, float]:
    """(r, alpha) that PEFT gives ``module``: the first matching ``rank_pattern``/``alpha_pattern`` key wins."""
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    r, alpha = config["r"], config["lora_alpha"]
    if rank_pattern or alpha_pattern:  # peft's import costs about a second: only when a pattern needs matching
        from peft.utils.other import get_pattern_key

        r = rank_pattern.get(get_pattern_key(list(rank_pattern), module), r)
        alpha = alpha_pattern.get(get_pattern_key(list(alpha_pattern), module), alpha)
    return int(r), float(alpha)


def _read_config(path: Path) -> dict[str, Any]:
    file = path / CONFIG_NAME
    if not file.is_file():
        raise InputError(f"{file}: file not found (not a PEFT adapter directory)")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{file}: malformed JSON: {error}") from None
    if not isinstance(config, dict):
        raise InputError(f"{file}: expected a JSON object")
    _check_config(file, config)
    return config


def _is_positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _check_config(file: Path, config: dict[str, Any]) -> None:
    """Raise naming the first field that is missing, malformed, or asks for something other than Linear LoRA."""
    if config.get("peft_type") != "LORA":
        raise InputError(f"{file}: peft_type: expected 'LORA', got {config.get('peft_type')!r}")
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise InputError(f"{file}: r: expected a positive integer, got {r!r}")
    if not _is_positive_number(config.get("lora_alpha")):
        raise InputError(f"{file}: lora_alpha: expected a positive number, got {config.get('lora_alpha')!r}")
    if not isinstance(config.get("use_rslora", False), bool):
        raise InputError(f"{file}: use_rslora: expected true or false, got {config.get('use_rslora')!r}")
    for field in ("rank_pattern", "alpha_pattern"):
        pattern = config.get(field) or {}
        if not isinstance(pattern, dict):
            raise InputError(f"{file}: {field}: expected an object of module pattern -> value")
        check = (lambda v: isinstance(v, int) and v >= 1) if field == "rank_pattern" else _is_positive_number
        for key, value in pattern.items():
            if not check(value):
                raise InputError(
                    f"{file}: {field}.{key}: expected a positive {'integer' if field == 'rank_pattern' else 'number'}, got {value!r}"
                )
    for field, allowed in _UNSUPPORTED.items():
        if config.get(field) not in allowed:
            raise InputError(f"{file}: {field}: {config[field]!r} is not supported (only plain LoRA on Linear layers)")


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    with open_safetensors(path / WEIGHTS_NAME) as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


def _group_factors(file: Path, tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{module: {"A": tensor, "B": tensor}}, refusing keys that are not Linear LoRA factors and NaN/inf values."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        parsed = split_peft_key(key)
        if parsed is None:
            raise InputError(
                f"{file}: {key}: not a Linear LoRA factor (expected '{PEFT_PREFIX}<module>.lora_A.weight' or '.lora_B.weight')"
            )
        if tensor.ndim != 2 or not tensor.is_floating_point():
            raise InputError(
                f"{file}: {key}: expected a 2-D floating-point tensor, got {tuple(tensor.shape)} {tensor.dtype}"
            )
        if not torch.isfinite(tensor).all():
            raise InputError(f"{file}: {key}: NaN or infinite values")
        grouped.setdefault(parsed[0], {})[parsed[1]] = tensor
    if not grouped:
        raise InputError(f"{file}: no LoRA factors in the file")
    return grouped


def _module_factors(path: Path, config: dict[str, Any], module: str, parts: dict[str, torch.Tensor]) -> LoRAFactors:
    file = path / WEIGHTS_NAME
    if set(parts) != {"A", "B"}:
        missing = "lora_B" if "A" in parts else "lora_A"
        raise InputError(f"{file}: {peft_key(module, missing[-1])}: missing (each module needs lora_A and lora_B)")
    A, B = parts["A"], parts["B"]
    if A.shape[0] != B.shape[1]:
        raise InputError(
            f"{file}: {module}: lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)} are not r×in and out×r"
        )
    try:
        r, alpha = module_rank_alpha(config, module)
    except re.error as error:
        raise InputError(
            f"{path / CONFIG_NAME}: rank_pattern/alpha_pattern: a key is not a valid pattern: {error}"
        ) from None
    if A.shape[0] != r:
        field = "rank_pattern" if config.get("rank_pattern") else "r"
        raise InputError(
            f"{path / CONFIG_NAME}: {field}: gives rank {r} to {module}, but its lora_A has {A.shape[0]} rows"
        )
    return LoRAFactors(B=B, A=A, scaling=lora_scaling(r, alpha, bool(config.get("use_rslora", False))))


def read_adapter(path: str | os.PathLike[str]) -> LoRAAdapter:
    """Read a PEFT LoRA adapter directory into per-module factors with their PEFT scaling.

    Raises :class:`InputError` (one line naming the file and field) for a missing directory or file, malformed
    or unsupported config, non-LoRA keys, unpaired factors, ranks that disagree with the config, NaN/inf values.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise InputError(f"{directory}: no such adapter directory")
    config = _read_config(directory)
    from svdlora_pl.spectral import cpu_threads

    with cpu_threads(1):  # finiteness checks over memory-mapped pages: two threads only contend on busy cores
        grouped = _group_factors(directory / WEIGHTS_NAME, _read_tensors(directory))
    modules = {module: _module_factors(directory, config, module, parts) for module, parts in sorted(grouped.items())}
    return LoRAAdapter(path=directory, config=config, modules=modules)


def adapter_config(
    ranks: Mapping[str, int], base_model: str | None, task_type: str | None = "CAUSAL_LM", **extra: Any
) -> dict[str, Any]:
    """A PEFT LoRA config whose every module has scaling 1 (alpha = r).

    ``r`` is the most common rank; other modules get exact-path ``rank_pattern``/``alpha_pattern`` entries.
    ``target_modules`` lists the module paths exactly, so no other Linear of the base is adapted.
    """
    from peft import LoraConfig

    r = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {module: rank for module, rank in ranks.items() if rank != r}
    config = LoraConfig(
        r=r,
        lora_alpha=r,
        target_modules=sorted(ranks),
        rank_pattern=dict(pattern),
        alpha_pattern=dict(pattern),
        lora_dropout=0.0,
        bias="none",
        task_type=task_type,
        base_model_name_or_path=base_model,
        **extra,
    )
    data = config.to_dict()
    data["target_modules"] = sorted(ranks)  # to_dict makes a set of it; keep the list stable on disk
    return data


def save_adapter_files(
    directory: Path,
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    base_model: str | None,
    task_type: str | None = "CAUSAL_LM",
    dtype: torch.dtype = torch.float32,
) -> None:
    """Write ``{module: (B, A)}`` (scaling folded in, B·A = ΔW) as a PEFT adapter into an existing directory.

    Not atomic by itself: call it on a staging directory (see :func:`write_adapter`).
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for module, (B, A) in factors.items():
        tensors[peft_key(module, "A")] = A.detach().to(dtype=dtype, device="cpu").contiguous()
        tensors[peft_key(module, "B")] = B.detach().to(dtype=dtype, device="cpu").contiguous()
    config = adapter_config({m: int(A.shape[0]) for m, (_, A) in factors.items()}, base_model, task_type)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_adapter(
    path: str | os.PathLike[str],
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    base_model: str | None,
    task_type: str | None = "CAUSAL_LM",
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Atomically write ``{module: (B, A)}`` as a standard PEFT adapter directory at ``path`` (scaling 1)."""
    with atomic_directory(path) as staging:
        save_adapter_files(staging, factors, base_model, task_type, dtype)
    return Path(path)
