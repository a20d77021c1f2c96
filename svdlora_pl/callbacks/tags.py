"""TensorBoard tag names of the LoRA monitors, laid out so that hundreds of LoRA modules stay navigable.

TensorBoard's time-series dashboard (the page it opens on) puts a card for every tag into the group named by the
tag's first path component, and orders cards and groups by name: digits first, then ASCII order, where every
upper-case letter comes before every lower-case one. Every monitor tag therefore starts with :data:`PREFIX`
(``weights``), which sorts after ``train`` and ``val``: the losses are the first cards, and then

- ``weights``: one group with every monitor's across-layer summaries, ``weights/<metric>/<mean|min|max>``, and the
  layer × module heat maps, ``weights/heatmap/<metric>``;
- ``weights.<metric>.<kind>``: one group per metric and module kind (``weights.energy@1.q_proj``) with one card per
  layer, ``weights.<metric>.<kind>/<layer>``: 28 cards for Qwen2.5-7B, in layer order (TensorBoard compares the
  digits of ``layers.10`` as numbers).

``<layer>`` is the base model's module path without ``model.`` (``layers.0.self_attn.q_proj``); ``<kind>`` is its
last component (``q_proj``). :class:`~svdlora_pl.callbacks.TensorBoardDashboard` writes a custom-scalars layout over
the same names (one multi-line chart per metric and kind).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping

import numpy as np

PREFIX = "weights"
"""First component of every monitor tag: sorts after ``train`` and ``val`` in TensorBoard."""
AGGREGATES = ("mean", "min", "max")


def module_kind(layer: str) -> str:
    """``layers.0.self_attn.q_proj`` -> ``q_proj``: the last component of a module path."""
    return layer.rpartition(".")[2]


def summary_tag(metric: str, aggregate: str) -> str:
    """``weights/<metric>/<aggregate>``: a summary over all LoRA layers (``mean``, ``min``, ``max``, ``total``)."""
    return f"{PREFIX}/{metric}/{aggregate}"


def layer_tag(metric: str, layer: str) -> str:
    """``weights.<metric>.<kind>/<layer>``: one layer's value, grouped with the same metric of the same kind."""
    return f"{PREFIX}.{metric}.{module_kind(layer)}/{layer}"


def heatmap_tag(metric: str) -> str:
    """``weights/heatmap/<metric>``: the layer × module heat map image of a metric."""
    return f"{PREFIX}/heatmap/{metric}"


def group(tag: str) -> str:
    """The time-series group TensorBoard shows ``tag`` in: its first path component."""
    return tag.split("/", 1)[0]


def layer_regex(metric: str, kind: str) -> str:
    """A regular expression matching the per-layer tags of ``metric`` for modules of ``kind`` (custom scalars)."""
    return f"^{re.escape(f'{PREFIX}.{metric}.{kind}')}/"


def flatten(per_layer: Mapping[str, Mapping[str, float]], log_per_layer: bool = True) -> dict[str, float]:
    """``{layer: {metric: value}}`` -> summary tags (mean, min, max over layers) and, optionally, per-layer tags."""
    if not per_layer:
        return {}
    metrics: dict[str, float] = {}
    for metric in next(iter(per_layer.values())):
        values = np.array([row[metric] for row in per_layer.values()], dtype=np.float64)
        metrics.update({summary_tag(metric, agg): float(getattr(values, agg)()) for agg in AGGREGATES})
        if log_per_layer:
            metrics.update({layer_tag(metric, layer): float(row[metric]) for layer, row in per_layer.items()})
    return metrics


# ---------------------------------------------------------------- TensorBoard's order
def _is_break(c: str) -> bool:
    return c in "/_" or c.isdigit()


def _consume_number(s: str, i: int) -> int:
    state = "natural"
    while i < len(s):
        c = s[i]
        if state in ("natural", "real") and c in "eE":
            state = "sign"
        elif state == "natural" and c == ".":
            state = "real"
        elif state == "sign" and (c.isdigit() or c in "+-"):
            state = "exponent"
        elif not c.isdigit() or state == "sign":
            break
        i += 1
    return i


def compare_tag_names(a: str, b: str) -> int:
    """TensorBoard's order of tags (``compareTagNames`` in tensorboard/webapp/metrics/utils.ts, ported): -1, 0 or 1.

    Runs of digits compare as numbers (``a2b`` < ``a10b``), ``/``, ``_`` and digits come before any other character
    (``a/a`` < ``a+/a``), and the rest compare by character code (every upper-case letter before lower case).
    """
    ai = bi = 0
    while True:
        if ai == len(a):
            return 0 if bi == len(b) else -1
        if bi == len(b):
            return 1
        if a[ai].isdigit() and b[bi].isdigit():
            aj, bj = _consume_number(a, ai + 1), _consume_number(b, bi + 1)
            an, bn = float(a[ai:aj].rstrip("eE+-.") or 0), float(b[bi:bj].rstrip("eE+-.") or 0)
            if an != bn:
                return -1 if an < bn else 1
            ai, bi = aj, bj
            continue
        if _is_break(a[ai]):
            if not _is_break(b[bi]):
                return -1
        elif _is_break(b[bi]):
            return 1
        elif a[ai] != b[bi]:
            return -1 if a[ai] < b[bi] else 1
        ai, bi = ai + 1, bi + 1


def time_series_groups(tags: Iterable[str]) -> list[str]:
    """The group headers of TensorBoard's time-series page for ``tags``, top to bottom."""
    ordered = sorted(tags, key=functools.cmp_to_key(compare_tag_names))
    return list(dict.fromkeys(group(tag) for tag in ordered))
