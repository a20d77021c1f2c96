"""The package's error types, one per kind of failure.

- :class:`InputError`: bad user input (a file, a field, a value). The ``svdlora`` command prints its message as one
  line, ``svdlora: error: <file or field>: <problem>``, and exits with code 2; library callers catch it like the
  ``ValueError`` it is.
- :class:`TrainingDiverged`: a numerical failure during training (non-finite LoRA factors, say): not the user's
  input, so it is not reported as one; its message names the step and the layer.
- :class:`Preempted`: a fit stopped on SIGTERM after saving a checkpoint; ``svdlora`` exits with code 143.
"""

from __future__ import annotations

import os


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


class Preempted(Exception):
    """A fit stopped on SIGTERM, after saving a checkpoint of its last optimizer step (see ``PreemptionCheckpoint``)
    or before its first one (nothing to resume).

    Args:
        checkpoint: The checkpoint to resume from (``--ckpt_path``), or None.
        step: The optimizer step it holds.
    """

    def __init__(self, checkpoint: os.PathLike[str] | str | None, step: int) -> None:
        if checkpoint is None:
            message = f"stopped by SIGTERM at step {step}, before a checkpoint was saved"
        else:
            message = f"stopped by SIGTERM after step {step}; resume with --ckpt_path {checkpoint}"
        super().__init__(message)
        self.checkpoint = checkpoint
        self.step = step
