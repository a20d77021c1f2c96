"""The memory plan of a training config on one device, without loading any weights (``svdlora estimate-memory``).

Usage::

    from svdlora_pl.cli.lightning import resolve_fit_config
    from svdlora_pl.memory.estimate import estimate_memory
    from svdlora_pl.memory.table import format_table

    config = resolve_fit_config(["-c", "configs/qwen2.5-math-7b-32gb.yaml", "-c", "configs/distributed/fsdp.yaml"])
    report = estimate_memory(config, budget_gb=32)
    print(format_table(report)); report["fits"]

The config is the one ``svdlora fit`` would run, as its parser resolves it. The model is built on the ``meta``
device from its ``config.json`` (:func:`svdlora_pl.memory.presets.resolve_architecture`: never a download), the
config's fields become a :class:`~svdlora_pl.memory.activations.TrainingSetup`
(:mod:`svdlora_pl.memory.fit_setup`) and the plan follows (:mod:`svdlora_pl.memory.plan`), with the largest
micro-batch and ``max_length`` that fit the budget. ``docs/memory.md`` explains how to read the table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from svdlora_pl.errors import InputError
from svdlora_pl.memory.architecture import count_parameters
from svdlora_pl.memory.fit_setup import read_fit_config, resolved, statements, training_setup
from svdlora_pl.memory.initialization import gradient_init_of, plan_gradient_init
from svdlora_pl.memory.plan import largest_fitting, plan_memory
from svdlora_pl.memory.presets import resolve_architecture
from svdlora_pl.memory.table import GB


def dtype_name(value: Any) -> str | None:
    """``bfloat16`` for ``torch.bfloat16`` or ``"bfloat16"``; None stays None."""
    return None if value is None else str(value).removeprefix("torch.")


def estimate_memory(
    config: Mapping[str, Any], budget_gb: float = 32.0, model_config: str | None = None
) -> dict[str, Any]:
    """The memory plan of one training step of a config on one device, against a budget.

    Nothing is downloaded or allocated: base weights, LoRA parameters, gradients, optimizer states, activations
    with and without gradient checkpointing, logits, CUDA overhead and the total, with the largest micro-batch and
    ``max_length`` that fit; with a ``GradientSVDInit`` initializer also its initialization phase
    (:mod:`svdlora_pl.memory.initialization`), which must fit too.

    Args:
        config: The resolved ``svdlora fit`` config: its ``model``, ``data`` and ``trainer`` values as
            :func:`svdlora_pl.cli.lightning.resolve_fit_config` returns them.
        budget_gb: Device memory budget in GB (10⁹ bytes).
        model_config: The architecture, instead of looking up model.model_name_or_path: a config.json file or a
            directory holding one, or a preset (qwen2.5-7b, qwen2.5-math-7b, svdlora:tiny-qwen2).

    Returns:
        The report: ``plan`` (:class:`~svdlora_pl.memory.plan.MemoryPlan` as a dict), ``init_phase``
        (:class:`~svdlora_pl.memory.initialization.InitPhasePlan` as a dict, or None), ``fits``, ``setup``,
        ``architecture``, ``parameters``, ``largest_micro_batch``, ``largest_max_length``, ``notes``, ...;
        :func:`svdlora_pl.memory.table.format_table` prints it.

    Raises:
        InputError: A budget that is not positive, a config value the plan does not model, or an architecture
            that cannot be found; the message names the field.
    """
    if not budget_gb > 0:
        raise InputError(f"budget_gb: must be positive, got {budget_gb}")
    settings = read_fit_config(config)
    hf_config, source = resolve_architecture(settings.model_name_or_path, model_config, settings.trust_remote_code)
    own = (
        hf_config.dtype if hasattr(hf_config, "dtype") else getattr(hf_config, "torch_dtype", None)
    )  # older transformers
    native = dtype_name(own)
    setup = training_setup(settings, native)
    arch, counts = count_parameters(hf_config, setup.lora)
    plan = plan_memory(arch, counts, setup)
    budget = budget_gb * GB
    init = gradient_init_of(resolved(config, "model.initializer")) if setup.lora is not None else None
    init_phase = plan_gradient_init(arch, counts, setup, plan, init) if init is not None else None
    return {
        "model": settings.model_name_or_path,
        "architecture_source": source,
        "architecture": dataclasses.asdict(arch),
        "parameters": dataclasses.asdict(counts),
        "setup": {
            **dataclasses.asdict(setup),
            "precision": settings.precision,
            "optimizer": settings.optimizer,
            "accumulate_grad_batches": settings.accumulate,
        },
        "plan": dataclasses.asdict(plan),
        "init_phase": None if init_phase is None else dataclasses.asdict(init_phase),
        "budget_bytes": budget,
        "fits": plan.fits(budget) and (init_phase is None or init_phase.total <= budget),
        "largest_micro_batch": largest_fitting(arch, counts, setup, budget, "micro_batch", 1 << 16),
        "largest_max_length": largest_fitting(arch, counts, setup, budget, "seq_len", arch.max_positions),
        "notes": statements(setup, settings),
    }
