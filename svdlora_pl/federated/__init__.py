"""Federated LoRA with heterogeneous client ranks on Flower (the optional extra ``svdlora-pl[flower]``).

Each client trains a LoRA adapter of its own rank on its own shard of the data (a Lightning fit of
:class:`~svdlora_pl.training.module.QwenLoRAModule`); the server merges the replies with the heterogeneous-rank rules
of :mod:`svdlora_pl.aggregation.rules` (stack, svd, zeropad), evaluates the global model on the validation split,
logs every round to TensorBoard and writes the global adapter of every round as a standard PEFT adapter.

- :mod:`~svdlora_pl.federated.settings`: the options (client training, data split, evaluation) and the validated plan.
- :mod:`~svdlora_pl.federated.split`: the non-IID split of the training records by topic (or an IID split).
- :mod:`~svdlora_pl.federated.client`: one client's round: start from the global state, fit, return the factors.
- :mod:`~svdlora_pl.federated.global_update`: the server's aggregation step and what each client is sent.
- :mod:`~svdlora_pl.federated.evaluate`: the global model on the validation split; the rank checks.
- :mod:`~svdlora_pl.federated.report`: TensorBoard, the per-round adapters and the report.
- :mod:`~svdlora_pl.federated.records`, :mod:`~svdlora_pl.federated.strategy`, :mod:`~svdlora_pl.federated.app`,
  :mod:`~svdlora_pl.federated.deploy`: the Flower side (``ArrayRecord`` coding, the strategy, the ``ClientApp`` and
  ``ServerApp``s); only these import ``flwr``.
- :func:`svdlora_pl.federated.run.federate` (``svdlora federate``): a whole run on Flower's simulation engine.

Importing this package sets, unless the environment already does: ``FLWR_TELEMETRY_ENABLED=0``,
``FLWR_DISABLE_UPDATE_CHECK=1`` and ``RAY_USAGE_STATS_ENABLED=0`` (Flower's telemetry and update check and Ray's usage
statistics send data over the network), and ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: the simulation is one machine's
Ray, and with this Ray gives its node the loopback address, so all its servers (GCS, raylet, workers, runtime-env
agent) listen on 127.0.0.1 only, as on macOS and Windows; by default on Linux it binds them to every interface.
"""

from __future__ import annotations

import os

_ENVIRONMENT = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # a local Ray: node address 127.0.0.1, every server on loopback
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # Ray's own future default; silences its FutureWarning
}
for _name, _value in _ENVIRONMENT.items():
    os.environ.setdefault(_name, _value)
