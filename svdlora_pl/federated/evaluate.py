"""The server's view of the model: the base's adapted modules (for the rank checks) and the global model's metrics.

:class:`GlobalEvaluator` loads the base once (a :class:`~svdlora_pl.training.module.QwenLoRAModule` with ``lora:
null``, so its evaluation code is the package's own), and evaluates base + G for a global update G by setting every
adapted weight to W₀ + B·A (the merged form of the adapter the round writes; the same logits as the PEFT adapter up
to float rounding) and running ``Trainer.validate`` on the validation split: ``val/loss`` (mean NLL of the answer
tokens), ``val/perplexity``, ``val/token_accuracy`` and, with ``evaluation.exact_match``, ``val/exact_match`` (greedy
answers, final answer matched exactly).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping

import torch
from torch import Tensor

from svdlora_pl.errors import InputError
from svdlora_pl.federated.settings import Plan
from svdlora_pl.federated.split import val_path


def adapted_linears(model: torch.nn.Module, targets: list[str]) -> dict[str, torch.nn.Linear]:
    """``{base module path: Linear}`` of the modules LoRA adapts (last name in ``targets``), in module order."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets
    }


def check_ranks(plan: Plan, shapes: Mapping[str, tuple[int, int]]) -> None:
    """Refuse a client rank above min(out, in) of an adapted module, and an svd global rank above min(out, in, Σ r_k).

    Args:
        plan: The run.
        shapes: ``{module: (out, in)}`` of the adapted modules.
    """
    for module, (out, inp) in shapes.items():
        limit = min(out, inp)
        for k, r in enumerate(plan.ranks):
            if r > limit:
                raise InputError(
                    f"ranks: client {k}'s rank {r} is more than {module} can have: min(out={out}, in={inp}) = {limit}"
                )
        if plan.global_rank is not None:
            ceiling = min(limit, sum(plan.ranks))
            if plan.global_rank > ceiling:
                raise InputError(
                    f"global_rank: {plan.global_rank} is more than {module} can have: min(out={out}, in={inp}, "
                    f"Σ r_k={sum(plan.ranks)}) = {ceiling}"
                )


class GlobalEvaluator:
    """The base model of a run and the evaluation of base + G on the validation split.

    Args:
        plan: The run (model, target modules, validation file, evaluation settings).
    """

    def __init__(self, plan: Plan) -> None:
        from transformers.utils import logging as hf_logging

        from svdlora_pl.lora.settings import check_target_modules
        from svdlora_pl.training.datamodule import QADataModule
        from svdlora_pl.training.module import QwenLoRAModule

        hf_logging.disable_progress_bar()
        self.plan = plan
        settings = plan.evaluation
        self.module = QwenLoRAModule(
            model_name_or_path=plan.model_name_or_path,
            lora=None,
            initial_eval=False,
            eval_generate=settings.exact_match,
            max_new_tokens=settings.max_new_tokens,
        )
        self.module.configure_model()
        self.module.requires_grad_(False)
        model = self.module.model
        try:
            check_target_modules(model, list(plan.client.target_modules), plan.model_name_or_path)
        except InputError as error:
            raise InputError(str(error).replace("model.lora.target_modules", "client.target_modules")) from None
        self.linears = adapted_linears(model, list(plan.client.target_modules))
        self.base = {name: linear.weight.detach().clone() for name, linear in self.linears.items()}
        self.data = QADataModule(
            val_file=str(val_path(plan.split)),
            tokenizer=plan.model_name_or_path,
            max_length=plan.client.max_length,
            eval_batch_size=settings.batch_size,
        )

    @property
    def shapes(self) -> dict[str, tuple[int, int]]:
        """``{module: (out, in)}`` of the adapted modules."""
        return {name: (int(w.shape[0]), int(w.shape[1])) for name, w in self.base.items()}

    def set_global(self, factors: Mapping[str, tuple[Tensor, Tensor]] | None) -> None:
        """Set every adapted weight to W₀ + B·A (W₀ where ``factors`` is None)."""
        with torch.no_grad():
            for name, linear in self.linears.items():
                weight = self.base[name].clone()
                if factors is not None:
                    B, A = factors[name]
                    weight += (B.to(torch.float64) @ A.to(torch.float64)).to(weight.dtype)
                linear.weight.copy_(weight)

    def evaluate(self, factors: Mapping[str, tuple[Tensor, Tensor]] | None) -> dict[str, float]:
        """The validation metrics of base + G (``factors`` None: the base itself)."""
        import lightning.pytorch as pl

        self.set_global(factors)
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        with tempfile.TemporaryDirectory(prefix="svdlora-eval-") as tmp:
            trainer = pl.Trainer(
                accelerator="cpu",
                devices=1,
                precision="32-true",
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                limit_val_batches=self.plan.evaluation.limit_batches,
                default_root_dir=tmp,
            )
            (metrics,) = trainer.validate(self.module, datamodule=self.data, verbose=False)
        return {key: float(value) for key, value in metrics.items()}
