"""``svdlora federate``: federated LoRA with clients of different ranks, on Flower's simulation engine.

:func:`federate` checks every option, the data split and the ranks against the model before anything starts
(:func:`prepare`), then runs the ``ServerApp`` of :func:`svdlora_pl.federated.app.build_server_app` and the
``ClientApp`` :data:`svdlora_pl.federated.app.client_app` with ``flwr.simulation.run_simulation``: one virtual
SuperNode per client on a local Ray whose servers listen on 127.0.0.1 only (see :mod:`svdlora_pl.federated`),
``cpus_per_client`` cores each. That function is
deprecated in flwr 1.42 in favour of ``flwr run`` on a simulation SuperLink; it is used here because it runs in this
process (the validated plan is passed as an object, an error in the ``ServerApp`` is raised here, and no background
SuperLink is left running). The deployment engine, a SuperLink and SuperNodes as separate processes, runs the same
apps with ``flwr run`` (:mod:`svdlora_pl.federated.deploy`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from svdlora_pl.embedded.tiny import TINY_MODEL
from svdlora_pl.errors import InputError
from svdlora_pl.federated.evaluate import GlobalEvaluator, check_ranks
from svdlora_pl.federated.settings import (
    ClientSettings,
    EvalSettings,
    Method,
    Plan,
    SplitSettings,
    Weighting,
    make_plan,
)
from svdlora_pl.federated.split import Shard, make_shards, train_path, val_path
from svdlora_pl.io import check_output_dir

INSTALL_HINT = "pip install -e '.[flower]' (or pip install 'flwr[simulation]==1.42.0')"


def federate(
    output_dir: Path,
    method: Method = "svd",
    ranks: tuple[int, ...] = (4, 8, 16),
    rounds: int = 5,
    global_rank: int | None = None,
    client: ClientSettings = ClientSettings(),
    split: SplitSettings = SplitSettings(),
    evaluation: EvalSettings = EvalSettings(),
    model_name_or_path: str = TINY_MODEL,
    weighting: Weighting = "examples",
    seed: int = 0,
    cpus_per_client: float = 1.0,
    save_client_adapters: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Federated LoRA fine-tuning with clients of different ranks, on Flower's simulation engine.

    Every round each client starts from the global state, runs a Lightning fit of its own rank on its own shard (by
    default the bundled QA set split non-IID by topic) and returns its factors; the server merges them with the
    method (stack: exact, rank Σ r_k, folded into the clients' base; svd: best rank-R, each client sent its own rank;
    zeropad: HetLoRA's padded average, inexact), evaluates the global model on the validation split, logs the round to
    TensorBoard and writes the global adapter (standard PEFT, atomically). Writes into output_dir: report.json,
    report.txt, tensorboard/, round_NNN/adapter/ (and round_NNN/clients/client_k/ with save_client_adapters).

    Args:
        output_dir: Directory of the run's outputs.
        method: Aggregation rule: stack (FLoRA), svd (FlexLoRA) or zeropad (HetLoRA / FedIT).
        ranks: One LoRA rank per client (at least 2 clients); client k trains shard k.
        rounds: Federated rounds.
        global_rank: svd only: rank R of the global update (default: the largest client rank); at most min(out, in,
            Σ r_k) of every adapted module.
        client: How each client trains in a round.
        split: The training data and its split into the clients' shards, and the validation data.
        evaluation: The server's evaluation of the global model after every round.
        model_name_or_path: The base model (hub name, local save_pretrained directory, or svdlora:tiny-qwen2).
        weighting: Client weights p_k: by number of training records (examples) or equal.
        seed: Seed of the clients' inits, their record order and the IID split.
        cpus_per_client: CPU cores the simulation gives each client (clients train in parallel as cores allow).
        save_client_adapters: Also write every client's adapter of every round (round_NNN/clients/client_k/).
        overwrite: Replace a non-empty output_dir.

    Returns:
        The report, as written to report.json.

    Raises:
        InputError: Bad options, in one line naming the field: an unknown method, fewer than 2 clients, a rank above
            what an adapted module can have, a shard that is empty after the split, a missing file, a non-empty
            output_dir without overwrite, Flower not installed. Nothing is written then.
    """
    plan = make_plan(
        str(output_dir), method, list(ranks), rounds, global_rank, client, split, evaluation, model_name_or_path,
        weighting, seed, cpus_per_client, save_client_adapters,
    )  # fmt: skip
    _check_flower()
    evaluator, shards = prepare(plan, overwrite)
    return simulate(plan, evaluator, shards, overwrite)


def _check_flower() -> None:
    for module in ("flwr", "ray"):
        if importlib.util.find_spec(module) is None:
            raise InputError(
                f"svdlora federate needs Flower's simulation engine ({module} is not installed): {INSTALL_HINT}"
            )


def prepare(plan: Plan, overwrite: bool) -> tuple[GlobalEvaluator, list[Shard]]:
    """Check what needs the data and the model (the shards, the ranks, the output directory); load the base.

    Returns the server's evaluator (the base model loaded) and the clients' shards.
    """
    shards = make_shards(plan.split, len(plan.ranks), plan.seed)
    inputs = [train_path(plan.split), val_path(plan.split)]
    check_output_dir(Path(plan.output_dir), inputs, overwrite)
    evaluator = GlobalEvaluator(plan)
    check_ranks(plan, evaluator.shapes)
    return evaluator, shards


class _DropDeprecation(logging.Filter):
    """Hide flwr's warning that ``run_simulation`` is deprecated (see the module docstring for why it is used)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "DEPRECATED FEATURE" not in record.getMessage()


@contextmanager
def _flower_quiet() -> Iterator[None]:
    """flwr's logger at WARNING, printed once, without the deprecation; ``PYTHONPATH`` restored afterwards (Flower's
    Ray backend sets it for its workers, to this process's whole ``sys.path``)."""
    flwr_logger, quiet = logging.getLogger("flwr"), _DropDeprecation()
    saved = flwr_logger.level, flwr_logger.propagate, os.environ.get("PYTHONPATH")
    flwr_logger.setLevel(logging.WARNING)
    flwr_logger.propagate = False  # flwr has its own handler: a root handler would print its lines twice
    flwr_logger.addFilter(quiet)
    try:
        yield
    finally:
        flwr_logger.setLevel(saved[0])
        flwr_logger.propagate = saved[1]
        flwr_logger.removeFilter(quiet)
        if saved[2] is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved[2]


def simulate(plan: Plan, evaluator: GlobalEvaluator, shards: list[Shard], overwrite: bool) -> dict[str, Any]:
    """Run a prepared plan on Flower's simulation engine (Ray, on 127.0.0.1); returns the report."""
    from flwr.simulation import run_simulation

    from svdlora_pl.federated.app import build_server_app, client_app

    results: dict[str, Any] = {}
    server_app = build_server_app(plan, evaluator, shards, overwrite, results)
    cores = max(plan.cpus_per_client, float(os.cpu_count() or 1))
    backend = {
        "client_resources": {"num_cpus": plan.cpus_per_client, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": int(cores),
            "include_dashboard": False,
            "logging_level": logging.ERROR,
            "log_to_driver": False,
        },
    }
    with _flower_quiet():
        run_simulation(
            server_app=server_app, client_app=client_app, num_supernodes=len(plan.ranks), backend_config=backend
        )
    if "report" not in results:
        raise RuntimeError("the Flower simulation ended without finishing its rounds (see the log above)")
    return results["report"]
