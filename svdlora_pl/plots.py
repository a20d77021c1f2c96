"""Matplotlib figures of LoRA spectra (headless: the Agg backend, figures returned, never shown)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _grid_position(name: str) -> tuple[str, str]:
    """(row, column) of a module in the layer × module heat map: the layer index and the module's own name."""
    match = _LAYER.search(name)
    row = match.group(1) if match else name.rpartition(".")[0] or name
    return row, name.rpartition(".")[2]


def energy_heatmap(values: Mapping[str, float], title: str) -> Figure:
    """Heat map of one per-module value (e.g. energy@k) with layers as rows and module kinds as columns."""
    positions = {name: _grid_position(name) for name in values}
    rows = sorted({r for r, _ in positions.values()}, key=lambda r: (not r.isdigit(), int(r) if r.isdigit() else r))
    cols = list(dict.fromkeys(c for _, c in positions.values()))
    grid = np.full((len(rows), len(cols)), np.nan)
    for name, (row, col) in positions.items():
        grid[rows.index(row), cols.index(col)] = values[name]
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(cols), 1.2 + 0.25 * len(rows)), layout="constrained")
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    return fig


def spectra_plot(spectra: Mapping[str, np.ndarray], title: str) -> Figure:
    """Singular values (log scale) of a few modules, index on the x axis."""
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    for name, values in spectra.items():
        ax.semilogy(np.arange(1, len(values) + 1), np.maximum(values, 1e-12), marker=".", label=name)
    ax.set_xlabel("index i")
    ax.set_ylabel("singular value σ_i")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return fig


def close_figures(figures: Iterable[Figure]) -> None:
    """Release figures from pyplot's registry once they are written."""
    for figure in figures:
        plt.close(figure)
