"""Random factored updates with known structure, and their dense float64 references (numpy)."""

from __future__ import annotations

import numpy as np
import torch

F64 = torch.float64


def factors(m: int, n: int, r: int, seed: int, *, rank_b: int | None = None, rank_a: int | None = None):
    """Random B (m×r), A (r×n) in float64; ``rank_b``/``rank_a`` make a factor rank-deficient (a product of thinner ones)."""
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(m, r, generator=g, dtype=F64)
    A = torch.randn(r, n, generator=g, dtype=F64)
    if rank_b is not None:
        B = torch.randn(m, rank_b, generator=g, dtype=F64) @ torch.randn(rank_b, r, generator=g, dtype=F64)
    if rank_a is not None:
        A = torch.randn(r, rank_a, generator=g, dtype=F64) @ torch.randn(rank_a, n, generator=g, dtype=F64)
    return B, A


def dense(B: torch.Tensor, A: torch.Tensor, scale: float = 1.0) -> np.ndarray:
    return scale * (B.double().numpy() @ A.double().numpy())


def np_svdvals(B: torch.Tensor, A: torch.Tensor, scale: float = 1.0) -> np.ndarray:
    return np.linalg.svd(dense(B, A, scale), compute_uv=False)


# (id, m, n, r, scale, kwargs of `factors`; zero=True sets B = 0)
CASES = [
    ("random", 40, 30, 6, 0.5, {}),
    ("r>n", 12, 5, 8, 2.0, {}),
    ("r>m", 4, 15, 9, 1.0, {}),
    ("r>m,n", 3, 4, 7, -1.5, {}),
    ("1x1", 1, 1, 1, 3.0, {}),
    ("1x1,r=3", 1, 1, 3, 1.0, {}),
    ("row", 1, 10, 4, 1.0, {}),
    ("rank-deficient B", 30, 20, 6, 1.0, {"rank_b": 2}),
    ("rank-deficient A", 30, 20, 6, 1.0, {"rank_a": 3}),
    ("zero B", 25, 18, 4, 1.0, {"zero": True}),
]


def make_case(m, n, r, kwargs, seed=0):
    kwargs = dict(kwargs)
    zero = kwargs.pop("zero", False)
    B, A = factors(m, n, r, seed, **kwargs)
    return (torch.zeros_like(B) if zero else B), A
