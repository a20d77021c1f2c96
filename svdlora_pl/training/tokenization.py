"""Tokenization of QA records: chat-templated, prompt-masked samples and padded batches.

Chat-templated tokenization of QA records (see :mod:`svdlora_pl.training.records`) so that only assistant
completions carry labels:

* every assistant turn is supervised (its content plus the end-of-turn text the template puts after it, e.g.
  ``<|im_end|>\\n`` in ChatML); everything else (system, user turns and the generation prompt
  ``<|im_start|>assistant\\n``) gets label ``-100``;
* the text is split at turn boundaries found by rendering message prefixes (the template must be
  prefix-stable), each segment is tokenized on its own with ``add_special_tokens=False`` and the ids are
  concatenated, so the mask lines up exactly with the tokens and the ids decode back to the rendered text;
* sequences longer than ``max_length`` are dropped or truncated, and each split's counts are kept in
  :attr:`QADataModule.stats` and logged as one line.

Batches are padded dynamically. Validation, test and predict batches also carry the left-padded generation
prompt (``prompt_input_ids``, ``prompt_attention_mask``), the reference ``answers`` and the original
``records``, so a model can generate, score and write predictions from the same batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from svdlora_pl.errors import InputError
from svdlora_pl.training.records import QARecord

IGNORE_INDEX = -100
"""Label of positions that carry no loss (prompt and padding)."""


@dataclass
class SplitStats:
    """What tokenization did to one split."""

    source: str
    records: int
    samples: int
    truncated: int
    dropped: int
    longest: int

    def summary(self, split: str) -> str:
        return (
            f"{split}: {self.samples} samples, {self.truncated} truncated, {self.dropped} dropped, "
            f"longest {self.longest} tokens ({self.source})"
        )


@dataclass
class QASample:
    """One tokenized record. ``input_ids[:prompt_length]`` is the prompt of its last assistant turn."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    prompt_length: int
    record: QARecord


class QADataset(Dataset):
    """A list of :class:`QASample` (tokenized once, held in memory)."""

    def __init__(self, samples: list[QASample]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> QASample:
        return self.samples[index]


def render_segments(tokenizer: Any, messages: list[dict[str, str]], where: str) -> list[tuple[str, bool]]:
    """Split the rendered conversation into ``(text, supervised)`` segments at assistant-turn boundaries.

    Before assistant message ``i`` the segment ends with the generation prompt (``messages[:i]`` rendered with
    ``add_generation_prompt=True``); the supervised segment is what rendering ``messages[:i+1]`` adds after it.
    Raises :class:`InputError` (naming the tokenizer and ``where``) if the template is not prefix-stable.
    """

    def render(prefix: list[dict[str, str]], generation_prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(prefix, tokenize=False, add_generation_prompt=generation_prompt)

    def unstable(detail: str) -> InputError:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        return InputError(f"tokenizer {name}: chat template is not prefix-stable ({detail}) at {where}")

    texts = [""] + [render(messages[: k + 1]) for k in range(len(messages))]
    for k in range(1, len(texts)):
        if not texts[k].startswith(texts[k - 1]):
            raise unstable(f"messages[:{k - 1}] does not render as a prefix of messages[:{k}]")
    segments: list[tuple[str, bool]] = []
    done = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(messages[:i], generation_prompt=True)
        if not prompt.startswith(texts[i]) or not texts[i + 1].startswith(prompt):
            raise unstable(f"the generation prompt before messages[{i}] is not a prefix of its rendering")
        segments += [(prompt[done:], False), (texts[i + 1][len(prompt) :], True)]
        done = len(texts[i + 1])
    if done < len(texts[-1]):
        segments.append((texts[-1][done:], False))
    return segments


def tokenize_records(
    records: Sequence[QARecord],
    tokenizer: Any,
    max_length: int,
    overlong: Literal["truncate", "drop"],
    for_generation: bool,
    source: str,
) -> tuple[QADataset, SplitStats]:
    """Tokenize records into samples and apply the length policy (see :class:`~svdlora_pl.training.datamodule.QADataModule`).

    With ``for_generation`` a truncated sample is also dropped when its last prompt does not fit whole. The work per
    record is bounded: a record whose messages hold more than :func:`character_bound` characters cannot fit in
    ``max_length`` tokens, so it is dropped before rendering, or (``truncate``) its text is cut at twice that bound
    before tokenizing (its first ``max_length`` tokens lie far before the cut).
    """
    bound = character_bound(tokenizer, max_length)
    kept, dropped = [], 0
    for record in records:
        if sum(len(m["content"]) for m in record.messages) <= bound:
            kept.append((record, record.messages))
        elif overlong == "truncate":
            kept.append((record, cut_messages(record.messages, 2 * bound)))
        else:
            dropped += 1
    all_segments = [render_segments(tokenizer, messages, f"{r.source}: {r.where}") for r, messages in kept]
    flat = [text for segments in all_segments for text, _ in segments]
    flat_ids = iter(tokenizer(flat, add_special_tokens=False)["input_ids"]) if flat else iter(())
    samples, truncated = [], 0
    for (record, _), segments in zip(kept, all_segments, strict=True):
        ids: list[int] = []
        labels: list[int] = []
        prompt_length = 0
        for _, supervised in segments:
            piece = next(flat_ids)
            if supervised:
                prompt_length = len(ids)
            ids += piece
            labels += piece if supervised else [IGNORE_INDEX] * len(piece)
        if len(ids) > max_length:
            if overlong == "drop":
                dropped += 1
                continue
            truncated += 1
            ids, labels = ids[:max_length], labels[:max_length]
            if all(label == IGNORE_INDEX for label in labels) or (for_generation and prompt_length >= max_length):
                dropped += 1
                continue
        samples.append(QASample(torch.tensor(ids), torch.tensor(labels), prompt_length, record))
    longest = max((len(s.input_ids) for s in samples), default=0)
    stats = SplitStats(source, len(records), len(samples), truncated, dropped, longest)
    if not samples:
        raise InputError(
            f"{source}: all {len(records)} records were dropped by the length policy "
            f"(data.max_length={max_length}, data.overlong={overlong!r})"
        )
    return QADataset(samples), stats


def character_bound(tokenizer: Any, max_length: int) -> int:
    """Characters beyond which a text has more than ``max_length`` tokens, whatever it says.

    A token covers at most L characters, L the longest token string of the vocabulary (byte-level BPE: a character
    is at least one byte), so a text of more than ``max_length``·L characters has more than ``max_length`` tokens.
    """
    longest = max((len(token) for token in tokenizer.get_vocab()), default=1)
    return max_length * max(1, longest)


def cut_messages(messages: Sequence[dict[str, str]], characters: int) -> list[dict[str, str]]:
    """The messages with their contents cut to ``characters`` in all, in order (later ones left empty)."""
    cut, left = [], characters
    for message in messages:
        cut.append({**message, "content": message["content"][: max(left, 0)]})
        left -= len(message["content"])
    return cut


class QACollator:
    """Pads a list of :class:`QASample` into a batch (see :class:`~svdlora_pl.training.datamodule.QADataModule` for the keys)."""

    def __init__(self, pad_token_id: int, with_prompts: bool) -> None:
        self.pad_token_id = pad_token_id
        self.with_prompts = with_prompts

    def __call__(self, samples: list[QASample]) -> dict[str, Any]:
        batch = _pad([s.input_ids for s in samples], self.pad_token_id, left=False)
        batch["labels"] = _pad([s.labels for s in samples], IGNORE_INDEX, left=False)["input_ids"]
        if self.with_prompts:
            prompts = _pad([s.input_ids[: s.prompt_length] for s in samples], self.pad_token_id, left=True)
            batch["prompt_input_ids"] = prompts["input_ids"]
            batch["prompt_attention_mask"] = prompts["attention_mask"]
            batch["answers"] = [s.record.answer for s in samples]
            batch["records"] = [s.record.data for s in samples]
        return batch


def _pad(sequences: list[torch.Tensor], value: int, left: bool) -> dict[str, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), value, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = seq
        mask[row, span] = 1
    return {"input_ids": ids, "attention_mask": mask}
