"""cpu_threads sets the intra-op thread count for one block and restores it."""

from __future__ import annotations

import pytest
import torch
from spectral.cases import factors

from svdlora_pl.spectral import (
    cpu_threads,
    svdvals_of_modules,
)


def test_cpu_threads_is_scoped():
    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), cpu_threads(1):
        raise RuntimeError("restored on error too")
    assert torch.get_num_threads() == before
    with cpu_threads(None):
        assert torch.get_num_threads() == before
    B, A = factors(5, 4, 2, seed=0)
    svdvals_of_modules({"m": (B, A, 1.0)})
    assert torch.get_num_threads() == before
