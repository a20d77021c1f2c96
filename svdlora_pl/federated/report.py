"""What a federated run writes: TensorBoard scalars per round, the global adapter of every round, and the report.

Layout of ``output_dir``::

    report.json, report.txt          the options, the clients (rank, topics, records, weight) and one row per round
    tensorboard/                     events: ``tensorboard --logdir output_dir/tensorboard``
    round_001/adapter/               the global adapter after round 1 (standard PEFT, scaling folded in, alpha = r)
    round_001/clients/client_0/      with save_client_adapters: what each client returned (√s folded into B and A)
    ...

Every adapter is written atomically, and the report after every round (``finished`` says whether the run ended), so
an interrupted run leaves whole files only.

**Logged metrics** (TensorBoard, step = round; round 0 is the base model before any training):

- ``val/loss``, ``val/perplexity``, ``val/token_accuracy``, ``val/exact_match`` (with ``evaluation.exact_match``): the
  global model on the validation split;
- ``aggregation/relative_error_max``, ``aggregation/relative_error_mean``: ‖B·A − ΔW‖_F / ‖ΔW‖_F of the round's
  aggregate against the exact weighted sum ΔW = Σ_k p_k s_k B_k A_k (worst and mean module);
  ``aggregation/optimal_error_max``: the Eckart–Young optimum at the aggregate's rank; ``aggregation/energy_kept_min``;
  ``global/rank_max``: the rank of the global update;
- ``comm/bytes_sent``, ``comm/bytes_received``: the LoRA arrays the server sent to and received from all clients in the
  round (float32 bytes);
- ``train/client_loss_mean``: the clients' last training loss, weighted by p_k; ``time/round_seconds``.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from svdlora_pl.federated.global_update import RoundAggregate
from svdlora_pl.federated.settings import Plan
from svdlora_pl.federated.split import Shard
from svdlora_pl.io import atomic_write_text, finite_or_none, json_text

REPORT_NAME = "report"


def round_dir(output_dir: Path, server_round: int) -> Path:
    """``output_dir/round_001`` for round 1."""
    return Path(output_dir) / f"round_{server_round:03d}"


def _megabytes(count: float) -> str:
    return f"{count / 1e6:.2f} MB"


class RunRecorder:
    """Writes a run's outputs as the rounds go (see the module docstring).

    Args:
        plan: The run.
        shards: The clients' shards (for the report).
        output_dir: Where to write (created; replaced with ``overwrite``).
        overwrite: Remove what ``output_dir`` holds first.
    """

    def __init__(self, plan: Plan, shards: list[Shard], output_dir: Path, overwrite: bool = False) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.plan = plan
        self.output_dir = Path(output_dir)
        if overwrite and self.output_dir.is_dir():
            shutil.rmtree(self.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"))
        self.start = time.perf_counter()
        self.round_start = self.start
        self.clients = [
            {"client": s.client, "rank": plan.ranks[s.client], "topics": list(s.topics), "records": len(s.records)}
            for s in shards
        ]
        self.rounds: list[dict[str, Any]] = []
        self.initial: dict[str, float] = {}

    def log(self, values: dict[str, float], step: int) -> None:
        """Add finite scalars to TensorBoard at ``step``."""
        for key, value in values.items():
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def initial_eval(self, metrics: dict[str, float]) -> None:
        """Record the base model's metrics (round 0)."""
        self.initial = metrics
        self.log(metrics, 0)
        print(f"round 0 (base model): {self._metrics_text(metrics)}", flush=True)
        self.write_report(finished=False)
        self.round_start = time.perf_counter()

    def round_done(self, step: RoundAggregate, bytes_sent: int, bytes_received: int) -> None:
        """Write the round's adapters and log its aggregation and communication."""
        from svdlora_pl.lora.adapters import write_adapter

        directory = round_dir(self.output_dir, step.server_round)
        write_adapter(directory / "adapter", step.global_factors, self.plan.model_name_or_path)
        if self.plan.save_client_adapters:
            for update in step.updates:
                root = {m: math.sqrt(f.scaling) for m, f in update.factors.items()}  # √s to each side, as zeropad
                factors = {m: (f.B * root[m], f.A * root[m]) for m, f in update.factors.items()}
                write_adapter(
                    directory / "clients" / f"client_{update.partition}", factors, self.plan.model_name_or_path
                )
        s = step.summary
        losses = [u.train_loss for u in step.updates]
        finite = [(p, x) for p, x in zip(step.weights, losses, strict=True) if math.isfinite(x)]
        row = {
            "round": step.server_round,
            "weights": list(step.weights),
            "client_losses": losses,
            "client_loss_mean": sum(p * x for p, x in finite) / sum(p for p, _ in finite) if finite else math.nan,
            "relative_error_max": s["max_relative_error"],
            "relative_error_mean": s["mean_relative_error"],
            "optimal_error_max": s["max_optimal_error"],
            "energy_kept_min": s["min_energy_kept"],
            "global_ranks": s["global_ranks"],
            "bytes_sent": bytes_sent,
            "bytes_received": bytes_received,
            "adapter": str(directory / "adapter"),
        }
        self.rounds.append(row)
        self.log(
            {
                "aggregation/relative_error_max": row["relative_error_max"],
                "aggregation/relative_error_mean": row["relative_error_mean"],
                "aggregation/optimal_error_max": row["optimal_error_max"],
                "aggregation/energy_kept_min": row["energy_kept_min"],
                "global/rank_max": float(max(row["global_ranks"])),
                "comm/bytes_sent": float(bytes_sent),
                "comm/bytes_received": float(bytes_received),
                "train/client_loss_mean": row["client_loss_mean"],
            },
            step.server_round,
        )

    def eval_done(self, server_round: int, metrics: dict[str, float]) -> None:
        """Record the global model's metrics after a round, print the round's line and rewrite the report."""
        now = time.perf_counter()
        row = self.rounds[-1]
        row.update({key.replace("/", "_"): value for key, value in metrics.items()})
        row["seconds"] = now - self.round_start
        self.round_start = now
        self.log({**metrics, "time/round_seconds": row["seconds"]}, server_round)
        print(
            f"round {server_round}/{self.plan.rounds}: {self._metrics_text(metrics)}, relative error "
            f"{row['relative_error_max']:.3g} (max), global rank {max(row['global_ranks'])}, sent "
            f"{_megabytes(row['bytes_sent'])}, received {_megabytes(row['bytes_received'])}, {row['seconds']:.1f} s",
            flush=True,
        )
        self.write_report(finished=False)

    @staticmethod
    def _metrics_text(metrics: dict[str, float]) -> str:
        text = f"val loss {metrics.get('val/loss', math.nan):.4f}"
        if "val/exact_match" in metrics:
            text += f", exact match {metrics['val/exact_match']:.3f}"
        return text

    def report(self, finished: bool) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        weights = self.rounds[-1]["weights"] if self.rounds else []
        clients = [{**c, "weight": w} for c, w in zip(self.clients, weights, strict=False)] or self.clients
        return finite_or_none(
            {
                "method": self.plan.method,
                "options": asdict(self.plan),
                "clients": clients,
                "initial": {key.replace("/", "_"): value for key, value in self.initial.items()},
                "rounds": self.rounds,
                "final_adapter": self.rounds[-1]["adapter"] if self.rounds else None,
                "wall_seconds": time.perf_counter() - self.start,
                "finished": finished,
            }
        )

    def write_report(self, finished: bool) -> dict[str, Any]:
        """Write report.json and report.txt (atomically); returns the report."""
        report = self.report(finished)
        atomic_write_text(self.output_dir / f"{REPORT_NAME}.json", json_text(report))
        atomic_write_text(self.output_dir / f"{REPORT_NAME}.txt", format_report(report))
        return report

    def close(self, finished: bool = True) -> dict[str, Any]:
        """Write the report (``finished``: the run ended) and close TensorBoard; returns the report."""
        report = self.write_report(finished=finished)
        self.writer.close()
        return report


def _cell(value: Any, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def format_report(report: dict[str, Any]) -> str:
    """Plain-text rendering of the report: the clients, then one row per round."""
    options = report["options"]
    lines = [
        f"svdlora federate — method {report['method']}, {options['rounds']} rounds, model {options['model_name_or_path']}",
        f"global rank: {options['global_rank'] or 'default'}; weighting: {options['weighting']}; "
        f"split: {options['split']['partition']}",
        "",
        "clients:",
    ]
    for c in report["clients"]:
        weight = f"  weight {c['weight']:.4f}" if "weight" in c else ""
        topics = f"  topics {', '.join(c['topics'])}" if c["topics"] else ""
        lines.append(f"  [{c['client']}] rank {c['rank']}  records {c['records']}{weight}{topics}")
    initial = report["initial"]
    lines += [
        "",
        f"{'round':>5} {'val_loss':>9} {'exact':>6} {'rel_err':>9} {'optimum':>9} {'rank':>5} {'sent_MB':>8} "
        f"{'recv_MB':>8} {'seconds':>8}",
        f"{0:>5} {_cell(initial.get('val_loss'), '.4f'):>9} {_cell(initial.get('val_exact_match'), '.3f'):>6}",
    ]
    for row in report["rounds"]:
        lines.append(
            f"{row['round']:>5} {_cell(row.get('val_loss'), '.4f'):>9} {_cell(row.get('val_exact_match'), '.3f'):>6} "
            f"{_cell(row['relative_error_max'], '.3e'):>9} {_cell(row['optimal_error_max'], '.3e'):>9} "
            f"{max(row['global_ranks']):>5} {row['bytes_sent'] / 1e6:>8.3f} {row['bytes_received'] / 1e6:>8.3f} "
            f"{_cell(row.get('seconds'), '.1f'):>8}"
        )
    lines += ["", f"final adapter: {report['final_adapter']}", f"wall time: {report['wall_seconds']:.1f} s"]
    return "\n".join(lines) + "\n"
