"""Loading Hugging Face models and tokenizers by hub name, local directory, or the embedded tiny name.

One place for ``from_pretrained`` so that every component resolves :data:`svdlora_pl.embedded.tiny.TINY_MODEL`,
honours ``trust_remote_code`` (off unless the user sets it) and reports a missing model in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

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
        raise InputError(f"{name_or_path}: not a model directory (no config.json or tokenizer_config.json)")
    return str(local)


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):  # -> PreTrainedTokenizerBase
    """The tokenizer of a model; a pad token is set to EOS when the tokenizer defines none."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_resolve(name_or_path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise InputError(f"{name_or_path}: tokenizer has no chat_template (a chat/instruct tokenizer is needed)")
    return tokenizer


def load_causal_lm(name_or_path: str, dtype: DType = "float32", trust_remote_code: bool = False):
    """A causal LM from a hub name, a local ``save_pretrained`` directory, or the tiny name."""
    from transformers import AutoModelForCausalLM

    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    return AutoModelForCausalLM.from_pretrained(
        _resolve(name_or_path), dtype=torch_dtype, trust_remote_code=trust_remote_code
    )
