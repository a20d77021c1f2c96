"""The package's error types, one per kind of failure.

- :class:`InputError`: bad user input (a file, a field, a value). The ``svdlora`` command prints its message as one
  line, ``svdlora: error: <file or field>: <problem>``, and exits with code 2; library callers catch it like the
  ``ValueError`` it is.
- :class:`TrainingDiverged`: a numerical failure during training (non-finite LoRA factors, say): not the user's
  input, so it is not reported as one; its message names the step and the layer.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input (file, field, value); the CLI prints its one-line message and exits with code 2."""


class TrainingDiverged(ArithmeticError):
    """Training produced non-finite values (a divergence): the message names the optimizer step and the layer.

    Args:
        message: What diverged.
        step: The optimizer step at which it was seen.
        layer: The module (base-model path) where it was seen, if one.
    """

    def __init__(self, message: str, step: int, layer: str | None = None) -> None:
        where = f" in {layer}" if layer else ""
        super().__init__(f"training diverged at step {step}{where}: {message}")
        self.step = step
        self.layer = layer
