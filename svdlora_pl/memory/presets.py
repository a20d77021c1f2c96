"""Where the architecture of a model name comes from, without a download: presets, ``config.json`` files, the
embedded tiny model's recipe and the local Hugging Face cache.

Usage::

    from svdlora_pl.memory.presets import resolve_architecture
    hf_config, source = resolve_architecture("Qwen/Qwen2.5-Math-7B-Instruct")   # the cache, else its preset
    hf_config, source = resolve_architecture("my-model", model_config="qwen2.5-7b")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from svdlora_pl.embedded.tiny import TINY_MODEL
from svdlora_pl.errors import InputError

_QWEN25_7B: dict[str, Any] = {
    "model_type": "qwen2",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "max_position_embeddings": 131072,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "dtype": "bfloat16",  # "torch_dtype" in the config.json
}
PRESETS: dict[str, dict[str, Any]] = {
    # https://huggingface.co/Qwen/Qwen2.5-7B/blob/main/config.json (7,615,616,512 parameters)
    "qwen2.5-7b": _QWEN25_7B,
    # https://huggingface.co/Qwen/Qwen2.5-Math-7B-Instruct/blob/main/config.json: the same shape and parameter
    # count, a 4K context (max_position_embeddings 4096) with rope_theta 10000
    "qwen2.5-math-7b": {**_QWEN25_7B, "max_position_embeddings": 4096, "rope_theta": 10000.0},
}
"""Architectures known without a download: preset name -> ``config.json`` fields."""
PRESET_ALIASES = {
    "Qwen/Qwen2.5-7B": "qwen2.5-7b",
    "Qwen/Qwen2.5-7B-Instruct": "qwen2.5-7b",
    "Qwen/Qwen2.5-Math-7B": "qwen2.5-math-7b",
    "Qwen/Qwen2.5-Math-7B-Instruct": "qwen2.5-math-7b",
}
"""Hub names whose shape is a preset: used when their ``config.json`` is not in the local Hugging Face cache."""


def preset_config(name: str) -> Any:
    """The transformers config of the preset ``name`` (a key of :data:`PRESETS`)."""
    from transformers import AutoConfig

    fields = dict(PRESETS[name])
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def tiny_config() -> Any:
    """The embedded tiny model's config, from the recipe that builds it (no build, no tokenizer training)."""
    from transformers import Qwen2Config

    from svdlora_pl.embedded.tiny import MODEL_CONFIG

    return Qwen2Config(**MODEL_CONFIG)


def config_from_path(path: Path, trust_remote_code: bool, field: str) -> Any:
    """A transformers config from a ``config.json`` file or a directory holding one; errors name ``field``."""
    from transformers import AutoConfig

    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"{field}: {path} has no config.json")
        return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
        if "torch_dtype" in fields:
            fields.setdefault("dtype", fields.pop("torch_dtype"))
        return AutoConfig.for_model(fields.pop("model_type"), **fields)
    except (ValueError, KeyError, AttributeError) as error:
        raise InputError(f"{field}: {path} is not a model config.json ({error})") from None


def resolve_architecture(
    name: str, model_config: str | None = None, trust_remote_code: bool = False
) -> tuple[Any, str]:
    """The transformers config of a model, and where it came from; nothing is downloaded.

    In this order: ``model_config`` (a ``config.json`` file, a directory holding one, or a preset); the embedded
    tiny model; a local directory ``name``; the local Hugging Face cache; the preset of a known hub name.

    Args:
        name: ``model.model_name_or_path``: a hub name, a local directory or the embedded tiny model.
        model_config: An architecture that overrides ``name``'s: a ``config.json`` file or directory, or a
            preset (:data:`PRESETS`, ``svdlora:tiny-qwen2``).
        trust_remote_code: Let transformers run the model's own config code.

    Returns:
        The transformers config and a description of its source.

    Raises:
        InputError: ``model_config`` is neither a file nor a preset, or no config is found for ``name``.
    """
    if model_config is not None:
        if model_config in PRESETS:
            return preset_config(model_config), f"preset {model_config}"
        if model_config == TINY_MODEL:
            return tiny_config(), "embedded tiny"
        if Path(model_config).exists():
            return config_from_path(Path(model_config), trust_remote_code, "model_config"), str(model_config)
        known = ", ".join([*PRESETS, TINY_MODEL])
        raise InputError(f"model_config: {model_config!r} is neither a file nor a known preset ({known})")
    if name == TINY_MODEL:
        return tiny_config(), "embedded tiny"
    local = Path(name).expanduser()
    if local.exists():
        return config_from_path(local, trust_remote_code, "model.model_name_or_path"), str(local)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name, local_files_only=True, trust_remote_code=trust_remote_code)
        return config, "Hugging Face cache"
    except (OSError, ValueError):
        if name in PRESET_ALIASES:
            preset = PRESET_ALIASES[name]
            return preset_config(preset), f"preset {preset}, {name} is not in the Hugging Face cache"
    raise InputError(
        f"model.model_name_or_path: no config.json for {name!r} in a local directory or the Hugging Face cache; "
        f"give model_config (--model_config): a config.json file or a preset ({', '.join(PRESETS)})"
    )
