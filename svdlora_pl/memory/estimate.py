"""``svdlora estimate-memory``: the memory plan of a training config on one device, without loading any weights.

Usage::

    svdlora estimate-memory -c configs/qwen2.5-math-7b-32gb.yaml
    svdlora estimate-memory -c configs/tiny.yaml --budget-gb 1
    svdlora estimate-memory -c my.yaml --model-config qwen2.5-7b --json plan.json

The config is read as ``svdlora fit`` reads it (``model:``, ``data:``, ``trainer:`` sections, plain or
``class_path``/``init_args``; a missing field takes the class default). The model is built on the ``meta`` device
from its ``config.json``: a local directory, the Hugging Face cache (never downloaded), ``--model-config`` (a
``config.json`` file or directory, or a preset: ``qwen2.5-7b``, ``qwen2.5-math-7b``, ``svdlora:tiny-qwen2``), or,
for the Qwen2.5-7B and Qwen2.5-Math-7B hub names missing from the cache, their preset. The table (stdout) gives base weights, LoRA
parameters, gradients, optimizer states, activations with and without gradient checkpointing, logits, CUDA
overhead and the total against ``--budget-gb`` (GB = 10⁹ bytes), with the largest micro-batch and ``max_length``
that fit. The formulas are in :mod:`svdlora_pl.memory.plan`; ``docs/memory.md`` explains how to read the table.

Exit 2 with one line when the config cannot fit the budget, and for a missing or malformed config, a field of
the wrong type, or an unknown preset.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from svdlora_pl.cli.tool_args import ToolParser
from svdlora_pl.embedded.tiny import TINY_MODEL
from svdlora_pl.errors import InputError
from svdlora_pl.io import atomic_write_text
from svdlora_pl.memory.plan import (
    ALLOCATOR_SLACK,
    CUDA_CONTEXT_BYTES,
    PRESET_ALIASES,
    PRESETS,
    LoRASpec,
    MemoryPlan,
    TrainingSetup,
    count_parameters,
    device_total,
    largest_fitting,
    plan_memory,
)

GB = 1e9
# Lightning precision -> (dtype the module is converted to, autocast dtype); "32-true" converts nothing.
PRECISIONS: dict[str, tuple[str | None, str | None]] = {
    "32-true": (None, None),
    "32": (None, None),
    "64-true": ("float64", None),
    "64": ("float64", None),
    "16-true": ("float16", None),
    "bf16-true": ("bfloat16", None),
    "16-mixed": (None, "float16"),
    "16": (None, "float16"),
    "bf16-mixed": (None, "bfloat16"),
    "bf16": (None, "bfloat16"),
}
# optimizer class name -> state tensors per parameter (momentum-like options add one where noted in code)
OPTIMIZER_STATES = {"AdamW": 2, "Adam": 2, "NAdam": 2, "RAdam": 2, "Adamax": 2, "Adadelta": 2, "Adagrad": 1}


def build_parser() -> argparse.ArgumentParser:
    parser = ToolParser(
        prog="svdlora estimate-memory",
        description="Memory plan of a training config on one device (model built on the meta device: nothing is "
        "downloaded or allocated): weights, LoRA parameters, gradients, optimizer states, activations with and "
        "without gradient checkpointing, logits, CUDA overhead, total against a budget.",
        epilog="GB = 10^9 bytes. Exit 2 when the config does not fit --budget-gb (one line with the numbers).",
    )
    parser.add_argument("-c", "--config", type=Path, required=True, help="training YAML (as for svdlora fit)")
    parser.add_argument("--budget-gb", type=float, default=32.0, help="device memory budget in GB (default 32)")
    parser.add_argument(
        "--model-config",
        metavar="FILE|PRESET",
        help=f"architecture: a config.json file or directory, or a preset ({', '.join([*PRESETS, TINY_MODEL])})",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the plan as JSON")
    return parser


# ------------------------------------------------------------------------------------------------ config fields
def read_config(path: Path) -> dict[str, Any]:
    """The YAML mapping of ``path``; InputError for a missing file, bad YAML or a non-mapping."""
    import yaml

    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise InputError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: expected a mapping with model:, data: and trainer: sections")
    return config


def section(config: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    """A top-level section, unwrapping ``class_path``/``init_args``; empty when absent."""
    value = config.get(name) or {}
    if isinstance(value, dict) and ("init_args" in value or "class_path" in value):
        value = value.get("init_args") or {}
    if not isinstance(value, dict):
        raise InputError(f"{path}: {name}: expected a mapping, got {type(value).__name__}")
    return value


def field(values: dict[str, Any], key: str, kinds: tuple[type, ...], default: Any, where: str) -> Any:
    """``values[key]`` checked against ``kinds`` (bool is not an int), or ``default`` when absent."""
    value = values.get(key, default)
    if value is None and default is None:
        return None
    wrong_bool = isinstance(value, bool) and bool not in kinds
    if wrong_bool or not isinstance(value, kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise InputError(f"{where}.{key}: expected {expected}, got {value!r}")
    return value


def positive(values: dict[str, Any], key: str, default: int, where: str) -> int:
    value = field(values, key, (int,), default, where)
    if value < 1:
        raise InputError(f"{where}.{key}: must be >= 1, got {value}")
    return value


def defaults(cls: type) -> dict[str, Any]:
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}


def lora_spec(model: dict[str, Any], default: Any, where: str) -> LoRASpec | None:
    """LoRA settings of ``model.lora`` (null: full fine-tuning), validated like QwenLoRAModule does."""
    from svdlora_pl.lora.settings import LoRASettings

    value = model.get("lora", default)
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("init_args", value)
        try:
            value = LoRASettings(**value)
        except TypeError as error:
            raise InputError(f"{where}.lora: {error}") from None
    if not isinstance(value, LoRASettings):
        raise InputError(f"{where}.lora: expected a mapping or null, got {value!r}")
    checks = (("r", int), ("dropout", (int, float)), ("target_modules", list))
    for key, kind in checks:
        item = getattr(value, key)
        if isinstance(item, bool) or not isinstance(item, kind):
            raise InputError(f"{where}.lora.{key}: expected {getattr(kind, '__name__', 'number')}, got {item!r}")
    if not all(isinstance(t, str) for t in value.target_modules):
        raise InputError(f"{where}.lora.target_modules: expected a list of names, got {value.target_modules!r}")
    try:
        value.validate()
    except InputError as error:
        raise InputError(f"{where.rsplit(': ', 1)[0]}: {error}") from None
    return LoRASpec(r=value.r, dropout=float(value.dropout), targets=tuple(value.target_modules))


def optimizer_states(model: dict[str, Any], where: str) -> tuple[str, int, str]:
    """(optimizer name, state tensors per parameter, note) of ``model.optimizer`` (default AdamW)."""
    value = model.get("optimizer") or "torch.optim.AdamW"
    init: dict[str, Any] = {}
    if isinstance(value, dict):
        init = value.get("init_args") or {}
        value = value.get("class_path")
    if not isinstance(value, str) or not isinstance(init, dict):
        raise InputError(f"{where}.optimizer: expected a class_path string, got {value!r}")
    name = value.rsplit(".", 1)[-1]
    if name == "SGD":
        return name, int(bool(init.get("momentum", 0))), ""
    if name == "RMSprop":
        return name, 1 + int(bool(init.get("momentum", 0))) + int(bool(init.get("centered", False))), ""
    if name in OPTIMIZER_STATES:
        return name, OPTIMIZER_STATES[name] + int(bool(init.get("amsgrad", False))), ""
    return name, 2, f"optimizer {name}: state size unknown, 2 states per parameter assumed (as AdamW)"


def world_and_strategy(trainer: dict[str, Any], where: str) -> tuple[int, str, str]:
    """(devices in total, ``single``/``ddp``/``fsdp``, note) from ``trainer.devices``/``num_nodes``/``strategy``."""
    devices = trainer.get("devices", "auto")
    nodes = positive(trainer, "num_nodes", 1, where)
    if isinstance(devices, list):
        count: int | None = len(devices)
    elif isinstance(devices, int) and not isinstance(devices, bool):
        count = None if devices == -1 else devices
    elif isinstance(devices, str) and (devices == "auto" or devices.strip() == "-1"):
        count = None
    elif isinstance(devices, str) and all(p.strip().isdigit() for p in devices.split(",")):
        count = len(devices.split(",")) if "," in devices else int(devices)
    else:
        raise InputError(f"{where}.devices: expected an int, a list or 'auto', got {devices!r}")
    strategy = trainer.get("strategy", "auto")
    if isinstance(strategy, dict):
        strategy = strategy.get("class_path")
    if not isinstance(strategy, str):
        raise InputError(f"{where}.strategy: expected a name or class_path, got {strategy!r}")
    name = strategy.lower()
    note = ""
    if count is None:
        note = f"{where}.devices={devices!r}: counted as 1 device"
        count = 1
    world = count * nodes
    if "deepspeed" in name:
        raise InputError(f"{where}.strategy: {strategy!r} is not modelled (single, DDP and FSDP are)")
    if "fsdp" in name:
        if note:
            raise InputError(f"{where}.devices: FSDP shards across devices, give their number (got {devices!r})")
        return world, "fsdp", note
    if "ddp" in name or (name in ("auto", "single_device") and world > 1):
        return world, "ddp", note
    if name in ("auto", "single_device"):
        return world, "single", note
    raise InputError(f"{where}.strategy: unknown strategy {strategy!r}")


def dtype_name(value: Any) -> str | None:
    return None if value is None else str(value).removeprefix("torch.")


# ------------------------------------------------------------------------------------------------- architecture
def preset_config(name: str) -> Any:
    from transformers import AutoConfig

    fields = dict(PRESETS[name])
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def tiny_config() -> Any:
    """The embedded tiny model's config, from the recipe that builds it (no build, no tokenizer training)."""
    from transformers import Qwen2Config

    from svdlora_pl.embedded.tiny import MODEL_CONFIG

    return Qwen2Config(**MODEL_CONFIG)


def config_from_path(path: Path, trust_remote_code: bool, where: str) -> Any:
    """A transformers config from a ``config.json`` file or a directory holding one."""
    from transformers import AutoConfig

    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"{where}: {path} has no config.json")
        return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
        if "torch_dtype" in fields:
            fields.setdefault("dtype", fields.pop("torch_dtype"))
        return AutoConfig.for_model(fields.pop("model_type"), **fields)
    except (ValueError, KeyError, AttributeError) as error:
        raise InputError(f"{where}: {path} is not a model config.json ({error})") from None


def resolve_architecture(name: str, override: str | None, trust_remote_code: bool, where: str) -> tuple[Any, str]:
    """(transformers config, where it came from) for ``model_name_or_path`` (the field ``where``) or ``--model-config``."""
    if override is not None:
        if override in PRESETS:
            return preset_config(override), f"preset {override}"
        if override == TINY_MODEL:
            return tiny_config(), "embedded tiny"
        if Path(override).exists():
            return config_from_path(Path(override), trust_remote_code, "--model-config"), str(override)
        known = ", ".join([*PRESETS, TINY_MODEL])
        raise InputError(f"--model-config: {override!r} is neither a file nor a known preset ({known})")
    if name == TINY_MODEL:
        return tiny_config(), "embedded tiny"
    local = Path(name).expanduser()
    if local.exists():
        return config_from_path(local, trust_remote_code, where), str(local)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name, local_files_only=True, trust_remote_code=trust_remote_code)
        return config, "Hugging Face cache"
    except (OSError, ValueError):
        if name in PRESET_ALIASES:
            preset = PRESET_ALIASES[name]
            return preset_config(preset), f"preset {preset}, {name} is not in the Hugging Face cache"
    raise InputError(
        f"{where}: no config.json for {name!r} in a local directory or the Hugging Face cache; "
        f"pass --model-config FILE or a preset ({', '.join(PRESETS)})"
    )


# --------------------------------------------------------------------------------------------------------- run
def setup_from_config(config: dict[str, Any], path: Path) -> tuple[dict[str, Any], list[str]]:
    """Fields of the config that matter for memory, type-checked, with class defaults filled in."""
    import lightning.pytorch as pl

    from svdlora_pl.training.datamodule import QADataModule
    from svdlora_pl.training.module import QwenLoRAModule

    model, data, trainer = (section(config, n, path) for n in ("model", "data", "trainer"))
    md, dd = defaults(QwenLoRAModule), defaults(QADataModule)
    for name, values, known in (("model", model, md), ("data", data, dd), ("trainer", trainer, defaults(pl.Trainer))):
        unknown = sorted(set(values) - set(known) - {"self"})
        if unknown:
            raise InputError(f"{path}: {name}.{unknown[0]}: unknown field (not an argument of the {name} class)")
    where = f"{path}: model"
    precision = str(trainer.get("precision") or "32-true")
    if precision not in PRECISIONS:
        raise InputError(f"{path}: trainer.precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    optimizer, states, optimizer_note = optimizer_states(model, where)
    world, strategy, world_note = world_and_strategy(trainer, f"{path}: trainer")
    accelerator = field(trainer, "accelerator", (str,), "auto", f"{path}: trainer")
    dtype = field(model, "dtype", (str,), md["dtype"], where)
    if dtype != "auto" and dtype not in ("float32", "bfloat16", "float16"):
        raise InputError(f"{where}.dtype: expected auto, float32, bfloat16 or float16, got {dtype!r}")
    fields = {
        "model_name_or_path": field(model, "model_name_or_path", (str,), md["model_name_or_path"], where),
        "trust_remote_code": field(model, "trust_remote_code", (bool,), md["trust_remote_code"], where),
        "dtype": dtype,
        "lora": lora_spec(model, md["lora"], where),
        "gradient_checkpointing": field(model, "gradient_checkpointing", (bool,), md["gradient_checkpointing"], where),
        "loss_chunk_tokens": field(model, "loss_chunk_tokens", (int,), md["loss_chunk_tokens"], where),
        "batch_size": positive(data, "batch_size", dd["batch_size"], f"{path}: data"),
        "max_length": positive(data, "max_length", dd["max_length"], f"{path}: data"),
        "precision": precision,
        "accumulate": positive(trainer, "accumulate_grad_batches", 1, f"{path}: trainer"),
        "optimizer": optimizer,
        "optimizer_states": states,
        "world_size": world,
        "strategy": strategy,
        "accelerator": "cpu" if accelerator == "cpu" else "gpu",
    }
    return fields, [n for n in (optimizer_note, world_note) if n]


def training_setup(fields: dict[str, Any], native_dtype: str | None) -> TrainingSetup:
    """The :class:`TrainingSetup` of the config's fields: dtypes from ``model.dtype`` and the precision."""
    convert, autocast = PRECISIONS[fields["precision"]]
    loaded = (native_dtype or "float32") if fields["dtype"] == "auto" else fields["dtype"]
    base = convert or loaded
    if fields["lora"] is None:
        trainable = base
    else:  # PEFT keeps bf16/fp16 adapters in float32 (autocast_adapter_dtype); *-true precision converts them
        trainable = convert or ("float32" if base in ("bfloat16", "float16") else base)
    return TrainingSetup(
        micro_batch=fields["batch_size"],
        seq_len=fields["max_length"],
        base_dtype=base,
        trainable_dtype=trainable,
        autocast_dtype=autocast,
        lora=fields["lora"],
        gradient_checkpointing=fields["gradient_checkpointing"],
        optimizer_states=fields["optimizer_states"],
        strategy=fields["strategy"],
        world_size=fields["world_size"],
        accelerator=fields["accelerator"],
        loss_chunk_tokens=fields["loss_chunk_tokens"],
    )


def statements(setup: TrainingSetup, fields: dict[str, Any]) -> list[str]:
    """How the plan reads the config: master weights, replicas or shards, padding, accumulation, CUDA."""
    t, world = setup.trainable_dtype, setup.world_size
    if setup.autocast_dtype and t == "float32":
        notes = [
            f"master weights: none; {fields['precision']} autocasts the forward, the float32 trainable "
            "parameters are updated in place"
        ]
    elif t in ("bfloat16", "float16"):
        notes = [
            f"master weights: none; Lightning keeps no float32 copy: parameters, gradients and optimizer states are {t}"
        ]
    else:
        notes = [f"master weights: none; trainable parameters are {t}"]
    if setup.strategy == "ddp":
        notes.append(
            f"DDP over {world} devices: every device holds a full replica (numbers are per device) "
            "plus a gradient-sized bucket copy"
        )
    elif setup.strategy == "fsdp":
        notes.append(
            f"FSDP over {world} devices: weights, gradients and optimizer states divided by {world}, "
            "plus two gathered decoder layers"
        )
    if setup.micro_batch > 1:
        notes.append("micro-batch > 1: padded batches assumed (K/V repeated to every head, a T×T mask per layer)")
    if fields["accumulate"] > 1:
        notes.append(
            f"accumulate_grad_batches={fields['accumulate']}: gradients stay allocated between micro-batches (counted)"
        )
    if setup.accelerator == "gpu":
        notes.append(
            f"CUDA overhead: {CUDA_CONTEXT_BYTES / 2**30:.0f} GiB context + {ALLOCATOR_SLACK:.0%} of the allocated peak"
        )
    else:
        notes.append("accelerator cpu: no CUDA overhead; dropout masks in the input dtype")
    return notes


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Read the config, build the plan, write ``--json``; returns the report (``fits`` tells the verdict)."""
    if not args.budget_gb > 0:
        raise InputError(f"--budget-gb: must be positive, got {args.budget_gb}")
    fields, notes = setup_from_config(read_config(args.config), args.config)
    where = f"{args.config}: model.model_name_or_path"
    hf_config, source = resolve_architecture(
        fields["model_name_or_path"], args.model_config, fields["trust_remote_code"], where
    )
    native = dtype_name(getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None))
    setup = training_setup(fields, native)
    try:
        arch, counts = count_parameters(hf_config, setup.lora)
    except InputError as error:
        raise InputError(f"{args.config}: {error}") from None
    plan = plan_memory(arch, counts, setup)
    budget = args.budget_gb * GB
    report = {
        "config": str(args.config),
        "model": fields["model_name_or_path"],
        "architecture_source": source,
        "architecture": dataclasses.asdict(arch),
        "parameters": dataclasses.asdict(counts),
        "setup": {**dataclasses.asdict(setup), "precision": fields["precision"], "optimizer": fields["optimizer"],
                  "accumulate_grad_batches": fields["accumulate"]},
        "plan": dataclasses.asdict(plan),
        "budget_bytes": budget,
        "fits": plan.fits(budget),
        "largest_micro_batch": largest_fitting(arch, counts, setup, budget, "micro_batch", 1 << 16),
        "largest_max_length": largest_fitting(arch, counts, setup, budget, "seq_len", arch.max_positions),
        "notes": statements(setup, fields) + notes,
    }  # fmt: skip
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    return report


def _logits_shape(setup: dict[str, Any]) -> str:
    chunk = setup.get("loss_chunk_tokens")
    rows = "B·T" if chunk is None else f"min({chunk}, B·T)"
    return f"{rows}·V, inside the next row"


def _logits_detail(setup: dict[str, Any]) -> str:
    chunk = setup.get("loss_chunk_tokens")
    if chunk is None:
        return "12 bytes · B·T·V: float32 log-softmax and gradients"
    return f"12 bytes · min({chunk}, B·T)·V: one chunk of the chunked loss (model.loss_chunk_tokens)"


def format_table(report: dict[str, Any]) -> str:
    """The plan as a text table in GB (10⁹ bytes)."""
    plan = MemoryPlan(**report["plan"])
    setup, arch, counts = report["setup"], report["architecture"], report["parameters"]
    lora, ckpt, trained = setup["lora"], setup["gradient_checkpointing"], setup["trainable_dtype"]
    rows: list[tuple[str, int, str]] = []
    for dtype, size in plan.base_weights.items():
        frozen = ", frozen" if lora is not None else ""
        rows.append((f"base weights ({dtype}{frozen})", size, f"{counts['total']:,} params"))
    if lora is None:
        rows.append((f"all parameters, trained ({trained})", plan.trainable, f"{counts['total']:,} params"))
    else:
        rows.append((f"LoRA parameters ({trained})", plan.trainable, f"{counts['lora']:,} params, r={lora['r']}"))
    states = f"{setup['optimizer_states']} per trainable parameter"
    used = {True: " <- used", False: ""}
    rows += [
        (f"gradients ({trained})", plan.gradients, "one per trainable parameter"),
        (f"optimizer states ({setup['optimizer']})", plan.optimizer_states, states),
        ("buffers (RoPE tables)", plan.buffers, ""),
        ("master weights", 0, "none (see notes)"),
        ("DDP gradient buckets", plan.ddp_buckets, ""),
        ("FSDP gathered layers", plan.fsdp_gather, "two decoder layers unsharded"),
        ("activations, gradient checkpointing", plan.activations_checkpointed, f"layer inputs{used[ckpt]}"),
        ("activations, no checkpointing", plan.activations_full, f"every saved tensor{used[not ckpt]}"),
        ("  of which autocast weight copies", plan.autocast_copies, "counted in the activations"),
        (f"logits ({setup['autocast_dtype'] or setup['base_dtype']})", plan.logits, _logits_shape(setup)),
        ("logits + loss peak", plan.logits_peak, _logits_detail(setup)),
    ]
    if ckpt:
        rows.append(("one layer recomputed + workspace", plan.layer_recompute + plan.backward_workspace, "in backward"))
    else:
        rows.append(("backward workspace", plan.backward_workspace, "gradients of one layer"))
    budget = report["budget_bytes"]
    verdict = "fits" if report["fits"] else "does NOT fit"
    other = device_total(plan.peak_full if ckpt else plan.peak_checkpointed, setup["accelerator"])
    rows += [
        ("allocated peak", plan.peak, "static + activations + max(logits peak, layer backward)"),
        ("CUDA context + allocator slack", plan.cuda_overhead, ""),
        ("total", plan.total, f"{verdict} in {budget / GB:.2f} GB ({(budget - plan.total) / GB:+.2f} GB)"),
        (f"total {'without' if ckpt else 'with'} checkpointing", other, "for comparison"),
    ]
    targets = f"LoRA r={lora['r']} on {', '.join(lora['targets'])}, dropout {lora['dropout']}" if lora else "full"
    lines = [
        f"svdlora estimate-memory: {report['config']}",
        f"model: {report['model']} (architecture: {report['architecture_source']})",
        f"  {arch['layers']} layers, hidden {arch['hidden']}, intermediate {arch['intermediate']}, "
        f"{arch['heads']} heads / {arch['kv_heads']} KV heads, vocab {arch['vocab']}, {counts['total']:,} parameters",
        f"setup: micro-batch {setup['micro_batch']} x {setup['seq_len']} tokens, accumulate "
        f"{setup['accumulate_grad_batches']}, {setup['precision']} (weights {setup['base_dtype']}, trainable "
        f"{trained}), {targets}, checkpointing {'on' if ckpt else 'off'}, {setup['strategy']} x{setup['world_size']}",
        "",
        f"{'component':<40} {'GB':>9}  detail",
        "-" * 100,
        *(
            f"{name:<40} {size / GB:>9.3f}  {detail}".rstrip()
            for name, size, detail in rows
            if size >= 5e5 or "master" in name
        ),
        "-" * 100,
    ]
    batch, longest = report["largest_micro_batch"], report["largest_max_length"]
    limit = " (the model's max_position_embeddings)" if longest == arch["max_positions"] else ""
    lines.append(f"largest micro-batch at max_length {setup['seq_len']}: {batch or 'none fits'}")
    lines.append(f"largest max_length at micro-batch {setup['micro_batch']}: {longest or 'none fits'}{limit}")
    return "\n".join([*lines, *(f"note: {n}" for n in report["notes"])])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``svdlora estimate-memory``; a config that does not fit raises InputError (exit 2)."""
    args = build_parser().parse_args(None if argv is None else list(argv))
    report = run(args)
    print(format_table(report))
    if not report["fits"]:
        plan = MemoryPlan(**report["plan"])
        raise InputError(
            f"{args.config}: needs {plan.total / GB:.2f} GB, over the {args.budget_gb:g} GB budget (weights, "
            f"gradients and optimizer states {plan.static / GB:.2f} GB, activations {plan.activations / GB:.2f} GB, "
            f"logits/backward peak {plan.transient / GB:.2f} GB, CUDA "
            f"{plan.cuda_overhead / GB:.2f} GB); largest micro-batch at "
            f"max_length {report['setup']['seq_len']}: {report['largest_micro_batch']}, largest max_length at "
            f"micro-batch {report['setup']['micro_batch']}: {report['largest_max_length']}"
        )
    return 0
