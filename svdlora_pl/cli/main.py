"""The ``svdlora`` command: LightningCLI for ``fit``/``validate``/``test``/``predict`` on
:class:`~svdlora_pl.model.QwenLoRAModule` and :class:`~svdlora_pl.data.QADataModule`.

User errors (bad files, fields, values) end the program with a one-line message on stderr and exit code 2;
argument errors are reported by jsonargparse with exit code 2 as well.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

from svdlora_pl.errors import InputError

EXIT_USAGE = 2

TOOLS: dict[str, str] = {
    "aggregate": "svdlora_pl.aggregation.merge",
    "estimate-memory": "svdlora_pl.memory.estimate",
    "compare": "svdlora_pl.experiment.compare",
    "experiment": "svdlora_pl.cli.experiment",
    "factorize": "svdlora_pl.teacher.factorize",
    "synthesize": "svdlora_pl.teacher.synthesize",
}
"""Tool subcommands beside LightningCLI's: name -> module whose ``main(argv) -> int`` runs it."""


class SvdloraCLI(LightningCLI):
    """LightningCLI whose data module follows the model's tokenizer (one name in the config, not two)."""

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.model_name_or_path", "data.tokenizer")
        parser.link_arguments("model.trust_remote_code", "data.trust_remote_code")


def run_lightning(args: Sequence[str] | None) -> None:
    """Parse ``args`` (``None``: ``sys.argv``) and run the LightningCLI subcommand they name."""
    from svdlora_pl.training.datamodule import QADataModule
    from svdlora_pl.training.module import QwenLoRAModule

    SvdloraCLI(
        QwenLoRAModule,
        QADataModule,
        args=None if args is None else list(args),
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``svdlora`` console script."""
    logging.basicConfig(format="%(message)s")
    logging.getLogger("svdlora_pl").setLevel(logging.INFO)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] in TOOLS:
            return importlib.import_module(TOOLS[args[0]]).main(args[1:])
        if not args or args[0] in ("-h", "--help"):
            print(f"tool subcommands: {', '.join(sorted(TOOLS))} (svdlora TOOL --help)\n")
        run_lightning(argv)
    except InputError as error:
        print(f"svdlora: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
