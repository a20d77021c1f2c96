"""Factor files: low-rank updates ΔW per module, stored as safetensors, validated on load.

Two layouts, keyed by the base model's module path (``model.layers.0.self_attn.q_proj``, no PEFT prefix):

- LoRA factors (``svd_factors_rank{r}.safetensors``): ``<module>.lora_A`` (r×in) and ``<module>.lora_B``
  (out×r), with B·A = ΔW: the update itself, LoRA scaling folded out.
- SVD form (``synthesized_delta_rank{R}.safetensors``): ``<module>.U`` (out×R), ``<module>.S`` (R) and
  ``<module>.V`` (in×R), with ΔW = U·diag(S)·Vᵀ.

Either layout loads as ``{module: (B, A)}`` (the SVD form as B = U·diag(S), A = Vᵀ). String metadata
(source, rank, method, ...) travels in the safetensors header. Files are written atomically; pickles
(``.pt``/``.pth``/``.bin``) are refused: safetensors cannot execute code on load.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from svdlora_pl.errors import InputError
from svdlora_pl.io import atomic_write_bytes

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]
LORA_KEYS = ("lora_A", "lora_B")
SVD_KEYS = ("U", "S", "V")


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        hint = (
            " (pickled checkpoints are refused; save tensors with safetensors)" if path.suffix != ".safetensors" else ""
        )
        raise InputError(f"{path}: not a readable safetensors file{hint}: {error}") from None


def _group(path: Path, tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        module, _, part = key.rpartition(".")
        if not module or part not in LORA_KEYS + SVD_KEYS:
            raise InputError(f"{path}: {key}: expected '<module>.lora_A/lora_B' or '<module>.U/S/V' keys")
        if not torch.isfinite(tensor).all():
            raise InputError(f"{path}: {key}: NaN or infinite values")
        modules.setdefault(module, {})[part] = tensor
    if not modules:
        raise InputError(f"{path}: no factors in the file")
    return modules


def _as_lora(path: Path, module: str, parts: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    if set(parts) == set(LORA_KEYS):
        A, B = parts["lora_A"], parts["lora_B"]
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
            raise InputError(
                f"{path}: {module}: lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)} are not r×in and out×r"
            )
        return B, A
    if set(parts) == set(SVD_KEYS):
        U, S, V = parts["U"], parts["S"], parts["V"]
        if U.ndim != 2 or S.ndim != 1 or V.ndim != 2 or not U.shape[1] == S.shape[0] == V.shape[1]:
            raise InputError(
                f"{path}: {module}: U {tuple(U.shape)}, S {tuple(S.shape)}, V {tuple(V.shape)} are not out×R, R, in×R"
            )
        return U * S, V.T.contiguous()
    raise InputError(f"{path}: {module}: has {sorted(parts)}; expected lora_A + lora_B or U + S + V")


def load_factors(path: str | os.PathLike[str]) -> tuple[Factors, dict[str, str]]:
    """Read a factor file in either layout: ``({module: (B, A)}, metadata)`` with B·A = ΔW."""
    file = Path(path)
    tensors, metadata = _read(file)
    return {module: _as_lora(file, module, parts) for module, parts in _group(file, tensors).items()}, metadata


def _listing(names: list[str]) -> str:
    return f"{names[:3]}{'...' if len(names) > 3 else ''}"


def factors_for_layers(path: str | os.PathLike[str], layers: Sequence[Any]) -> Factors:
    """The factors of every LoRA layer (``LoRALayerRef``-like: ``name``, ``A``, ``B``) from a factor file, checked.

    The file must hold exactly the layers' modules, each with the layer's (out, in) shape; otherwise an
    :class:`InputError` names the missing and extra modules or the first mismatched shape.
    """
    factors, _ = load_factors(path)
    names = {ref.name for ref in layers}
    missing, extra = sorted(names - set(factors)), sorted(set(factors) - names)
    if missing or extra:
        raise InputError(
            f"{path}: modules do not match the model's LoRA layers (missing: {_listing(missing)}, "
            f"extra: {_listing(extra)})"
        )
    for ref in layers:
        B, A = factors[ref.name]
        shape, expected = (B.shape[0], A.shape[1]), (ref.B.shape[0], ref.A.shape[1])
        if shape != expected:
            raise InputError(f"{path}: {ref.name}: teacher update is {shape}, the layer is {expected}")
    return {ref.name: factors[ref.name] for ref in layers}


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """The safetensors serialization of ``tensors`` with a canonical header: equal content gives equal bytes.

    The safetensors writer emits ``__metadata__`` from a hash map, in an order that varies between runs; the
    header (8-byte little-endian length + JSON, space-padded to a multiple of 8) is rebuilt with sorted keys.
    Tensor offsets are relative to the end of the header, so the data bytes are kept as they are.
    """
    import json

    from safetensors.torch import save

    raw = save(dict(tensors), metadata=dict(metadata or {}))
    length = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8 : 8 + length]), sort_keys=True, separators=(",", ":")).encode("utf-8")
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + raw[8 + length :]


def save_factors(
    path: str | os.PathLike[str],
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``{module: (B, A)}`` as ``<module>.lora_A`` / ``<module>.lora_B`` (contiguous, atomically)."""
    tensors = {}
    for module, (B, A) in factors.items():
        tensors[f"{module}.lora_A"] = A.detach().contiguous().cpu()
        tensors[f"{module}.lora_B"] = B.detach().contiguous().cpu()
    return atomic_write_bytes(path, safetensors_bytes(tensors, metadata))
