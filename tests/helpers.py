"""Small shared pieces for the tests: a seeded tiny fit, a TensorBoard scalar reader, a teacher factor file, a check
of a tool's ``--help``."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger

ROOT = Path(__file__).resolve().parents[1]
"""The repository root."""

TEACHER_TARGETS = ["q_proj", "v_proj", "down_proj"]
TINY_SHAPES = {"q_proj": (128, 128), "v_proj": (64, 128), "down_proj": (128, 352)}


def make_trainer(root: Path, **overrides: Any) -> pl.Trainer:
    """A CPU fp32 trainer writing TensorBoard logs under ``root``; quiet, one log point per step."""
    options: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_epochs=1,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=TensorBoardLogger(root, name="lightning_logs"),
        default_root_dir=root,
    )
    options.update(overrides)
    return pl.Trainer(**options)


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the TensorBoard event files in ``log_dir``: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def teacher_file(tmp_path: Path, rank: int, seed: int = 0) -> tuple[Path, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """A random rank-``rank`` teacher ``{module: (B, A)}`` for TEACHER_TARGETS of the tiny model's 4 layers, saved."""
    from svdlora_pl.lora.factor_files import save_factors

    generator = torch.Generator().manual_seed(seed)
    factors = {}
    for layer in range(4):
        for target in TEACHER_TARGETS:
            block = "mlp" if target == "down_proj" else "self_attn"
            out, inp = TINY_SHAPES[target]
            B = torch.randn(out, rank, generator=generator) * 0.05
            A = torch.randn(rank, inp, generator=generator) * 0.05
            factors[f"model.layers.{layer}.{block}.{target}"] = (B, A)
    path = save_factors(tmp_path / f"teacher_rank{rank}.safetensors", factors)
    return path, factors


def squeezed(text: str) -> str:
    """``text`` without whitespace: help output wraps lines wherever the terminal width falls."""
    return re.sub(r"\s", "", text)


def assert_options_documented(
    printed: str, function: Callable[..., Any], groups: dict[str, type] | None = None
) -> None:
    """The docstring of ``function`` documents exactly its parameters, in order, and ``--help`` (``printed``) shows
    each as ``--name`` with its description; a parameter in ``groups`` is a group, shown with its title (without the
    final period) and its class's fields as ``--name.field`` with theirs."""
    from docstring_parser import parse

    text = squeezed(printed)
    params = parse(inspect.getdoc(function) or "").params
    assert [p.arg_name for p in params] == list(inspect.signature(function).parameters)
    for param in params:
        assert f"--{param.arg_name}" in text and squeezed(param.description or "").rstrip(".") in text, param.arg_name
        group = (groups or {}).get(param.arg_name)
        for field in parse(inspect.getdoc(group) or "").params if group else ():
            option = f"--{param.arg_name}.{field.arg_name}"
            assert option in text and squeezed(field.description or "") in text, option
