"""Factor files: both layouts round-trip; every malformed file is a one-line InputError naming file and key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from svdlora_pl.errors import InputError
from svdlora_pl.lora import factor_files as factors_module
from svdlora_pl.lora.factor_files import (
    SAFETENSORS_DTYPES,
    load_factors,
    safetensors_bytes,
    save_factors,
    write_safetensors,
)

MODULE = "model.layers.0.self_attn.q_proj"


def test_lora_layout_round_trips_with_metadata(tmp_path):
    B, A = torch.randn(6, 2), torch.randn(2, 5)
    path = save_factors(tmp_path / "f.safetensors", {MODULE: (B, A)}, {"rank": "2", "source": "test"})
    factors, metadata = load_factors(path)
    torch.testing.assert_close(factors[MODULE][0], B)
    torch.testing.assert_close(factors[MODULE][1], A)
    assert metadata == {"rank": "2", "source": "test"}
    assert [p.name for p in tmp_path.iterdir()] == ["f.safetensors"]


def test_svd_layout_loads_as_b_times_a_equal_to_usv(tmp_path):
    U, _ = torch.linalg.qr(torch.randn(6, 3, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(5, 3, dtype=torch.float64))
    S = torch.tensor([3.0, 2.0, 0.5], dtype=torch.float64)
    save_file(
        {f"{MODULE}.U": U.contiguous(), f"{MODULE}.S": S, f"{MODULE}.V": V.contiguous()},
        str(tmp_path / "d.safetensors"),
    )
    ((B, A),) = load_factors(tmp_path / "d.safetensors")[0].values()
    torch.testing.assert_close(B @ A, U @ torch.diag(S) @ V.T)


def write(tmp_path: Path, tensors: dict) -> Path:
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize(
    "tensors, message",
    [
        ({f"{MODULE}.lora_A": torch.randn(2, 5)}, "has \\['lora_A'\\]; expected lora_A \\+ lora_B"),
        ({f"{MODULE}.lora_A": torch.randn(2, 5), f"{MODULE}.lora_B": torch.randn(6, 3)}, "are not r×in and out×r"),
        (
            {f"{MODULE}.U": torch.randn(6, 3), f"{MODULE}.S": torch.randn(2), f"{MODULE}.V": torch.randn(5, 3)},
            "are not out×R, R, in×R",
        ),
        (
            {f"{MODULE}.lora_A": torch.full((2, 5), float("nan")), f"{MODULE}.lora_B": torch.randn(6, 2)},
            f"{MODULE}.lora_A: NaN or infinite values",
        ),
        ({f"{MODULE}.weight": torch.randn(2, 2)}, f"{MODULE}.weight: expected"),
    ],
)
def test_malformed_factor_files(tmp_path, tensors, message):
    path = write(tmp_path, tensors)
    with pytest.raises(InputError, match=f"^{path}: .*{message}"):
        load_factors(path)


def test_pickles_and_missing_files_are_refused(tmp_path):
    torch.save({f"{MODULE}.lora_A": torch.randn(2, 5)}, tmp_path / "factors.pth")
    with pytest.raises(InputError, match="pickled checkpoints are refused"):
        load_factors(tmp_path / "factors.pth")
    with pytest.raises(InputError, match="file not found"):
        load_factors(tmp_path / "absent.safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="not a readable safetensors file"):
        load_factors(tmp_path / "empty.safetensors")


def test_equal_content_gives_equal_bytes(tmp_path):
    factors = {MODULE: (torch.randn(6, 2), torch.randn(2, 5))}
    metadata = {f"key{i}": str(i) for i in range(20)}  # the safetensors writer orders these differently per run
    first = save_factors(tmp_path / "a.safetensors", factors, metadata).read_bytes()
    second = save_factors(tmp_path / "b.safetensors", factors, dict(reversed(metadata.items()))).read_bytes()
    assert first == second
    assert load_factors(tmp_path / "b.safetensors")[1] == metadata


def mixed_tensors() -> dict[str, torch.Tensor]:
    """One tensor of every supported dtype (names out of order), a scalar, an empty and a non-ASCII name."""
    g = torch.Generator().manual_seed(0)
    tensors = {
        f"m{(7 * i) % 5}.{str(dt)[6:]}": (torch.randn(3, 5, generator=g) * 9).to(dt)
        for i, dt in enumerate(SAFETENSORS_DTYPES)
    }
    tensors.update(
        {"scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4), "é✓.U": torch.ones(2, dtype=torch.float64)}
    )
    return tensors


def test_streamed_file_is_the_canonical_serialization(tmp_path):
    tensors = mixed_tensors()
    metadata = {f"key{i}": str(i) for i in range(12)} | {"naïve": "✓ yes"}
    path = write_safetensors(tmp_path / "f.safetensors", tensors, metadata)
    assert path.read_bytes() == safetensors_bytes(tensors, metadata)
    assert write_safetensors(tmp_path / "g.safetensors", tensors).read_bytes() == safetensors_bytes(tensors)
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == metadata
        for key, tensor in tensors.items():
            assert torch.equal(handle.get_tensor(key), tensor)
    # non-contiguous tensors and dtype conversion, one tensor at a time
    floats = {"b.lora_B": torch.randn(6, 4, dtype=torch.float64).T, "a.lora_A": torch.randn(2, 3, dtype=torch.bfloat16)}
    converted = write_safetensors(tmp_path / "h.safetensors", floats, dtype=torch.float32).read_bytes()
    assert converted == safetensors_bytes({k: v.float().contiguous() for k, v in floats.items()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.safetensors", "g.safetensors", "h.safetensors"]


def test_streamed_write_is_atomic_and_checked(tmp_path, monkeypatch):
    target = tmp_path / "f.safetensors"
    target.write_bytes(b"old")
    calls = []

    def fail_second(tensor):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())

    monkeypatch.setattr(factors_module, "_data", fail_second)
    with pytest.raises(OSError, match="disk full"):
        write_safetensors(target, {"a": torch.ones(3), "b": torch.ones(2)})
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.safetensors"]
    monkeypatch.undo()
    with pytest.raises(TypeError, match="complex64"):
        write_safetensors(target, {"a": torch.ones(3), "z": torch.ones(2, dtype=torch.complex64)})
    with pytest.raises(TypeError, match="str to str"):
        write_safetensors(target, {"a": torch.ones(3)}, {"rank": 3})  # type: ignore[dict-item]
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.safetensors"]


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _peak_growth(write) -> int:
    """Growth of this process's peak RSS while ``write()`` runs (VmHWM reset through /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")
    before = _status("VmRSS")
    write()
    return _status("VmHWM") - before


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs")
def test_streamed_write_never_holds_the_file(tmp_path):
    tensors = {f"model.layers.{i}.U": torch.randn(1 << 20) for i in range(24)}  # 96 MiB of float32
    size = 96 << 20
    streamed = _peak_growth(lambda: write_safetensors(tmp_path / "a.safetensors", tensors, {"k": "v"}))
    assert streamed < 8 << 20  # a few MiB of interpreter noise at most, no copy of a tensor or of the file
    in_memory = _peak_growth(lambda: (tmp_path / "b.safetensors").write_bytes(safetensors_bytes(tensors, {"k": "v"})))
    assert in_memory > size  # the measurement sees whole-file copies
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
