"""The embedded tiny Qwen2 model: deterministic tokenizer, ChatML template, pretraining, cached checkpoint."""

from __future__ import annotations

import functools
import json
import logging
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from svdlora_pl.embedded import tiny
from svdlora_pl.embedded.datasets import BUNDLED_VAL
from svdlora_pl.embedded.datasets.corpus import CORPUS_HELDOUT, CORPUS_TRAIN, read_paragraphs
from svdlora_pl.embedded.pretrain import PretrainSettings, corpus_loss, pack
from svdlora_pl.embedded.tiny import (
    PRETRAIN,
    RECIPE_FILENAME,
    SPECIAL_TOKENS,
    TINY_MODEL,
    build_model,
    build_tiny,
    build_tokenizer,
    resolve_model_path,
    tiny_model_dir,
)

SAMPLE = "The probability is 12345/67890, isn't it?\nYes:  3 dice, caf\u00e9 \u2013 \u00bd."
# A pretraining short enough for tests of the build and cache mechanics (which do not depend on its length).
QUICK = PretrainSettings(steps=10, batch_size=32, seq_len=32, warmup_steps=2)


@pytest.fixture(scope="module")
def built():
    return build_tokenizer()


@pytest.fixture(scope="module")
def entry_name() -> str:
    """Name of the cache entry (taken from the session cache, before any test re-points the cache)."""
    return Path(resolve_model_path(TINY_MODEL)).name


@pytest.fixture(scope="module")
def pretrained():
    return AutoModelForCausalLM.from_pretrained(resolve_model_path(TINY_MODEL)).eval()


@pytest.fixture
def quick_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Builds triggered by :func:`tiny_model_dir` use the short :data:`QUICK` pretraining."""
    monkeypatch.setattr(tiny, "build_tiny", functools.partial(build_tiny, settings=QUICK))


def _qa_val_texts() -> list[str]:
    records = [json.loads(line) for line in BUNDLED_VAL.read_text().splitlines()]
    return [f"{r['question']} {r['answer']}" for r in records]


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


def test_tokenizer_compresses_both_corpus_and_qa_text(built) -> None:
    for texts in (read_paragraphs(CORPUS_HELDOUT), _qa_val_texts()):
        text = " ".join(texts)
        assert len(text) / len(built.encode(text)) > 2.5, texts[0]  # bytes alone would give 1.0
    assert len(built.encode(" numerator denominator probability")) == 3  # one word, one token, from either text


def test_saved_tokenizer_encodes_like_built_one(built) -> None:
    loaded = AutoTokenizer.from_pretrained(resolve_model_path(TINY_MODEL))
    assert loaded.encode(SAMPLE) == built.encode(SAMPLE)
    assert built.convert_ids_to_tokens(built.encode("12345")) == list("12345")  # digits split, like Qwen2
    assert loaded.decode(loaded.encode(SAMPLE)) == SAMPLE


def test_pack_joins_paragraphs_with_endoftext_and_drops_the_tail(built) -> None:
    paragraphs = ["Two and two make four.", "A week has 7 days."]
    separator = built.convert_tokens_to_ids("<|endoftext|>")
    ids = [*built.encode(paragraphs[0]), separator, *built.encode(paragraphs[1]), separator]
    blocks = pack(built, paragraphs, 4)
    assert blocks.shape == (len(ids) // 4, 4)
    assert blocks.flatten().tolist() == ids[: len(ids) // 4 * 4]
    with pytest.raises(ValueError, match="shorter than one block"):
        pack(built, paragraphs, len(ids) + 1)


def test_build_model_is_seeded_and_leaves_the_global_rng_alone(built) -> None:
    torch.manual_seed(123)
    first = build_model(built)
    after_build = torch.rand(4)
    torch.manual_seed(123)
    assert torch.equal(after_build, torch.rand(4))  # the build did not consume the global RNG
    second = build_model(built).state_dict()
    for name, tensor in first.state_dict().items():
        assert torch.equal(second[name], tensor), name


def test_cached_model_is_the_pretrained_tiny_qwen2(built, pretrained) -> None:
    config = pretrained.config
    assert config.model_type == "qwen2"
    assert config.num_key_value_heads < config.num_attention_heads
    assert config.vocab_size >= len(built)
    seeded = build_model(built).state_dict()
    loaded = pretrained.state_dict()
    assert loaded.keys() == seeded.keys()
    moved = [name for name, tensor in seeded.items() if not torch.allclose(loaded[name], tensor, atol=1e-3)]
    assert set(moved) >= {name for name, tensor in seeded.items() if tensor.dim() == 2}  # every matrix trained
    recipe = json.loads((Path(resolve_model_path(TINY_MODEL)) / RECIPE_FILENAME).read_text())
    assert recipe["pretraining"] == PRETRAIN.to_dict() and recipe["result"]["steps"] == PRETRAIN.steps
    assert recipe["corpus"]["train_paragraphs"] == len(read_paragraphs(CORPUS_TRAIN))
    assert recipe["corpus"]["train_bytes"] == CORPUS_TRAIN.stat().st_size


def test_pretraining_lowers_the_heldout_corpus_loss(built, pretrained) -> None:
    heldout = pack(built, read_paragraphs(CORPUS_HELDOUT), PRETRAIN.seq_len)
    random_loss = corpus_loss(build_model(built), heldout, PRETRAIN.batch_size)
    loss = corpus_loss(pretrained, heldout, PRETRAIN.batch_size)
    assert random_loss == pytest.approx(math.log(len(built)), abs=0.3)  # seeded init: near-uniform predictions
    assert loss < 2.0 and loss < random_loss - 4.0  # measured: 6.97 -> 1.15
    recipe = json.loads((Path(resolve_model_path(TINY_MODEL)) / RECIPE_FILENAME).read_text())
    assert recipe["result"]["heldout_loss_after"] == pytest.approx(loss, abs=2e-3)
    assert recipe["result"]["heldout_loss_before"] == pytest.approx(random_loss, abs=2e-3)
    qa = pack(built, _qa_val_texts(), PRETRAIN.seq_len)  # never trained on, but in the same language
    qa_random = corpus_loss(build_model(built), qa, PRETRAIN.batch_size)
    assert corpus_loss(pretrained, qa, PRETRAIN.batch_size) < qa_random - 1.0  # measured: 6.98 -> 5.64


def test_build_is_deterministic_and_leaves_the_global_rng_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    torch.manual_seed(7)
    with caplog.at_level(logging.INFO, logger="svdlora_pl"):
        build_tiny(tmp_path / "a", QUICK)
    progress = [r.getMessage() for r in caplog.records if "pretraining the tiny model: step" in r.getMessage()]
    after_build = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(after_build, torch.rand(3))
    build_tiny(tmp_path / "b", QUICK)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", RECIPE_FILENAME} <= set(files)
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert len(progress) == 10 and progress[-1].startswith("pretraining the tiny model: step 10/10")
    result = json.loads((tmp_path / "a" / RECIPE_FILENAME).read_text())["result"]
    assert result["final_train_loss"] < result["initial_train_loss"]


@pytest.mark.slow
def test_full_build_reproduces_the_cached_model(tmp_path: Path) -> None:
    build_tiny(tmp_path)
    cached = Path(resolve_model_path(TINY_MODEL))
    for name in ("model.safetensors", "tokenizer.json", RECIPE_FILENAME):
        assert (tmp_path / name).read_bytes() == (cached / name).read_bytes(), name


@pytest.mark.usefixtures("quick_builds")
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


@pytest.mark.usefixtures("quick_builds")
def test_empty_stale_dir_is_rebuilt_and_the_build_is_announced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SVDLORA_CACHE", str(tmp_path))
    (tmp_path / entry_name).mkdir()
    with caplog.at_level(logging.INFO, logger="svdlora_pl"):
        result = tiny_model_dir()
    assert result == tmp_path / entry_name
    assert (result / "config.json").is_file() and (result / "model.safetensors").is_file()
    assert any(r.getMessage().startswith("building the tiny model (one-time, ~") for r in caplog.records)


@pytest.mark.usefixtures("quick_builds")
def test_partial_dir_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry_name: str) -> None:
    monkeypatch.setenv("SVDLORA_CACHE", str(tmp_path))
    partial = tmp_path / entry_name
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"truncated")
    result = tiny_model_dir()
    assert (result / "config.json").is_file()
    from safetensors.torch import load_file

    weights = load_file(str(result / "model.safetensors"))  # the truncated file was replaced by a whole one
    assert "model.embed_tokens.weight" in weights and len(weights) > 10
