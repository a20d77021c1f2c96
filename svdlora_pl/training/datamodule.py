"""QA data for causal-LM fine-tuning: JSON/JSONL records -> chat-templated, prompt-masked batches.

:class:`QADataModule` reads question/answer or chat-style records (see :mod:`svdlora_pl.training.records`), renders
them with the tokenizer's chat template and tokenizes them so that only assistant completions carry labels:

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

import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from svdlora_pl.embedded.tiny import TINY_MODEL
from svdlora_pl.errors import InputError
from svdlora_pl.training.loading import load_tokenizer
from svdlora_pl.training.records import Fields, QARecord, read_records

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label of positions that carry no loss (prompt and padding)."""

SPLITS = ("train", "val", "test", "predict")


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
    """Tokenize records into samples and apply the length policy (see :class:`QADataModule`).

    With ``for_generation`` a truncated sample is also dropped when its last prompt does not fit whole.
    """
    all_segments = [render_segments(tokenizer, r.messages, f"{r.source}: {r.where}") for r in records]
    flat = [text for segments in all_segments for text, _ in segments]
    flat_ids = iter(tokenizer(flat, add_special_tokens=False)["input_ids"]) if flat else iter(())
    samples, truncated, dropped = [], 0, 0
    for record, segments in zip(records, all_segments, strict=True):
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


class QACollator:
    """Pads a list of :class:`QASample` into a batch (see :class:`QADataModule` for the keys)."""

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


class EpochShuffleSampler(DistributedSampler):
    """A random permutation of ``range(num_samples)`` that depends only on ``(seed, epoch)``, sharded across ranks.

    It draws from its own ``torch.Generator`` seeded with ``seed + epoch``, never from the global RNG, so a run
    resumed at epoch ``e`` sees the same order as the original run. Lightning calls :meth:`set_epoch` at the
    start of every epoch. With ``num_replicas`` = W processes, rank k takes positions k, k + W, k + 2W, ... of
    that one permutation (padded by wrapping around to a multiple of W), so a step of W ranks × batch b sees
    exactly the samples a single process sees with batch W·b. Being a ``DistributedSampler``, Lightning uses it
    as it is instead of wrapping it in a second, differently shuffled one.
    """

    def __init__(self, num_samples: int, seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.num_samples_total = num_samples
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self.num_samples = -(-num_samples // num_replicas)  # per rank
        self.total_size = self.num_samples * num_replicas
        self.shuffle, self.drop_last = True, False  # DistributedSampler's attributes, read by Lightning

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_samples_total, generator=generator).tolist()
        order += order[: self.total_size - len(order)]
        return iter(order[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


def rank_shard(loader: DataLoader, rank: int, world_size: int) -> DataLoader:
    """``loader`` over positions ``rank``, ``rank + world_size``, … of its dataset, in order and unpadded.

    Every sample is seen by exactly one rank, so sum-reduced metrics (torchmetrics' ``MeanMetric``) synced over the
    ranks equal one process over the whole dataset. The loader itself when ``world_size`` is 1.
    """
    if world_size == 1:
        return loader
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=range(rank, len(loader.dataset), world_size),
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        generator=loader.generator,
    )


class QADataModule(LightningDataModule):
    """Chat-templated, prompt-masked QA data from JSON/JSONL files (default: the bundled probability QA set).

    A file is a ``.json`` list of records or a ``.jsonl`` file with one record per line. A record holds either
    a question and an answer (strings) or a ``messages`` list of ``{"role", "content"}`` objects (roles system,
    user, assistant; at least one assistant message; for training it must end with one, elsewhere later
    messages are ignored). Extra fields (e.g. ``final_answer``) are kept and passed on in ``records``. Loss is
    on every assistant turn (content and end-of-turn marker); prompts are masked with ``-100``.

    Batches hold ``input_ids``, ``attention_mask`` and ``labels`` (right-padded). Validation, test and predict
    batches also hold ``prompt_input_ids`` and ``prompt_attention_mask`` (the conversation up to and including
    the last assistant header, left-padded for ``generate``), ``answers`` (the reference last assistant
    message) and ``records`` (the original objects).

    Args:
        train_file: Training records (.json or .jsonl). None: the bundled probability QA training set.
        val_file: Validation records. None: the ``val_fraction`` hold-out when that is > 0, else the bundled
            validation set when ``train_file`` is None, else no validation (Lightning skips it).
        val_fraction: Fraction of the training records held out (seeded by ``seed``) for validation when no
            ``val_file`` is given; 0 disables. Must be in [0, 1) and cannot be combined with ``val_file``.
        test_file: Test records. None: the validation set.
        predict_file: Records to predict. None: the validation set.
        tokenizer: Tokenizer name or path (hub name, local directory, or the embedded ``svdlora:tiny-qwen2``);
            the CLI links it to the model's ``model_name_or_path``.
        trust_remote_code: Allow the tokenizer's custom code from the hub to run. Off unless you set it.
        question_field: Field holding the question in question/answer records.
        answer_field: Field holding the answer in question/answer records.
        messages_field: Field holding the message list in chat-style records.
        system_prompt: System message prepended to question/answer records. None: the chat template's
            default (Qwen's "You are a helpful assistant.").
        max_length: Longest tokenized sequence kept, in tokens.
        overlong: What to do with longer sequences: "drop" them, or "truncate" them on the right (a truncated
            sample left with no supervised token, or whose generation prompt no longer fits in an evaluation
            split, is dropped).
        batch_size: Training batch size (per device, per micro-batch).
        eval_batch_size: Batch size for validation, test and predict. None: ``batch_size``.
        num_workers: DataLoader worker processes (0: load in the main process).
        seed: Seed of the training shuffle (combined with the epoch) and of the ``val_fraction`` hold-out.

    Example (the ``data:`` section of a config)::

        data:
          class_path: svdlora_pl.data.QADataModule
          init_args:
            train_file: data/train.jsonl   # null: bundled probability QA
            val_fraction: 0.1              # hold out 10% of train for validation
            max_length: 512
            overlong: drop                 # or truncate
            batch_size: 4
            eval_batch_size: 8
            seed: 0
    """

    def __init__(
        self,
        train_file: str | None = None,
        val_file: str | None = None,
        val_fraction: float = 0.0,
        test_file: str | None = None,
        predict_file: str | None = None,
        tokenizer: str = TINY_MODEL,
        trust_remote_code: bool = False,
        question_field: str = "question",
        answer_field: str = "answer",
        messages_field: str = "messages",
        system_prompt: str | None = None,
        max_length: int = 512,
        overlong: Literal["truncate", "drop"] = "drop",
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise InputError(f"data.val_fraction: must be in [0, 1), got {val_fraction}")
        if val_file is not None and val_fraction > 0:
            raise InputError("data.val_fraction: cannot be combined with data.val_file (give one of them)")
        for name, value in (("max_length", max_length), ("batch_size", batch_size)):
            if value < 1:
                raise InputError(f"data.{name}: must be a positive integer, got {value}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise InputError(f"data.eval_batch_size: must be a positive integer, got {eval_batch_size}")
        if num_workers < 0:
            raise InputError(f"data.num_workers: must be >= 0, got {num_workers}")
        if overlong not in ("truncate", "drop"):
            raise InputError(f"data.overlong: must be 'truncate' or 'drop', got {overlong!r}")
        files = {"train_file": train_file, "val_file": val_file, "test_file": test_file, "predict_file": predict_file}
        for name, path in files.items():  # fail fast, before a large model is loaded
            if path is not None and not Path(path).is_file():
                raise InputError(f"{path}: file not found (data.{name})")
        self.save_hyperparameters()
        self.train_file, self.val_file = train_file, val_file
        self.test_file, self.predict_file = test_file, predict_file
        self.val_fraction = val_fraction
        self.tokenizer_name = tokenizer
        self.trust_remote_code = trust_remote_code
        self.fields = Fields(question_field, answer_field, messages_field)
        self.system_prompt = system_prompt
        self.max_length = max_length
        self.overlong = overlong
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.stats: dict[str, SplitStats] = {}
        """Per split (``train``, ``val``, ``test``, ``predict``), what tokenization kept, truncated and dropped."""
        self._tokenizer: Any = None
        self._records: dict[str, list[QARecord] | None] = {}
        self._datasets: dict[str, QADataset | None] = {}

    @property
    def tokenizer(self) -> Any:
        """The tokenizer, loaded on first use."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_name, trust_remote_code=self.trust_remote_code)
        return self._tokenizer

    def prepare_data(self) -> None:
        """Fetch (or build, for the tiny model) the tokenizer once, before any process reads it."""
        _ = self.tokenizer

    def setup(self, stage: str | None = None) -> None:
        """Read and tokenize the splits that ``stage`` needs (each once; later calls reuse them)."""
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
        for split in needed.get(stage, SPLITS) if stage else SPLITS:
            self.dataset(split)

    def dataset(self, split: str) -> QADataset | None:
        """The tokenized dataset of ``split`` (``train``, ``val``, ``test``, ``predict``); None if it has none."""
        if split not in self._datasets:
            records = self._split_records(split)
            dataset = None
            if split in ("test", "predict") and records is not None and records is self._records.get("val"):
                dataset = self.dataset("val")  # the validation set, tokenized once
                self.stats[split] = self.stats["val"]
            elif records is not None:
                source = records[0].source
                dataset, stats = tokenize_records(
                    records, self.tokenizer, self.max_length, self.overlong, split != "train", source
                )
                self.stats[split] = stats
            if split in self.stats and rank_zero_only.rank == 0:
                log.info(self.stats[split].summary(split))
            self._datasets[split] = dataset
        return self._datasets[split]

    def _split_records(self, split: str) -> list[QARecord] | None:
        if split in self._records:
            return self._records[split]
        from svdlora_pl.embedded.datasets import BUNDLED_TRAIN, BUNDLED_VAL

        read = lambda path, training: read_records(path, self.fields, self.system_prompt, training)  # noqa: E731
        if split in ("train", "val") and (split == "train" or self.val_fraction > 0):
            train = read(self.train_file or BUNDLED_TRAIN, True)
            if self.val_fraction > 0:
                n_val = max(1, round(self.val_fraction * len(train)))
                if n_val >= len(train):
                    raise InputError(
                        f"{train[0].source}: {len(train)} records are too few to hold out "
                        f"data.val_fraction={self.val_fraction}"
                    )
                order = list(range(len(train)))
                random.Random(self.seed).shuffle(order)
                held_out = set(order[:n_val])
                self._records["val"] = [r for i, r in enumerate(train) if i in held_out]
                train = [r for i, r in enumerate(train) if i not in held_out]
            self._records["train"] = train
        elif split == "val":
            path = self.val_file or (BUNDLED_VAL if self.train_file is None else None)
            self._records["val"] = None if path is None else read(path, False)
        else:
            path = self.test_file if split == "test" else self.predict_file
            self._records[split] = read(path, False) if path else self._split_records("val")
        return self._records[split]

    def train_dataloader(self) -> DataLoader:
        dataset = self._require("train")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(dataset), self.seed, *self._replicas()),
            collate_fn=QACollator(self.tokenizer.pad_token_id, with_prompts=False),
            **self._loader_kwargs(),
        )

    def _replicas(self) -> tuple[int, int]:
        """(number of processes, this process's rank) of the attached trainer; (1, 0) without one."""
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def val_dataloader(self) -> DataLoader | list:
        if self.dataset("val") is None:
            return []  # no validation set: Lightning skips validation
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict")

    def _eval_loader(self, split: str) -> DataLoader:
        return DataLoader(
            self._require(split),
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=QACollator(self.tokenizer.pad_token_id, with_prompts=True),
            **self._loader_kwargs(),
        )

    def _loader_kwargs(self) -> dict[str, Any]:
        # Own generator: creating an iterator draws its base seed from it, not from the global torch RNG.
        return {
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "generator": torch.Generator().manual_seed(self.seed),
        }

    def _require(self, split: str) -> QADataset:
        dataset = self.dataset(split)
        if dataset is None:
            raise InputError(f"data.{split}_file: no {split} data (give data.{split}_file or data.val_file)")
        return dataset
