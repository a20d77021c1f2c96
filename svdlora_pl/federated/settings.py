"""The options of a federated run (:func:`svdlora_pl.federated.run.federate`) and the validated plan built from them.

The nested option groups are frozen dataclasses whose fields are documented where they are declared
(``svdlora federate --help`` prints them as ``--client.lr``, ``--split.topics``, ``--evaluation.exact_match``). The
:class:`Plan` is what the server runs and what every client is sent (as JSON in each training message), so a client
needs nothing but its partition id: its rank is ``ranks[partition-id]`` and its shard follows from ``split``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from numbers import Integral, Real
from typing import Any, Literal, get_args

from svdlora_pl.errors import InputError
from svdlora_pl.lora.settings import QWEN_LINEAR_MODULES

Method = Literal["stack", "svd", "zeropad"]
Weighting = Literal["examples", "equal"]
Partition = Literal["topic", "iid"]
Payload = Literal["none", "fold", "init"]
"""What a client does with the arrays it is sent: nothing in round 1; ``fold`` adds B·A into the frozen base weights
and starts a fresh LoRA (stack, FLoRA); ``init`` starts its LoRA from them (svd, zeropad: FlexLoRA, HetLoRA)."""

PAYLOAD_OF: dict[str, Payload] = {"stack": "fold", "svd": "init", "zeropad": "init"}


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def check_int(name: str, value: Any, minimum: int) -> None:
    """InputError naming ``name`` unless ``value`` is an integer >= ``minimum``."""
    if not _is_int(value) or value < minimum:
        raise InputError(f"{name}: must be an integer >= {minimum}, got {value!r}")


def check_positive(name: str, value: Any) -> None:
    """InputError naming ``name`` unless ``value`` is a finite number > 0."""
    if not _is_number(value) or value <= 0:
        raise InputError(f"{name}: must be a finite number > 0, got {value!r}")


def check_choice(name: str, value: Any, choices: Any) -> None:
    """InputError naming ``name`` unless ``value`` is one of the ``Literal`` ``choices``."""
    allowed = get_args(choices)
    if value not in allowed:
        raise InputError(f"{name}: must be one of {', '.join(allowed)}, got {value!r}")


@dataclass(frozen=True)
class ClientSettings:
    """How every client trains in a round (a Lightning fit on the CPU in fp32, AdamW at a constant learning rate,
    optimizer state new each round).

    Args:
        local_steps: Optimizer steps per client per round.
        lr: AdamW learning rate.
        batch_size: Training batch size.
        scaling: LoRA scaling s = alpha / r of every client (alpha = scaling × r_k): the same s whatever the rank.
        dropout: LoRA dropout.
        target_modules: Last names of the Linear modules that get LoRA (default: every Qwen2 projection).
        max_length: Longest tokenized record kept, in tokens (longer ones are dropped).
        gradient_clip_val: Gradient norm clipping (null: none).
    """

    local_steps: int = 40
    lr: float = 3e-3
    batch_size: int = 8
    scaling: float = 2.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(QWEN_LINEAR_MODULES))
    max_length: int = 256
    gradient_clip_val: float | None = 1.0

    def __post_init__(self) -> None:
        check_int("client.local_steps", self.local_steps, 1)
        check_positive("client.lr", self.lr)
        check_int("client.batch_size", self.batch_size, 1)
        check_positive("client.scaling", self.scaling)
        if not _is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise InputError(f"client.dropout: must be in [0, 1), got {self.dropout!r}")
        if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
            raise InputError(f"client.target_modules: must name at least one module, got {self.target_modules!r}")
        check_int("client.max_length", self.max_length, 1)
        if self.gradient_clip_val is not None:
            check_positive("client.gradient_clip_val", self.gradient_clip_val)


@dataclass(frozen=True)
class SplitSettings:
    """Which training records each client holds (:mod:`svdlora_pl.federated.split`).

    Args:
        train_file: Training records (.json or .jsonl, as ``svdlora fit`` reads them); null: the bundled probability
            QA training split.
        val_file: Validation records the server evaluates the global model on; null: the bundled validation split.
        partition: ``topic``: non-IID, each client holds whole topics (problem types: dice, coins, cards, urns, ...);
            ``iid``: a seeded shuffle cut into equal parts.
        topics: topic only: the topics of each client, one list per client in the order of ``ranks`` (null: the
            topics in order of first appearance, dealt round-robin). Records of topics given to no client are not used.
        topic_field: topic only: the record field holding the topic.
    """

    train_file: str | None = None
    val_file: str | None = None
    partition: Partition = "topic"
    topics: list[list[str]] | None = None
    topic_field: str = "topic"

    def __post_init__(self) -> None:
        check_choice("split.partition", self.partition, Partition)
        if self.topics is not None and self.partition != "topic":
            raise InputError(f"split.topics: only used with split.partition topic, got {self.partition}")
        for k, names in enumerate(self.topics or []):
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise InputError(f"split.topics: client {k}: expected a list of topic names, got {names!r}")
        if self.train_file is not None and self.val_file is None:
            raise InputError("split.val_file: needed with split.train_file (the server evaluates on it)")


@dataclass(frozen=True)
class EvalSettings:
    """The server's evaluation of the global model on the validation split, before round 1 and after every round.

    Args:
        exact_match: Also generate answers greedily and log the answer exact match (the slow part).
        max_new_tokens: Generation length limit for the exact match (bundled answers: at most 104 tokens).
        batch_size: Evaluation batch size.
        limit_batches: Evaluate only this many batches (null: the whole validation split).
    """

    exact_match: bool = True
    max_new_tokens: int = 112
    batch_size: int = 25
    limit_batches: int | None = None

    def __post_init__(self) -> None:
        check_int("evaluation.max_new_tokens", self.max_new_tokens, 1)
        check_int("evaluation.batch_size", self.batch_size, 1)
        if self.limit_batches is not None:
            check_int("evaluation.limit_batches", self.limit_batches, 1)


@dataclass(frozen=True)
class Plan:
    """A validated federated run: the options of :func:`~svdlora_pl.federated.run.federate` (documented there)."""

    output_dir: str
    method: Method
    ranks: tuple[int, ...]
    rounds: int
    global_rank: int | None
    client: ClientSettings
    split: SplitSettings
    evaluation: EvalSettings
    model_name_or_path: str
    weighting: Weighting
    seed: int
    cpus_per_client: float
    save_client_adapters: bool

    @property
    def payload(self) -> Payload:
        """What clients do with the global arrays from round 2 on."""
        return PAYLOAD_OF[self.method]

    def rank_of(self, partition: int) -> int:
        """The LoRA rank of the client with this partition id."""
        if not 0 <= partition < len(self.ranks):
            raise InputError(f"partition-id: {partition} is not a client of this run (ranks has {len(self.ranks)})")
        return self.ranks[partition]

    def to_json(self) -> str:
        """The plan as JSON (what each training message carries)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        """The plan :meth:`to_json` wrote."""
        data = json.loads(text)
        data["ranks"] = tuple(data["ranks"])
        data["client"] = ClientSettings(**data["client"])
        data["split"] = SplitSettings(**data["split"])
        data["evaluation"] = EvalSettings(**data["evaluation"])
        return cls(**data)


def make_plan(
    output_dir: str,
    method: str,
    ranks: list[int],
    rounds: int,
    global_rank: int | None,
    client: ClientSettings,
    split: SplitSettings,
    evaluation: EvalSettings,
    model_name_or_path: str,
    weighting: str,
    seed: int,
    cpus_per_client: float,
    save_client_adapters: bool,
) -> Plan:
    """Check the options that need no model or data (one-line InputError naming the field) and freeze them."""
    check_choice("method", method, Method)
    if isinstance(ranks, (str, bytes)) or not hasattr(ranks, "__len__"):
        raise InputError(f"ranks: expected a list of client ranks, got {ranks!r}")
    for k, r in enumerate(ranks):
        check_int(f"ranks: client {k}", r, 1)
    if len(ranks) < 2:
        raise InputError(f"ranks: the {method} strategy needs at least 2 clients (one rank each), got {len(ranks)}")
    check_int("rounds", rounds, 1)
    if global_rank is not None:
        if method != "svd":
            raise InputError(f"global_rank: only used by method svd (stack: Σ r_k, zeropad: max r_k), got {method}")
        check_int("global_rank", global_rank, 1)
    check_choice("weighting", weighting, Weighting)
    check_int("seed", seed, 0)
    check_positive("cpus_per_client", cpus_per_client)
    if split.topics is not None and len(split.topics) != len(ranks):
        raise InputError(f"split.topics: {len(split.topics)} topic lists for {len(ranks)} clients (ranks)")
    if not isinstance(model_name_or_path, str) or not model_name_or_path:
        raise InputError(f"model_name_or_path: must be a model name or path, got {model_name_or_path!r}")
    return Plan(
        output_dir=str(output_dir),
        method=method,  # type: ignore[arg-type]
        ranks=tuple(int(r) for r in ranks),
        rounds=int(rounds),
        global_rank=global_rank,
        client=client,
        split=split,
        evaluation=evaluation,
        model_name_or_path=model_name_or_path,
        weighting=weighting,  # type: ignore[arg-type]
        seed=int(seed),
        cpus_per_client=float(cpus_per_client),
        save_client_adapters=bool(save_client_adapters),
    )
