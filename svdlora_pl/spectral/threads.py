"""The number of intra-op CPU threads torch uses, set for one block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op CPU threads (``torch.set_num_threads``; None: unchanged), then restore.

    Many small QRs are not worth threads: with 2 threads on 2 busy cores the 196 modules of a 7B adapter took 15-23 s
    (threads wait for each other thousands of times), with 1 thread 0.13-0.2 s (0.09 s on idle cores with 2 threads).
    The setting is process-wide while the block runs.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)
