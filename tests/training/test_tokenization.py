"""Tokenization of QA records: prompt masking, padding, and chat templates that are not prefix-stable."""

from __future__ import annotations

import copy

import pytest
import torch
from builders import CHAT, QA, setup_split, write_jsonl

from svdlora_pl.errors import InputError
from svdlora_pl.training.datamodule import QADataModule
from svdlora_pl.training.tokenization import IGNORE_INDEX, QACollator, render_segments


def test_ids_decode_to_rendered_text(tiny_tokenizer):
    dm = QADataModule()
    for sample in dm.dataset("val"):
        rendered = tiny_tokenizer.apply_chat_template(sample.record.messages, tokenize=False)
        assert tiny_tokenizer.decode(sample.input_ids) == rendered


def test_collate_pads_right_and_prompts_left(tmp_path, tiny_tokenizer):
    records = [{"question": "Q?", "answer": "A."}, {"question": "A much longer question, isn't it?", "answer": "Yes."}]
    dm = setup_split(write_jsonl(tmp_path / "qa.jsonl", records), split="val", eval_batch_size=2)
    batch = next(iter(dm.val_dataloader()))
    samples = list(dm.dataset("val"))
    pad = tiny_tokenizer.pad_token_id
    lengths = [len(s.input_ids) for s in samples]
    assert batch["input_ids"].shape == (2, max(lengths))
    for row, (sample, n) in enumerate(zip(samples, lengths, strict=True)):
        assert torch.equal(batch["input_ids"][row, :n], sample.input_ids)
        assert (batch["input_ids"][row, n:] == pad).all()
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (max(lengths) - n)
        assert torch.equal(batch["labels"][row, :n], sample.labels)
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
    prompt_lengths = [s.prompt_length for s in samples]
    width = max(prompt_lengths)
    assert batch["prompt_input_ids"].shape == (2, width)
    for row, (sample, n) in enumerate(zip(samples, prompt_lengths, strict=True)):
        assert torch.equal(batch["prompt_input_ids"][row, width - n :], sample.input_ids[:n])
        assert (batch["prompt_input_ids"][row, : width - n] == pad).all()
        assert batch["prompt_attention_mask"][row].tolist() == [0] * (width - n) + [1] * n
        assert tiny_tokenizer.decode(batch["prompt_input_ids"][row, width - n :]).endswith("<|im_start|>assistant\n")
    assert batch["answers"] == ["A.", "Yes."]
    assert batch["records"] == records


def test_collator_without_prompts(tmp_path):
    dm = setup_split(write_jsonl(tmp_path / "qa.jsonl", [QA, CHAT]))
    batch = QACollator(0, with_prompts=False)(list(dm.dataset("train")))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}


def test_template_that_is_not_prefix_stable_is_rejected(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    # drops earlier assistant turns' content (like templates that strip reasoning from past turns)
    tokenizer.chat_template = (
        "{%- for message in messages %}"
        "{%- if message['role'] == 'assistant' and not loop.last %}{{- '<|im_start|>assistant\\n<|im_end|>\\n' }}"
        "{%- else %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    tokenizer.name_or_path = "my-tokenizer"
    with pytest.raises(InputError, match="tokenizer my-tokenizer: chat template is not prefix-stable.*rec 5"):
        render_segments(tokenizer, CHAT["messages"], "rec 5")
