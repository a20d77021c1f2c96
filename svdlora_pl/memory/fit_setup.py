"""What a resolved ``svdlora fit`` config means for memory: its :class:`FitSettings` and the :class:`TrainingSetup`
of one device.

The config is the one ``svdlora fit`` would run, resolved by its own parser (``-c`` files stacked, links applied,
class defaults filled, types checked: :func:`svdlora_pl.cli.lightning.resolve_fit_config`), as plain
``model``/``data``/``trainer`` mappings. What remains to check here is what types cannot say: a precision, strategy
or device count the plan does not model, sizes below 1, LoRA settings out of range. Errors name the field
(``trainer.strategy: ...``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from svdlora_pl.errors import InputError
from svdlora_pl.memory.activations import TrainingSetup
from svdlora_pl.memory.architecture import LoRASpec
from svdlora_pl.memory.plan import ALLOCATOR_SLACK, CUDA_CONTEXT_BYTES

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
"""Lightning precision -> (dtype the module is converted to, autocast dtype); ``32-true`` converts nothing."""
OPTIMIZER_STATES = {"AdamW": 2, "Adam": 2, "NAdam": 2, "RAdam": 2, "Adamax": 2, "Adadelta": 2, "Adagrad": 1}
"""Optimizer class name -> state tensors per parameter (``amsgrad`` adds one); SGD and RMSprop: see
:func:`optimizer_states`."""


@dataclass(frozen=True)
class FitSettings:
    """The values of a resolved fit config that change memory.

    Args:
        model_name_or_path: ``model.model_name_or_path``.
        trust_remote_code: ``model.trust_remote_code``.
        dtype: ``model.dtype`` (``auto``: the model config's dtype).
        lora: ``model.lora``; None for full fine-tuning.
        gradient_checkpointing: ``model.gradient_checkpointing``, or FSDP's per-layer activation checkpointing.
        loss_chunk_tokens: ``model.loss_chunk_tokens``.
        batch_size: ``data.batch_size``.
        max_length: ``data.max_length``.
        precision: ``trainer.precision`` as a name (None: ``32-true``).
        accumulate: ``trainer.accumulate_grad_batches``.
        optimizer: Class name of ``model.optimizer``.
        optimizer_states: Its state tensors per trainable parameter.
        strategy: ``single``, ``ddp`` or ``fsdp``, from ``trainer.strategy`` and the device count.
        world_size: ``trainer.devices`` × ``trainer.num_nodes`` (1 when only known at run time).
        accelerator: ``cpu``, else ``gpu``.
        notes: How the reading went where it had to assume something.
    """

    model_name_or_path: str
    trust_remote_code: bool
    dtype: str
    lora: LoRASpec | None
    gradient_checkpointing: bool
    loss_chunk_tokens: int | None
    batch_size: int
    max_length: int
    precision: str
    accumulate: int
    optimizer: str
    optimizer_states: int
    strategy: Literal["single", "ddp", "fsdp"]
    world_size: int
    accelerator: Literal["gpu", "cpu"]
    notes: tuple[str, ...] = ()


def resolved(config: Mapping[str, Any], key: str) -> Any:
    """The value of the dotted ``key`` (``data.batch_size``) in a resolved config; InputError naming it if absent."""
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise InputError(
                f"{key}: missing from the config (resolve it with svdlora_pl.cli.lightning.resolve_fit_config)"
            )
        value = value[part]
    return value


def class_name(value: Any) -> str:
    """The class name of a ``class_path`` mapping, a dotted name or a class."""
    if isinstance(value, Mapping):
        value = value.get("class_path")
    return str(getattr(value, "__name__", value)).rsplit(".", 1)[-1]


def lora_spec(value: Any) -> LoRASpec | None:
    """LoRA settings of ``model.lora`` (None: full fine-tuning), validated as QwenLoRAModule validates them."""
    from svdlora_pl.lora.settings import LoRASettings

    if value is None:
        return None
    if isinstance(value, Mapping):
        try:
            value = LoRASettings(**value)
        except TypeError as error:
            raise InputError(f"model.lora: {error}") from None
    value.validate()
    return LoRASpec(r=value.r, dropout=float(value.dropout), targets=tuple(value.target_modules))


def optimizer_states(value: Any) -> tuple[str, int, str]:
    """(class name, state tensors per parameter, note) of ``model.optimizer`` (a ``class_path`` mapping)."""
    init = (value.get("init_args") or {}) if isinstance(value, Mapping) else {}
    name = class_name(value)
    if name == "SGD":
        return name, int(bool(init.get("momentum", 0))), ""
    if name == "RMSprop":
        return name, 1 + int(bool(init.get("momentum", 0))) + int(bool(init.get("centered", False))), ""
    if name in OPTIMIZER_STATES:
        return name, OPTIMIZER_STATES[name] + int(bool(init.get("amsgrad", False))), ""
    return name, 2, f"model.optimizer: {name}'s state size is unknown, 2 states per parameter assumed (as AdamW)"


def device_count(devices: Any) -> int | None:
    """Devices per node that ``trainer.devices`` names; None when only known at run time (``auto``, -1)."""
    count: Any = None
    if isinstance(devices, list | tuple):
        count = len(devices)
    elif isinstance(devices, str) and (devices == "auto" or devices.strip() == "-1"):
        return None
    elif isinstance(devices, str) and all(p.strip().isdigit() for p in devices.split(",")):
        count = len(devices.split(",")) if "," in devices else int(devices)
    elif isinstance(devices, int) and not isinstance(devices, bool):
        if devices == -1:
            return None
        count = devices
    if not isinstance(count, int) or count < 1:
        raise InputError(f"trainer.devices: expected a count >= 1, a list of ids, -1 or 'auto', got {devices!r}")
    return count


def fsdp_checkpointing(strategy: Any) -> tuple[bool, str]:
    """Whether an FSDP strategy's ``activation_checkpointing_policy`` checkpoints every decoder layer, and a note."""
    init = (strategy.get("init_args") or {}) if isinstance(strategy, Mapping) else {}
    policy = init.get("activation_checkpointing_policy") or init.get("activation_checkpointing")
    if not policy:
        return False, ""
    names = sorted(map(class_name, policy if isinstance(policy, list | tuple | set | frozenset) else [policy]))
    if all(name.endswith("DecoderLayer") for name in names):
        return True, (
            f"trainer.strategy: FSDP's activation_checkpointing_policy ({', '.join(names)}) checkpoints every "
            "decoder layer: planned as gradient checkpointing"
        )
    return False, f"trainer.strategy: activation_checkpointing_policy {names} is not modelled (per decoder layer is)"


def world_and_strategy(trainer: Mapping[str, Any]) -> tuple[int, Literal["single", "ddp", "fsdp"], list[str]]:
    """(devices in total, ``single``/``ddp``/``fsdp``, notes) from ``trainer.devices``/``num_nodes``/``strategy``."""
    devices, strategy = trainer.get("devices", "auto"), trainer.get("strategy", "auto")
    count = device_count(devices)
    name = class_name(strategy).lower()
    notes = []
    if count is None:
        what = "an upper bound: the whole model in one shard; " if "fsdp" in name else ""
        notes.append(
            f"trainer.devices={devices!r}: the device count is known at run time, counted as 1 ({what}set "
            "trainer.devices to the number of devices for the plan of each)"
        )
    world = (count or 1) * trainer.get("num_nodes", 1)
    if "deepspeed" in name:
        raise InputError(f"trainer.strategy: {class_name(strategy)!r} is not modelled (single, DDP and FSDP are)")
    if "fsdp" in name:
        return world, "fsdp", notes
    if "ddp" in name or (name in ("auto", "single_device", "singledevicestrategy") and world > 1):
        return world, "ddp", notes
    if name in ("auto", "single_device", "singledevicestrategy"):
        return world, "single", notes
    raise InputError(f"trainer.strategy: unknown strategy {class_name(strategy)!r}")


def read_fit_config(config: Mapping[str, Any]) -> FitSettings:
    """The :class:`FitSettings` of a resolved fit config.

    Args:
        config: ``model``, ``data`` and ``trainer`` values as ``svdlora fit``'s parser resolves them
            (:func:`svdlora_pl.cli.lightning.resolve_fit_config`).

    Returns:
        What the memory plan reads from it.

    Raises:
        InputError: A missing field, or a value the plan does not model or that is out of range, named.
    """
    model, trainer = resolved(config, "model"), resolved(config, "trainer")
    sizes = {key: resolved(config, key) for key in ("data.batch_size", "data.max_length")}
    sizes.update({f"trainer.{key}": trainer.get(key, 1) for key in ("accumulate_grad_batches", "num_nodes")})
    chunk = resolved(config, "model.loss_chunk_tokens")
    for key, value in [*sizes.items(), *([("model.loss_chunk_tokens", chunk)] if chunk is not None else [])]:
        if value < 1:
            raise InputError(f"{key}: must be >= 1, got {value}")
    precision = str(trainer.get("precision") or "32-true")
    if precision not in PRECISIONS:
        raise InputError(f"trainer.precision: {precision!r} is not modelled ({', '.join(PRECISIONS)} are)")
    optimizer, states, optimizer_note = optimizer_states(resolved(config, "model.optimizer"))
    world, strategy, notes = world_and_strategy(trainer)
    checkpointing, fsdp_note = fsdp_checkpointing(trainer.get("strategy")) if strategy == "fsdp" else (False, "")
    accelerator = class_name(trainer.get("accelerator", "auto")).lower()
    return FitSettings(
        model_name_or_path=resolved(config, "model.model_name_or_path"),
        trust_remote_code=bool(model.get("trust_remote_code", False)),
        dtype=resolved(config, "model.dtype"),
        lora=lora_spec(resolved(config, "model.lora")),
        gradient_checkpointing=bool(resolved(config, "model.gradient_checkpointing")) or checkpointing,
        loss_chunk_tokens=chunk,
        batch_size=sizes["data.batch_size"],
        max_length=sizes["data.max_length"],
        precision=precision,
        accumulate=sizes["trainer.accumulate_grad_batches"],
        optimizer=optimizer,
        optimizer_states=states,
        strategy=strategy,
        world_size=world,
        accelerator="cpu" if accelerator in ("cpu", "cpuaccelerator") else "gpu",
        notes=tuple(note for note in (optimizer_note, *notes, fsdp_note) if note),
    )


def training_setup(settings: FitSettings, native_dtype: str | None) -> TrainingSetup:
    """The :class:`TrainingSetup` of ``settings``: dtypes from ``model.dtype`` and the precision.

    Args:
        settings: What the config sets.
        native_dtype: The model config's own dtype (what ``model.dtype: auto`` loads); None: float32.
    """
    convert, autocast = PRECISIONS[settings.precision]
    loaded = (native_dtype or "float32") if settings.dtype == "auto" else settings.dtype
    base = convert or loaded
    if settings.lora is None:
        trainable = base
    else:  # PEFT keeps bf16/fp16 adapters in float32 (autocast_adapter_dtype); *-true precision converts them
        trainable = convert or ("float32" if base in ("bfloat16", "float16") else base)
    return TrainingSetup(
        micro_batch=settings.batch_size,
        seq_len=settings.max_length,
        base_dtype=base,
        trainable_dtype=trainable,
        autocast_dtype=autocast,
        lora=settings.lora,
        gradient_checkpointing=settings.gradient_checkpointing,
        optimizer_states=settings.optimizer_states,
        strategy=settings.strategy,
        world_size=settings.world_size,
        accelerator=settings.accelerator,
        loss_chunk_tokens=settings.loss_chunk_tokens,
    )


def statements(setup: TrainingSetup, settings: FitSettings) -> list[str]:
    """How the plan reads the config: master weights, replicas or shards, padding, accumulation, CUDA, then the
    notes of the reading itself."""
    t, world = setup.trainable_dtype, setup.world_size
    devices = f"{world} device{'s' if world != 1 else ''}"
    if setup.autocast_dtype and t == "float32":
        notes = [
            f"master weights: none; {settings.precision} autocasts the forward, the float32 trainable "
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
            f"DDP over {devices}: every device holds a full replica (numbers are per device) "
            "plus a gradient-sized bucket copy"
        )
    elif setup.strategy == "fsdp":
        notes.append(
            f"FSDP over {devices}: weights, gradients and optimizer states divided by {world}, "
            "plus two gathered decoder layers"
        )
    if setup.micro_batch > 1:
        notes.append("micro-batch > 1: padded batches assumed (K/V repeated to every head, a T×T mask per layer)")
    if settings.accumulate > 1:
        notes.append(
            f"accumulate_grad_batches={settings.accumulate}: gradients stay allocated between micro-batches (counted)"
        )
    if setup.accelerator == "gpu":
        notes.append(
            f"CUDA overhead: {CUDA_CONTEXT_BYTES / 2**30:.0f} GiB context + {ALLOCATOR_SLACK:.0%} of the allocated peak"
        )
    else:
        notes.append("accelerator cpu: no CUDA overhead; dropout masks in the input dtype")
    return [*notes, *settings.notes]
