"""``QADataModule``: QA records from JSON/JSONL files (default: the bundled probability QA set) as chat-templated,
prompt-masked, dynamically padded batches (tokenization in :mod:`svdlora_pl.training.tokenization`, the training
order in :mod:`svdlora_pl.training.sampling`)."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader

from svdlora_pl.embedded.tiny import TINY_MODEL
from svdlora_pl.errors import InputError
from svdlora_pl.training.loading import load_tokenizer
from svdlora_pl.training.records import Fields, QARecord, read_records
from svdlora_pl.training.sampling import EpochShuffleSampler, ResumableDataLoader
from svdlora_pl.training.tokenization import QACollator, QADataset, SplitStats, tokenize_records

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "predict")


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
            if path is not None and Path(path).is_dir():
                raise InputError(f"{path}: is a directory, not a .json or .jsonl file (data.{name})")
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
        self._train_loader: ResumableDataLoader | None = None
        self._train_state: dict[str, int] | None = None
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
        """The tokenized dataset of ``split`` (``train``, ``val``, ``test``, ``predict``); None if it has none.

        A problem with the records is an InputError naming the file, the record and the ``data.*`` field that
        pointed at the file.
        """
        try:
            return self._dataset(split)
        except InputError as error:
            field = self._source_field(split)
            if field is None or f"({field})" in str(error):
                raise
            raise InputError(f"{error} ({field})") from None

    def _source_field(self, split: str) -> str | None:
        """The ``data.*`` field naming the file ``split`` is read from; None for the bundled data."""
        if split == "train":
            return "data.train_file" if self.train_file else None
        if split == "val":
            if self.val_file:
                return "data.val_file"
            return "data.train_file" if self.val_fraction > 0 and self.train_file else None
        given = self.test_file if split == "test" else self.predict_file
        return f"data.{split}_file" if given else self._source_field("val")

    def _dataset(self, split: str) -> QADataset | None:
        if split not in self._datasets:
            records = self._split_records(split)
            dataset = None
            if split in ("test", "predict") and records is not None and records is self._records.get("val"):
                dataset = self._dataset("val")  # the validation set, tokenized once
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
        loader = ResumableDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(dataset), self.seed, *self._replicas()),
            collate_fn=QACollator(self.tokenizer.pad_token_id, with_prompts=False),
            **self._loader_kwargs(),
        )
        if self._train_state is not None:
            loader.load_state_dict(self._train_state)
            self._train_state = None
        self._train_loader = loader
        return loader

    def state_dict(self) -> dict[str, Any]:
        """The training loader's position, kept in checkpoints (see :class:`ResumableDataLoader`)."""
        return {} if self._train_loader is None else {"train_loader": self._train_loader.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the training order where a checkpoint's run stopped.

        Lightning restores a data module before ``configure_optimizers`` may build the training loader (through
        ``trainer.estimated_stepping_batches``), which is earlier than it restores the loader's own state; so the
        position goes through here.
        """
        self._train_state = state_dict.get("train_loader")

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
