"""Token-level evaluation metrics of a causal LM on answer tokens, built from torchmetrics."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from svdlora_pl.training.answers import AnswerExactMatch
from svdlora_pl.training.losses import supervised_positions


class EvalMetrics(torch.nn.Module):
    """Mean answer-token NLL (and its perplexity), next-token accuracy and answer exact match for one stage.

    Every supervised token (label != -100) weighs the same, across batches of any padding.
    """

    def __init__(self) -> None:
        super().__init__()
        self.nll = MeanMetric()
        self.token_accuracy = MeanMetric()
        self.exact_match = AnswerExactMatch()

    def update_tokens(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Accumulate from logits (B, T, V) and labels (B, T); position t predicts label t + 1."""
        self.update_selected(*supervised_positions(logits, labels))

    def update_selected(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Accumulate from the logits (N, V) of the N supervised positions and their target ids (N)."""
        if targets.numel() == 0:
            return
        picked = logits.float()
        self.nll.update(F.cross_entropy(picked, targets, reduction="none"))
        self.token_accuracy.update((picked.argmax(dim=-1) == targets).float())

    def compute(self, stage: str, with_exact_match: bool) -> dict[str, torch.Tensor]:
        """``{stage}/loss``, ``{stage}/perplexity``, ``{stage}/token_accuracy`` [, ``{stage}/exact_match``]."""
        loss = self.nll.compute()
        values = {
            f"{stage}/loss": loss,
            f"{stage}/perplexity": torch.exp(loss.clamp(max=80.0)),
            f"{stage}/token_accuracy": self.token_accuracy.compute(),
        }
        if with_exact_match:
            values[f"{stage}/exact_match"] = self.exact_match.compute()
        return values

    def reset(self) -> None:
        """Clear every accumulated state."""
        self.nll.reset()
        self.token_accuracy.reset()
        self.exact_match.reset()
