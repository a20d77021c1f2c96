"""The ``ServerApp`` that ``flwr run`` starts on a SuperLink (Flower's deployment engine).

The Flower app is ``svdlora_pl/federated/flower_app/pyproject.toml``: its components are this module's
:data:`server_app` and :data:`svdlora_pl.federated.app.client_app`, so the bundle ``flwr run`` uploads holds nothing
but that file and every machine runs the code of its installed ``svdlora-pl[flower]``. The run config
(``flwr run ... --run-config``) has three keys:

- ``config``: a ``svdlora federate`` YAML file (the same as ``svdlora federate -c``; empty: the defaults), read on the
  SuperLink's machine (a relative path is relative to the SuperLink's working directory);
- ``output-dir``: overrides the file's ``output_dir`` (empty: keep it);
- ``overwrite``: replace a non-empty output directory.

The options are checked as ``svdlora federate`` checks them, on the SuperLink, before the first round; an error ends
the run (``flwr run --stream`` shows it). ``cpus_per_client`` does not apply: each SuperNode runs its ``ClientApp``
in its own process.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from svdlora_pl.cli.tool import parse_tool_args, tool_parser
from svdlora_pl.federated.app import run_server
from svdlora_pl.federated.run import federate, prepare
from svdlora_pl.federated.settings import make_plan

server_app = ServerApp()


def options_from_run_config(run_config: dict) -> tuple[dict, bool]:
    """The ``federate`` options a run config names (its YAML file, then ``output-dir``), and ``overwrite``."""
    argv: list[str] = []
    if run_config.get("config"):
        argv += ["-c", str(run_config["config"])]
    if run_config.get("output-dir"):
        argv += ["--output_dir", str(run_config["output-dir"])]
    options = parse_tool_args(tool_parser("federate", federate), argv)
    overwrite = bool(options.pop("overwrite")) or bool(run_config.get("overwrite", False))
    return options, overwrite


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Read the run config, check the plan, run the rounds."""
    options, overwrite = options_from_run_config(dict(context.run_config))
    options["ranks"] = list(options["ranks"])
    options["output_dir"] = str(options["output_dir"])
    plan = make_plan(**options)
    evaluator, shards = prepare(plan, overwrite)
    run_server(grid, plan, evaluator, shards, overwrite)
