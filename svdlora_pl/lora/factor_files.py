"""Factor files: low-rank updates ΔW per module, stored as safetensors, validated on load.

Two layouts, keyed by the base model's module path (``model.layers.0.self_attn.q_proj``, no PEFT prefix):

- LoRA factors (``svd_factors_rank{r}.safetensors``): ``<module>.lora_A`` (r×in) and ``<module>.lora_B``
  (out×r), with B·A = ΔW: the update itself, LoRA scaling folded out.
- SVD form (``synthesized_delta_rank{R}.safetensors``): ``<module>.U`` (out×R), ``<module>.S`` (R) and
  ``<module>.V`` (in×R), with ΔW = U·diag(S)·Vᵀ.

Either layout loads as ``{module: (B, A)}`` (the SVD form as B = U·diag(S), A = Vᵀ). String metadata
(source, rank, method, ...) travels in the safetensors header. Files are written atomically and streamed
(:func:`write_safetensors`: one tensor at a time, never the whole file in memory), with a canonical header so that
equal content gives equal bytes; pickles (``.pt``/``.pth``/``.bin``) are refused: safetensors cannot execute code on
load.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from svdlora_pl.errors import InputError
from svdlora_pl.io import atomic_file, open_safetensors
from svdlora_pl.spectral import cpu_threads

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]
LORA_KEYS = ("lora_A", "lora_B")
SVD_KEYS = ("U", "S", "V")
# safetensors dtype names, in the order its writer lays the data out (its Dtype enum, descending; then by name)
SAFETENSORS_DTYPES: dict[torch.dtype, str] = {
    torch.uint64: "U64",
    torch.int64: "I64",
    torch.float64: "F64",
    torch.float32: "F32",
    torch.uint32: "U32",
    torch.int32: "I32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.uint16: "U16",
    torch.int16: "I16",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_DATA_ORDER = {dtype: position for position, dtype in enumerate(SAFETENSORS_DTYPES)}


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with open_safetensors(path) as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})


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
    with cpu_threads(1):  # checks and copies over memory-mapped pages: threads only contend on busy cores
        modules = _group(file, tensors)
        del tensors  # each module's stored tensors are released as soon as its (B, A) is made
        return {module: _as_lora(file, module, modules.pop(module)) for module in list(modules)}, metadata


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
    Tensor offsets are relative to the end of the header, so the data bytes are kept as they are. Builds the whole
    file in memory (several copies of it); :func:`write_safetensors` writes the same bytes streamed.
    """
    from safetensors.torch import save

    raw = save(dict(tensors), metadata=dict(metadata or {}))
    length = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8 : 8 + length]), sort_keys=True, separators=(",", ":")).encode("utf-8")
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + raw[8 + length :]


def _data(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes, little-endian, as a view of its (CPU, contiguous) memory where the machine allows."""
    data = tensor.reshape(-1).view(torch.uint8).numpy()
    if sys.byteorder == "big" and tensor.element_size() > 1:
        data = data.view(f"u{tensor.element_size()}").byteswap()
    return memoryview(data)


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``tensors`` as a safetensors file, streamed and atomically: the bytes of :func:`safetensors_bytes`.

    The header is built here (8-byte little-endian length, then JSON with sorted keys: ``__metadata__`` and per
    tensor ``dtype``, ``shape``, ``data_offsets``, space-padded to a multiple of 8), the data follows in the
    safetensors writer's order (dtype, then name). Each tensor is moved to the CPU, made contiguous and converted
    one at a time as it is written to a temporary sibling file, which is then renamed over ``path``
    (:func:`svdlora_pl.io.atomic_file`): memory beyond the tensors themselves is one tensor at most (none for CPU
    contiguous tensors already in ``dtype``), and nothing half-written is left behind.

    Args:
        path: destination file.
        tensors: ``{name: tensor}`` of the dtypes in :data:`SAFETENSORS_DTYPES`.
        metadata: string key/value pairs for the header's ``__metadata__``.
        dtype: convert every tensor to this dtype as it is written (None: keep each tensor's dtype).
    """
    meta = dict(metadata or {})
    if not all(isinstance(key, str) and isinstance(value, str) for key, value in meta.items()):
        raise TypeError(f"{path}: safetensors metadata must map str to str")
    layout: list[tuple[str, torch.Tensor]] = []
    header: dict[str, Any] = {"__metadata__": meta}
    for name, tensor in tensors.items():
        target = tensor.dtype if dtype is None else dtype
        if target not in SAFETENSORS_DTYPES:
            raise TypeError(f"{path}: {name}: dtype {target} has no safetensors equivalent here")
        layout.append((name, tensor))
        header[name] = {"dtype": SAFETENSORS_DTYPES[target], "shape": list(tensor.shape)}
    layout.sort(key=lambda item: (_DATA_ORDER[dtype or item[1].dtype], item[0]))
    offset = 0
    for name, tensor in layout:
        end = offset + tensor.numel() * (dtype or tensor.dtype).itemsize
        header[name]["data_offsets"] = [offset, end]
        offset = end
    encoded = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    with atomic_file(path) as handle, cpu_threads(1):
        handle.write(len(encoded).to_bytes(8, "little") + encoded)
        for _, tensor in layout:
            handle.write(_data(tensor.detach().to(device="cpu", dtype=dtype).contiguous()))
    return Path(path)


def save_factors(
    path: str | os.PathLike[str],
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``{module: (B, A)}`` as ``<module>.lora_A`` / ``<module>.lora_B`` (streamed, atomically)."""
    tensors = {}
    for module, (B, A) in factors.items():
        tensors[f"{module}.lora_A"] = A
        tensors[f"{module}.lora_B"] = B
    return write_safetensors(path, tensors, metadata)
