"""``svdlora compare``: compare training runs (e.g. random-init vs SVD-init LoRA) from their TensorBoard logs.

The options are those of :func:`svdlora_pl.experiment.compare.compare`; ``svdlora compare --help`` lists them.
"""

from __future__ import annotations

from collections.abc import Sequence

from svdlora_pl.cli.tool import run_tool
from svdlora_pl.experiment.compare import compare, print_summary


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``svdlora compare``: parse, compare, print where the files went and the gains."""
    return run_tool(
        "compare", compare, argv, summary=lambda result, options: print_summary(result, options["output_dir"])
    )
