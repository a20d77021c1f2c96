"""The embedded default model: a tiny pretrained ``Qwen2ForCausalLM`` and its byte-level BPE tokenizer.

Everything in the package runs offline on a laptop CPU against this model. It is the real Qwen2
architecture (grouped-query attention, biased q/k/v projections, SwiGLU MLP, RMSNorm, RoPE) at a tiny size.
Its byte-level BPE tokenizer is trained with the ``tokenizers`` library on the bundled pretraining corpus
and the bundled probability QA data, and carries Qwen's special tokens (``<|endoftext|>``, ``<|im_start|>``,
``<|im_end|>``) and a ChatML chat template. The weights start from a fixed seed and are then pretrained
(:mod:`svdlora_pl.embedded.pretrain`, :data:`PRETRAIN`) on the bundled corpus of expository English about
numbers, fractions, counting and sets (:mod:`svdlora_pl.embedded.datasets.corpus`), which is not the QA task: LoRA
then fine-tunes a model that already knows the language, as the low-rank view of fine-tuning assumes.

The model is referred to by the name :data:`TINY_MODEL`; :func:`resolve_model_path` turns that name into a
directory holding a standard ``save_pretrained`` checkpoint (built on first use, about 20 s on 2 quiet CPU
cores, then cached), so the tiny model goes through exactly the same ``from_pretrained`` path as a hub model
or a local directory. The directory also holds ``svdlora_tiny.json``, the recipe it was built from and the
losses the pretraining reached.

Cache location: ``$SVDLORA_CACHE`` if set, else ``~/.cache/svdlora_pl``. The cache entry's name carries a
hash of everything the build depends on, so a changed recipe never reuses a stale entry.

Usage::

    from svdlora_pl.embedded.tiny import TINY_MODEL, resolve_model_path

    path = resolve_model_path(TINY_MODEL)  # builds once, then returns the cached directory
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from svdlora_pl.embedded.pretrain import PretrainSettings, pretrain
from svdlora_pl.io import atomic_write_text

log = logging.getLogger(__name__)

TINY_MODEL = "svdlora:tiny-qwen2"
"""Name that selects the embedded tiny model wherever a model name or path is accepted."""

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# ChatML, as used by Qwen2/Qwen2.5 chat models (without tool calling): a default system message is added
# when the conversation does not start with one.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Qwen2's pre-tokenization: contractions, letter runs, single digits, punctuation runs, newlines, spaces.
QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)
TOKENIZER_VOCAB_SIZE = 1024
MODEL_CONFIG: dict[str, object] = {
    "vocab_size": TOKENIZER_VOCAB_SIZE,
    "hidden_size": 128,
    "intermediate_size": 352,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "initializer_range": 0.02,
}
SEED = 0
PRETRAIN = PretrainSettings()
"""How the seeded tiny model is pretrained on the bundled corpus before it is cached."""
BUILD_SECONDS = 30
"""Approximate one-time build time on 2 CPU cores, shown to the user when the build starts."""
RECIPE_FILENAME = "svdlora_tiny.json"
"""Written next to the checkpoint: how the cached tiny model was made (recipe, corpus size, losses)."""
_RECIPE_VERSION = 2  # bump whenever the build code changes what it produces


def cache_root() -> Path:
    """Directory under which the package caches built artifacts."""
    return Path(os.environ.get("SVDLORA_CACHE", Path.home() / ".cache" / "svdlora_pl"))


def _pretrain_corpus() -> tuple[list[str], list[str]]:
    """The bundled pretraining corpus: ``(train, heldout)`` paragraphs."""
    from svdlora_pl.embedded.datasets.corpus import CORPUS_HELDOUT, CORPUS_TRAIN, read_paragraphs

    return read_paragraphs(CORPUS_TRAIN), read_paragraphs(CORPUS_HELDOUT)


def _qa_texts() -> Iterator[str]:
    """Every bundled QA record's question and worked answer."""
    from svdlora_pl.embedded.datasets import BUNDLED_TRAIN, BUNDLED_VAL

    for path in (BUNDLED_TRAIN, BUNDLED_VAL):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            yield record["question"]
            yield record["answer"]


def _corpus() -> Iterator[str]:
    """Text the tokenizer is trained on: the pretraining corpus (train part) and every bundled QA record."""
    yield from _pretrain_corpus()[0]
    yield from _qa_texts()


@functools.lru_cache(maxsize=1)
def _recipe_hash() -> str:
    """Hash of everything the build depends on; computed once per process (the inputs are package files)."""
    digest = hashlib.sha256()
    recipe = [_RECIPE_VERSION, MODEL_CONFIG, SEED, SPECIAL_TOKENS, CHATML_TEMPLATE, PRETRAIN.to_dict()]
    digest.update(json.dumps(recipe).encode())
    for part in (*_pretrain_corpus(), list(_qa_texts())):
        digest.update(json.dumps(part).encode())  # each part framed, so text cannot move between parts
    return digest.hexdigest()[:12]


def build_tokenizer():  # -> transformers.PreTrainedTokenizerFast
    """Train the byte-level BPE tokenizer on the bundled corpus and QA data (deterministic); wrap it for transformers."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # The same normalization and pre-tokenization as Qwen2's tokenizer, which is also what transformers
    # instantiates when it loads this tokenizer next to a ``qwen2`` config.
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        model_max_length=int(MODEL_CONFIG["max_position_embeddings"]),  # type: ignore[arg-type]
        padding_side="right",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_model(tokenizer):  # -> transformers.Qwen2ForCausalLM
    """A tiny Qwen2 causal LM with weights drawn from a fixed seed, independent of the global RNG."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        **MODEL_CONFIG,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    return model


def build_tiny(directory: Path, settings: PretrainSettings = PRETRAIN) -> None:
    """Build the tokenizer, pretrain the seeded model, and save both plus :data:`RECIPE_FILENAME`.

    Args:
        directory: Existing empty directory to save into (``save_pretrained`` layout).
        settings: Pretraining hyper-parameters (the cached model uses :data:`PRETRAIN`).
    """
    import transformers

    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    train, heldout = _pretrain_corpus()
    from svdlora_pl.spectral import cpu_threads

    # One thread: small matmuls gain little from a second one, and two threads crawl when the cores are busy
    # (measured 47 s on one thread against 490 s on two, on 2 cores shared with other jobs).
    with cpu_threads(1):
        result = pretrain(model, tokenizer, train, heldout, settings)
    log.info(
        "pretrained the tiny model in %.0f s: train loss %.3f -> %.3f, held-out perplexity %.1f -> %.2f",
        result.seconds,
        result.initial_loss,
        result.final_loss,
        result.heldout_perplexity_before,
        result.heldout_perplexity_after,
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    recipe = {
        "name": TINY_MODEL,
        "recipe_version": _RECIPE_VERSION,
        "seed": SEED,
        "model_config": MODEL_CONFIG,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokenizer_trained_on": ["corpus_train.txt", "probability_train.jsonl", "probability_val.jsonl"],
        "corpus": {
            "train_file": "corpus_train.txt",
            "train_paragraphs": len(train),
            "train_bytes": sum(len(p.encode()) + 1 for p in train),
            "train_tokens": result.train_blocks * settings.seq_len,
            "heldout_file": "corpus_heldout.txt",
            "heldout_paragraphs": len(heldout),
        },
        "pretraining": settings.to_dict(),
        "result": {
            "steps": result.steps,
            "tokens_seen": result.tokens_seen,
            "initial_train_loss": round(result.initial_loss, 4),
            "final_train_loss": round(result.final_loss, 4),
            "heldout_loss_before": round(result.heldout_loss_before, 4),
            "heldout_loss_after": round(result.heldout_loss_after, 4),
            "heldout_perplexity_before": round(result.heldout_perplexity_before, 2),
            "heldout_perplexity_after": round(result.heldout_perplexity_after, 3),
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    atomic_write_text(directory / RECIPE_FILENAME, json.dumps(recipe, indent=2) + "\n")


def tiny_model_dir() -> Path:
    """Directory of the cached tiny model, built atomically (temporary directory, then rename) if missing."""
    target = cache_root() / f"tiny-qwen2-{_recipe_hash()}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("building the tiny model (one-time, ~%d s on 2 CPU cores) into %s", BUILD_SECONDS, target)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=target.parent))
    try:
        build_tiny(staging)
        if target.exists() and not (target / "config.json").is_file():
            shutil.rmtree(target, ignore_errors=True)  # leftover of an interrupted build
        try:
            staging.rename(target)
        except OSError:  # another process finished first; its build is identical
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model_path(name_or_path: str) -> str:
    """Map :data:`TINY_MODEL` to its cached directory; return any other name or path unchanged."""
    return str(tiny_model_dir()) if name_or_path == TINY_MODEL else name_or_path
