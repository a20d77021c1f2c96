"""Matplotlib figures of LoRA spectra, built without pyplot.

Figures are :class:`matplotlib.figure.Figure` objects made by :func:`new_figure`: no global backend is selected
(a notebook keeps its inline backend), no window opens, nothing is registered in pyplot's figure manager (so
nothing needs closing), and ``figure.savefig`` renders with Agg. Matplotlib itself is imported on first use, not
when this module is: the callbacks import it and stay cheap to import.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def new_figure(figsize: tuple[float, float], nrows: int = 1, ncols: int = 1, **subplots: Any) -> tuple[Figure, Any]:
    """A constrained-layout figure of ``figsize`` inches and its axes (``Figure.subplots(nrows, ncols, ...)``)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, layout="constrained")
    return figure, figure.subplots(nrows, ncols, **subplots)


def _grid_position(name: str) -> tuple[str, str]:
    """(row, column) of a module in the layer × module heat map: the layer index and the module's own name."""
    match = _LAYER.search(name)
    row = match.group(1) if match else name.rpartition(".")[0] or name
    return row, name.rpartition(".")[2]


def module_heatmap(values: Mapping[str, float], title: str, vmin: float = 0.0, vmax: float = 1.0) -> Figure:
    """Heat map of one per-module value (e.g. energy@1) with layers as rows and module kinds as columns.

    ``vmin``/``vmax`` fix the colour range (values outside it saturate), so maps of different steps compare; a
    module absent from ``values`` stays blank.
    """
    import numpy as np

    positions = {name: _grid_position(name) for name in values}
    rows = sorted({r for r, _ in positions.values()}, key=lambda r: (not r.isdigit(), int(r) if r.isdigit() else r))
    cols = list(dict.fromkeys(c for _, c in positions.values()))
    grid = np.full((len(rows), len(cols)), np.nan)
    for name, (row, col) in positions.items():
        grid[rows.index(row), cols.index(col)] = values[name]
    fig, ax = new_figure((1.0 + 0.8 * len(cols), 1.2 + 0.25 * len(rows)))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    return fig


def spectra_plot(spectra: Mapping[str, np.ndarray], title: str) -> Figure:
    """Singular values (log scale) of a few modules, index on the x axis."""
    import numpy as np

    fig, ax = new_figure((6, 4))
    for name, values in spectra.items():
        ax.semilogy(np.arange(1, len(values) + 1), np.maximum(values, 1e-12), marker=".", label=name)
    ax.set_xlabel("index i")
    ax.set_ylabel("singular value σ_i")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return fig
