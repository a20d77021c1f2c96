"""The Flower strategy: FedAvg's node sampling and round loop, the package's heterogeneous-rank aggregation.

:class:`HeteroRankLoRA` subclasses ``flwr.serverapp.strategy.FedAvg`` for its sampling (every client every round:
``min_train_nodes`` = number of clients) and bookkeeping, and replaces both halves of a round:

- ``configure_train`` sends each node its own message: the plan, the round, the payload kind and the global update at
  the node's rank (:meth:`~svdlora_pl.federated.global_update.GlobalModel.payload`; the node → rank map is learned
  from the replies of round 1, and a node not seen yet is sent the whole global update, of which it keeps the first
  r_k components: the same factors);
- ``aggregate_train`` decodes the replies into client updates and runs the server's aggregation step
  (:meth:`~svdlora_pl.federated.global_update.GlobalModel.aggregate`). FedAvg's element-wise averaging cannot be used:
  arrays of different ranks have different shapes, and averaging A and B separately is the inexact ``zeropad`` rule.

A failed client fails the run (a round with fewer updates than clients would change the weights silently).
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from svdlora_pl.errors import InputError
from svdlora_pl.federated.global_update import GlobalModel, RoundAggregate
from svdlora_pl.federated.records import ARRAYS, decode_update, factors_to_record, train_content
from svdlora_pl.federated.report import RunRecorder
from svdlora_pl.federated.settings import Plan


class HeteroRankLoRA(FedAvg):
    """Federated LoRA with clients of different ranks, aggregated by ``plan.method`` (stack, svd or zeropad).

    Args:
        plan: The run.
        model: The global update and the aggregation step.
        recorder: Where each round's adapters and metrics go (None: nowhere; tests).
    """

    def __init__(self, plan: Plan, model: GlobalModel, recorder: RunRecorder | None = None) -> None:
        clients = len(plan.ranks)
        super().__init__(min_train_nodes=clients, min_evaluate_nodes=0, min_available_nodes=clients)
        self.plan = plan
        self.model = model
        self.recorder = recorder
        self.plan_json = plan.to_json()
        self.node_ranks: dict[int, int] = {}
        self.bytes_sent = 0
        self.last: RoundAggregate | None = None

    def summary(self) -> None:
        """Log the method, the client ranks and the rounds' sampling (Flower calls it when the run starts)."""
        log(INFO, "\t├──> %s aggregation, client ranks %s", self.plan.method, list(self.plan.ranks))
        log(
            INFO,
            "\t└──> every round: all %d clients train; the server evaluates the global model",
            len(self.plan.ranks),
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No federated evaluation: the server evaluates the global model on the validation split itself."""
        return []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One message per sampled node: the global update at the node's rank (nothing in round 1)."""
        sampled = list(super().configure_train(server_round, arrays, config, grid))
        payload = "none" if self.model.factors is None else self.plan.payload
        messages, sent = [], 0
        for message in sampled:
            node = message.metadata.dst_node_id
            content = train_content(
                self.plan_json, server_round, payload, self.model.payload(self.node_ranks.get(node))
            )
            sent += content[ARRAYS].count_bytes()
            messages.append(Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node))
        self.bytes_sent = sent
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the round's client updates with the plan's rule; returns the global update and round metrics."""
        valid, failed = self._check_and_log_replies(list(replies), is_train=True, validate=False)
        if failed:
            reason = failed[0].error.reason.strip().splitlines()
            raise RuntimeError(
                f"round {server_round}: {len(failed)} client(s) failed, e.g. node {failed[0].metadata.src_node_id}: "
                f"{reason[-1] if reason else 'no reason given'}"
            )
        if len(valid) < len(self.plan.ranks):
            raise RuntimeError(f"round {server_round}: {len(valid)} replies for {len(self.plan.ranks)} clients")
        updates, received = [], 0
        for message in valid:
            update = decode_update(message.content)
            self.node_ranks[message.metadata.src_node_id] = update.rank
            received += message.content[ARRAYS].count_bytes()
            updates.append(update)
        partitions = sorted(u.partition for u in updates)
        if partitions != sorted(set(partitions)):
            raise InputError(f"node config: partition-id: two nodes answered as the same client ({partitions})")
        step = self.model.aggregate(server_round, updates)
        self.last = step
        if self.recorder is not None:
            self.recorder.round_done(step, self.bytes_sent, received)
        metrics = MetricRecord(
            {
                "relative-error-max": float(step.summary["max_relative_error"] or 0.0),
                "global-rank-max": max(step.summary["global_ranks"]),
                "bytes-sent": self.bytes_sent,
                "bytes-received": received,
            }
        )
        return factors_to_record(step.global_factors), metrics
