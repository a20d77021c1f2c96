"""LoRA factors as Flower records: what the server and the clients send each other.

A message's ``ArrayRecord`` (key ``arrays``) holds ``<module>.lora_A`` (r×in) and ``<module>.lora_B`` (out×r) per
base module path (the factor-file convention of DESIGN.md), float32. The server's training message also carries a
``ConfigRecord`` (key ``config``): ``plan`` (the run's :class:`~svdlora_pl.federated.settings.Plan` as JSON),
``payload`` (none, fold or init) and ``server-round``. A client's reply carries its factors and a ``MetricRecord``
(key ``metrics``): ``partition-id``, ``rank``, ``scaling``, ``num-examples``, ``train-loss``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from svdlora_pl.errors import InputError
from svdlora_pl.federated.client import ClientResult
from svdlora_pl.federated.global_update import ClientUpdate, GlobalFactors
from svdlora_pl.lora.factors import LoRAFactors

ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"
SUFFIX_A, SUFFIX_B = ".lora_A", ".lora_B"


def factors_to_record(factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None) -> ArrayRecord:
    """``{module: (B, A)}`` as an ``ArrayRecord`` of float32 arrays (empty for None)."""
    state: dict[str, torch.Tensor] = {}
    for module, (B, A) in (factors or {}).items():
        state[module + SUFFIX_A] = A.detach().to(torch.float32).contiguous()
        state[module + SUFFIX_B] = B.detach().to(torch.float32).contiguous()
    return ArrayRecord(torch_state_dict=state) if state else ArrayRecord()


def record_to_factors(record: ArrayRecord) -> GlobalFactors:
    """The ``{module: (B, A)}`` an ``ArrayRecord`` holds; InputError for an unpaired or unknown key."""
    state = record.to_torch_state_dict()
    factors: GlobalFactors = {}
    for key in state:
        if key.endswith(SUFFIX_A):
            module = key.removesuffix(SUFFIX_A)
            if module + SUFFIX_B not in state:
                raise InputError(f"arrays: {key} has no {module + SUFFIX_B}")
            factors[module] = (state[module + SUFFIX_B], state[key])
        elif not key.endswith(SUFFIX_B) or key.removesuffix(SUFFIX_B) + SUFFIX_A not in state:
            raise InputError(f"arrays: {key} is not a LoRA factor paired with its lora_A")
    return factors


def train_content(plan_json: str, server_round: int, payload: str, factors: GlobalFactors | None) -> RecordDict:
    """The server's training message to one client."""
    config = ConfigRecord({"plan": plan_json, "server-round": server_round, "payload": payload})
    return RecordDict({ARRAYS: factors_to_record(factors), CONFIG: config})


def reply_content(result: ClientResult, partition: int, rank: int) -> RecordDict:
    """A client's reply: its factors and metrics."""
    scalings = {f.scaling for f in result.factors.values()}
    metrics = MetricRecord(
        {
            "partition-id": partition,
            "rank": rank,
            "scaling": float(next(iter(scalings))),
            "num-examples": result.num_examples,
            "train-loss": result.train_loss,
            "seconds": result.seconds,
        }
    )
    factors = {m: (f.B, f.A) for m, f in result.factors.items()}
    return RecordDict({ARRAYS: factors_to_record(factors), METRICS: metrics})


def decode_update(content: RecordDict) -> ClientUpdate:
    """The :class:`ClientUpdate` a client's reply holds."""
    metrics = content[METRICS]
    scaling = float(metrics["scaling"])
    factors = {m: LoRAFactors(B, A, scaling) for m, (B, A) in record_to_factors(content[ARRAYS]).items()}
    return ClientUpdate(
        partition=int(metrics["partition-id"]),
        factors=factors,
        num_examples=int(metrics["num-examples"]),
        train_loss=float(metrics["train-loss"]),
    )
