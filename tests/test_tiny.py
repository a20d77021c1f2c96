"""The embedded tiny Qwen2 model: deterministic tokenizer, ChatML template, cached checkpoint, seeded weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from svdlora_pl import tiny
from svdlora_pl.tiny import SPECIAL_TOKENS, TINY_MODEL, build_model, build_tokenizer, resolve_model_path, tiny_model_dir

SAMPLE = "The probability is 12345/67890, isn't it?\nYes:  3 dice, caf\u00e9 \u2013 \u00bd."


@pytest.fixture(scope="module")
def built():
    return build_tokenizer()


@pytest.fixture(scope="module")
def entry_name() -> str:
    """Name of the cache entry (taken from the session cache, before any test re-points the cache)."""
    return Path(resolve_model_path(TINY_MODEL)).name


def test_build_tokenizer_is_deterministic(built) -> None:
    assert build_tokenizer().backend_tokenizer.to_str() == built.backend_tokenizer.to_str()


def test_special_tokens_are_single_tokens(built) -> None:
    ids = [built.encode(token) for token in SPECIAL_TOKENS]
    assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == 3
    assert built.eos_token == "<|im_end|>" and built.pad_token == "<|endoftext|>"


def test_chat_template_is_chatml(built) -> None:
    conversation = [{"role": "user", "content": "What is 1/2?"}, {"role": "assistant", "content": "0.5"}]
    assert built.apply_chat_template(conversation, tokenize=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is 1/2?<|im_end|>\n"
        "<|im_start|>assistant\n0.5<|im_end|>\n"
    )
    prompt = built.apply_chat_template(conversation[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("What is 1/2?<|im_end|>\n<|im_start|>assistant\n")
    system = [{"role": "system", "content": "Be brief."}, *conversation[:1]]
    assert built.apply_chat_template(system, tokenize=False).startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def test_saved_tokenizer_encodes_like_built_one(built) -> None:
    loaded = AutoTokenizer.from_pretrained(resolve_model_path(TINY_MODEL))
    assert loaded.encode(SAMPLE) == built.encode(SAMPLE)
    assert built.convert_ids_to_tokens(built.encode("12345")) == list("12345")  # digits split, like Qwen2
    assert loaded.decode(loaded.encode(SAMPLE)) == SAMPLE


def test_cached_model_is_tiny_qwen2_with_seeded_weights(built) -> None:
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(TINY_MODEL))
    config = model.config
    assert config.model_type == "qwen2"
    assert config.num_key_value_heads < config.num_attention_heads
    assert config.vocab_size >= len(built)
    torch.manual_seed(123)
    fresh = build_model(built)
    after_build = torch.rand(4)
    torch.manual_seed(123)
    assert torch.equal(after_build, torch.rand(4))  # the build did not consume the global RNG
    loaded, expected = model.state_dict(), fresh.state_dict()
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name


def test_tiny_model_dir_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVDLORA_CACHE", str(tmp_path))
    first = tiny_model_dir()
    assert first.parent == tmp_path and (first / "config.json").is_file()
    stamps = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}

    def no_rebuild(directory: Path) -> None:
        raise AssertionError("tiny model rebuilt although cached")

    monkeypatch.setattr(tiny, "build_tiny", no_rebuild)
    assert tiny_model_dir() == first
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir()} == stamps
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no staging dirs left


def test_empty_stale_dir_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry_name: str) -> None:
    monkeypatch.setenv("SVDLORA_CACHE", str(tmp_path))
    (tmp_path / entry_name).mkdir()
    result = tiny_model_dir()
    assert result == tmp_path / entry_name
    assert (result / "config.json").is_file() and (result / "model.safetensors").is_file()


def test_partial_dir_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry_name: str) -> None:
    monkeypatch.setenv("SVDLORA_CACHE", str(tmp_path))
    partial = tmp_path / entry_name
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"truncated")
    result = tiny_model_dir()
    assert (result / "config.json").is_file()
