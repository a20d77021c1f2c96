"""Bundled datasets shipped with :mod:`svdlora_pl`.

``BUNDLED_TRAIN`` and ``BUNDLED_VAL`` point at the committed probability-theory QA
JSONL files; ``generate`` (from :mod:`svdlora_pl.embedded.datasets.probability`) rebuilds them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from svdlora_pl.embedded.datasets.probability import generate

__all__ = ["BUNDLED_TRAIN", "BUNDLED_VAL", "generate"]

_HERE = Path(__file__).parent
BUNDLED_TRAIN: Path = _HERE / "probability_train.jsonl"
BUNDLED_VAL: Path = _HERE / "probability_val.jsonl"


def __getattr__(name: str) -> Any:
    """Lazily re-export ``generate``.

    Importing it eagerly would make ``python -m svdlora_pl.embedded.datasets.probability``
    emit a runpy warning, because the module would already be in ``sys.modules``.
    """
    if name == "generate":
        from svdlora_pl.embedded.datasets.probability import generate

        return generate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
