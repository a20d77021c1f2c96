"""Loading Hugging Face models and tokenizers by hub name, local directory, or the embedded tiny name.

One place for ``from_pretrained`` so that every component resolves :data:`svdlora_pl.embedded.tiny.TINY_MODEL`,
honours ``trust_remote_code`` (off unless the user sets it), reads weights from safetensors only (a pickled
``pytorch_model.bin`` is refused, never unpickled), and reports a model that cannot be loaded in one line naming
``model.model_name_or_path`` and what to do: download it first, convert it to safetensors, or set
``model.trust_remote_code`` if you trust its code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

from svdlora_pl.embedded.tiny import resolve_model_path
from svdlora_pl.errors import InputError

DType = Literal["auto", "float32", "bfloat16", "float16"]


def local_model_dir(name_or_path: str) -> Path | None:
    """The local path a model name stands for (the tiny name's cache, or a path, ``~`` expanded), or None for a Hub
    name. A name is local when it starts with ``.``, ``/`` or ``~``, or exists on disk; the path may not exist."""
    path = resolve_model_path(name_or_path)
    local = Path(path).expanduser()
    return local if path.startswith((".", "/", "~")) or local.exists() else None


def _resolve(name_or_path: str) -> str:
    local = local_model_dir(name_or_path)
    if local is None:
        return name_or_path
    if not (local / "config.json").is_file() and not (local / "tokenizer_config.json").is_file():
        raise InputError(f"{FIELD}: {name_or_path}: not a model directory (no config.json or tokenizer_config.json)")
    return str(local)


FIELD = "model.model_name_or_path"


def _from_pretrained(load: Callable[..., Any], name_or_path: str, trust_remote_code: bool, **kwargs: Any) -> Any:
    """``load(resolved name, trust_remote_code=..., **kwargs)`` with its failures turned into one-line InputErrors."""
    resolved = _resolve(name_or_path)
    local = local_model_dir(name_or_path)
    try:
        return load(resolved, trust_remote_code=trust_remote_code, **kwargs)
    except ValueError as error:  # transformers' refusals: remote code, an architecture it does not know
        if "trust_remote_code" in str(error):
            raise InputError(
                f"{FIELD}: {name_or_path} needs its own model code to load: set model.trust_remote_code: true if "
                "you trust it (it runs on your machine)"
            ) from None
        raise InputError(f"{FIELD}: {name_or_path}: {str(error).splitlines()[0]}") from None
    except OSError as error:
        if local is not None and list(local.glob("*.bin")) and not list(local.glob("*.safetensors")):
            raise InputError(
                f"{FIELD}: {name_or_path} holds only pickled weights (*.bin), which are refused: convert them to "
                "safetensors (save_pretrained writes model.safetensors)"
            ) from None
        if local is None:
            raise InputError(
                f"{FIELD}: {name_or_path} is not a local directory and could not be loaded from the Hugging Face "
                f"hub or its cache ({str(error).splitlines()[0]}): download it first, e.g. "
                f"`huggingface-cli download {name_or_path}`, or give a local directory"
            ) from None
        raise InputError(f"{FIELD}: {name_or_path}: {str(error).splitlines()[0]}") from None


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):  # -> PreTrainedTokenizerBase
    """The tokenizer of a model; a pad token is set to EOS when the tokenizer defines none."""
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, name_or_path, trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise InputError(f"{name_or_path}: tokenizer has no chat_template (a chat/instruct tokenizer is needed)")
    return tokenizer


def load_causal_lm(name_or_path: str, dtype: DType = "float32", trust_remote_code: bool = False):
    """A causal LM from a hub name, a local ``save_pretrained`` directory, or the tiny name (safetensors only)."""
    from transformers import AutoModelForCausalLM

    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    return _from_pretrained(
        AutoModelForCausalLM.from_pretrained, name_or_path, trust_remote_code, dtype=torch_dtype, use_safetensors=True
    )
