"""Factor files: both layouts round-trip; every malformed file is a one-line InputError naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from svdlora_pl.errors import InputError
from svdlora_pl.factors import load_factors, save_factors

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
