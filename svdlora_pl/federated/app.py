"""The Flower apps: the ``ClientApp`` every node runs, and the server's main loop.

- :data:`client_app`: a ``flwr.clientapp.ClientApp`` whose ``train`` handler reads the plan, the round and the global
  update from the message, takes its partition id from ``context.node_config["partition-id"]`` (the simulation engine
  sets it; a SuperNode gets it from ``--node-config "partition-id=0 num-partitions=3"``) and runs
  :func:`~svdlora_pl.federated.client.train_client`. A node may train on its own data instead of its shard of the
  bundled set: ``--node-config "partition-id=0 num-partitions=3 train-file='/data/mine.jsonl'"``.
- :func:`run_server`: the ``ServerApp`` main of both engines: evaluate the base (round 0), run the rounds with
  :class:`~svdlora_pl.federated.strategy.HeteroRankLoRA`, evaluate and record after each, write the report.
- :func:`build_server_app`: a ``ServerApp`` for an already validated plan (the simulation engine,
  :func:`svdlora_pl.federated.run.federate`); :data:`svdlora_pl.federated.deploy.server_app` is the one ``flwr run``
  starts on a SuperLink.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Context, Message, MetricRecord
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from svdlora_pl.errors import InputError
from svdlora_pl.federated.client import train_client
from svdlora_pl.federated.evaluate import GlobalEvaluator
from svdlora_pl.federated.global_update import GlobalModel
from svdlora_pl.federated.records import ARRAYS, CONFIG, record_to_factors, reply_content
from svdlora_pl.federated.report import RunRecorder
from svdlora_pl.federated.settings import Plan
from svdlora_pl.federated.split import Shard
from svdlora_pl.federated.strategy import HeteroRankLoRA

client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """A client's round: decode the server's message, train, reply with the factors and metrics."""
    config = msg.content[CONFIG]
    plan = Plan.from_json(str(config["plan"]))
    node = context.node_config
    if "partition-id" not in node:
        raise InputError("node config: partition-id: missing (start the SuperNode with --node-config 'partition-id=0')")
    partition = int(node["partition-id"])
    if "num-partitions" in node and int(node["num-partitions"]) != len(plan.ranks):
        raise InputError(
            f"node config: num-partitions: {node['num-partitions']}, but the run has {len(plan.ranks)} clients"
        )
    payload = str(config["payload"])
    arrays = record_to_factors(msg.content[ARRAYS]) if payload != "none" else None
    train_file = str(node["train-file"]) if node.get("train-file") else None
    result = train_client(plan, partition, int(config["server-round"]), payload, arrays, train_file)  # type: ignore[arg-type]
    return Message(content=reply_content(result, partition, plan.rank_of(partition)), reply_to=msg)


def run_server(
    grid: Grid, plan: Plan, evaluator: GlobalEvaluator, shards: list[Shard], overwrite: bool = False
) -> dict[str, Any]:
    """Run the rounds of a validated plan on ``grid`` (either engine); returns the report.

    Args:
        grid: The Flower grid of the run.
        plan: The run (checked: :func:`svdlora_pl.federated.run.prepare`).
        evaluator: The base model of the run.
        shards: The clients' shards (for the report).
        overwrite: Remove what the output directory holds first.
    """
    recorder = RunRecorder(plan, shards, Path(plan.output_dir), overwrite)
    model = GlobalModel(plan.method, plan.global_rank, plan.weighting)
    strategy = HeteroRankLoRA(plan, model, recorder)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        metrics = evaluator.evaluate(model.factors)
        if server_round == 0:
            recorder.initial_eval(metrics)
        else:
            recorder.eval_done(server_round, metrics)
        return MetricRecord(metrics)

    try:
        strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=plan.rounds, evaluate_fn=evaluate)
    except BaseException:
        recorder.close(finished=False)
        raise
    return recorder.close(finished=True)


def build_server_app(
    plan: Plan, evaluator: GlobalEvaluator, shards: list[Shard], overwrite: bool, results: dict[str, Any]
) -> ServerApp:
    """A ``ServerApp`` running :func:`run_server` for this plan; the report lands in ``results["report"]``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        results["report"] = run_server(grid, plan, evaluator, shards, overwrite)

    return app
