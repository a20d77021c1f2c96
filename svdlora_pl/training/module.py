"""``QwenLoRAModule``: a Hugging Face causal LM with PEFT LoRA (or full fine-tuning) as a LightningModule."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from jsonargparse import lazy_instance
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import move_data_to_device
from typing_extensions import override

from svdlora_pl.embedded.tiny import TINY_MODEL
from svdlora_pl.errors import InputError
from svdlora_pl.io import atomic_directory, atomic_write_text
from svdlora_pl.lora.initializers import LoRAInitializer, RandomInit, from_spec
from svdlora_pl.lora.residual import InitialFactors, save_base_relative_adapter, snapshot_factors
from svdlora_pl.lora.settings import ADAPTER_NAME, LoRASettings, wrap_with_lora
from svdlora_pl.schedules import ScheduleKind, warmup_schedule
from svdlora_pl.training.answers import answers_match, extract_final_answer
from svdlora_pl.training.initialization import initialize_at_fit_start, restore_initial_factors, save_initial_factors
from svdlora_pl.training.loading import DType, load_causal_lm, load_tokenizer
from svdlora_pl.training.losses import chunked_cross_entropy, supervised_positions
from svdlora_pl.training.metrics import EvalMetrics
from svdlora_pl.training.optimizers import build_optimizer
from svdlora_pl.training.sampling import rank_shard


class QwenLoRAModule(pl.LightningModule):
    """Fine-tunes a Qwen (or any Hugging Face causal) LM with LoRA, or all its weights when ``lora`` is null.

    Logged metrics: ``train/loss`` (mean over the micro-batches of each optimizer step), ``train/lr``;
    per validation/test: ``{val,test}/loss`` (mean token NLL over answer tokens), ``{val,test}/perplexity``,
    ``{val,test}/token_accuracy`` and, with ``eval_generate``, ``{val,test}/exact_match``.

    Unless ``initial_eval`` is off, a fresh fit first evaluates the validation set with the untouched initial model
    and logs ``val/*`` at step 0: the loss before any update, the starting point of every comparison.

    Checkpoints hold only the trainable tensors (LoRA factors, or everything in full fine-tuning), the
    optimizer/scheduler state and the RNG state, so resuming continues the same run; the frozen base is
    rebuilt from ``model_name_or_path``. Constructing the module loads nothing: the weights are loaded in
    :meth:`configure_model`, which Lightning calls on each process under its strategy (see there). At the end of ``fit`` the adapter is saved in standard PEFT format
    to ``<log_dir>/adapter/`` (full fine-tuning: a ``save_pretrained`` model in ``<log_dir>/model/``), with
    the tokenizer. With a residual initializer (one that rewrote the frozen base weights, e.g. ``PiSSAInit``)
    the saved adapter is the rank-2r conversion that applies to the unmodified base (:mod:`svdlora_pl.lora.residual`).

    Args:
        model_name_or_path: Hub name (``Qwen/Qwen2.5-Math-7B-Instruct``), local ``save_pretrained``
            directory, or ``svdlora:tiny-qwen2`` for the embedded tiny Qwen2.
        dtype: Dtype the base weights are loaded in (``bfloat16`` on GPU, ``float32`` on CPU).
        trust_remote_code: Allow model code from the hub; off unless you set it.
        lora: LoRA settings; ``null`` trains every parameter (full fine-tuning).
        initializer: How the LoRA factors start (``class_path`` of a ``LoRAInitializer``; its ``class_path`` form
            is stored in the hyper-parameters, so ``load_from_checkpoint`` rebuilds residual bases too).
        optimizer: Optimizer over the trainable parameters (``class_path``/``init_args``, e.g. AdamW, lr).
        lr_schedule: Decay after warmup: ``cosine``, ``linear`` or ``constant``; stepped per optimizer step.
        warmup_ratio: Fraction of the total optimizer steps spent in linear warmup.
        min_lr_ratio: Final learning rate as a fraction of the peak (cosine and linear).
        gradient_checkpointing: Recompute activations in backward (non-reentrant) to save memory.
        loss_chunk_tokens: ``null``: the model's own loss over full (B, T, V) logits. ``n``: logits only at the
            answer tokens, ``n`` rows at a time, recomputed in backward (:mod:`svdlora_pl.training.losses`): the same loss
            without the vocabulary-sized activations (GiBs with Qwen2.5's 152k vocabulary); also used in eval.
        compile: ``torch.compile`` every decoder layer in place (state-dict keys and adapter saving unchanged).
        initial_eval: Evaluate the validation set before the first update of a fresh fit, logged at step 0.
        eval_generate: In validate/test, also generate answers greedily and log ``exact_match``.
        max_new_tokens: Generation length limit for ``eval_generate`` and ``predict``.
        predictions_file: Where ``predict`` writes its JSONL; default ``<log_dir>/predictions.jsonl``.
    """

    def __init__(
        self,
        model_name_or_path: str = TINY_MODEL,
        dtype: DType = "float32",
        trust_remote_code: bool = False,
        lora: LoRASettings | None = LoRASettings(),
        initializer: LoRAInitializer = lazy_instance(RandomInit),
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_schedule: ScheduleKind = "cosine",
        warmup_ratio: float = 0.03,
        min_lr_ratio: float = 0.0,
        gradient_checkpointing: bool = False,
        loss_chunk_tokens: int | None = None,
        compile: bool = False,
        initial_eval: bool = True,
        eval_generate: bool = False,
        max_new_tokens: int = 128,
        predictions_file: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(lora, dict):  # hyper-parameters read back from a checkpoint
            lora = LoRASettings(**lora)
        if lora is not None:
            lora.validate()
        if not 0.0 <= warmup_ratio < 1.0:
            raise InputError(f"model.warmup_ratio: must be in [0, 1), got {warmup_ratio}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise InputError(f"model.min_lr_ratio: must be in [0, 1], got {min_lr_ratio}")
        if loss_chunk_tokens is not None and loss_chunk_tokens < 1:
            raise InputError(f"model.loss_chunk_tokens: must be positive or null, got {loss_chunk_tokens}")
        if max_new_tokens < 1:
            raise InputError(f"model.max_new_tokens: must be positive, got {max_new_tokens}")
        initializer = from_spec(initializer)  # a dict when read back from a checkpoint's hyper-parameters
        self.save_hyperparameters(ignore=["initializer", "optimizer"])
        if isinstance(self.hparams.get("lora"), LoRASettings):  # keep checkpoints loadable with weights_only
            self.hparams["lora"] = asdict(lora)
        self.hparams["initializer"] = initializer.spec()
        self.lora_settings = lora
        self.initializer = initializer
        self.optimizer_factory = optimizer
        self.strict_loading = False  # checkpoints carry only the trainable tensors

        self.model: torch.nn.Module | None = None  # built by configure_model
        self.init_seconds = 0.0  # wall time of adding the LoRA layers and the data-free initializer
        self.initial_factors: InitialFactors | None = None
        self._tokenizer: Any = None
        self.val_metrics = EvalMetrics()
        self.test_metrics = EvalMetrics()
        self._step_losses: list[torch.Tensor] = []
        self._predictions: list[dict[str, Any]] = []

    # -------------------------------------------------------------------------------------------- the model
    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer, loaded on first use."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.hparams.model_name_or_path, self.hparams.trust_remote_code)
        return self._tokenizer

    @override
    def configure_model(self) -> None:
        """Load the base model, add the LoRA layers and let the initializer set them (once; later calls do nothing).

        Lightning calls this hook in ``fit``/``validate``/``test``/``predict`` under the strategy's device and
        precision contexts, so each process loads the weights straight onto its own device (a GPU rank never
        stages the whole base in host memory first), and ``load_from_checkpoint`` calls it before restoring the
        trainable tensors. Call it yourself to use the module outside a Trainer.
        """
        if self.model is not None:
            return
        hp = self.hparams
        base = load_causal_lm(hp.model_name_or_path, hp.dtype, hp.trust_remote_code).train()  # from_pretrained: eval()
        if hp.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            base.config.use_cache = False
        if self.lora_settings is None:
            self.model = base.requires_grad_(True)
        else:
            start = time.perf_counter()
            self.model = wrap_with_lora(base, self.lora_settings, self.initializer, hp.model_name_or_path)
            self.init_seconds = time.perf_counter() - start
        if hp.compile:
            for layer in base.get_decoder().layers:
                layer.compile()
        if self.lora_settings is not None and self.initializer.modifies_base and not self.initializer.needs_data:
            self.initial_factors = snapshot_factors(self.model, ADAPTER_NAME)  # a data-driven one: at fit start

    # ----------------------------------------------------------------------------------------------- training
    @override
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits of the causal LM."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    @override
    def on_train_start(self) -> None:
        if self.trainer.global_step > 0:  # resumed: the checkpoint holds the factors (and a residual's start)
            return
        if self.lora_settings is not None:
            initialize_at_fit_start(self)
        if self.hparams.initial_eval:
            self.log_initial_eval()

    def log_initial_eval(self) -> None:
        """Evaluate the validation set with the current (initial) weights and log ``val/*`` at step 0."""
        datamodule = getattr(self.trainer, "datamodule", None)
        loader = datamodule.val_dataloader() if datamodule is not None else None
        if not loader or self.trainer.limit_val_batches == 0:
            return
        loader = rank_shard(loader, self.trainer.global_rank, self.trainer.world_size)  # synced metrics: exact
        limit = self.trainer.limit_val_batches
        batches = limit if isinstance(limit, int) else max(1, int(len(loader) * limit))
        devices = [self.device] if self.device.type == "cuda" else []
        was_training = self.training
        self.eval()
        with torch.random.fork_rng(devices=devices), torch.no_grad(), self.trainer.precision_plugin.val_step_context():
            for index, batch in enumerate(loader):
                if index >= batches:
                    break
                self._eval_step(self.val_metrics, move_data_to_device(batch, self.device))
        values = self.val_metrics.compute("val", with_exact_match=self.hparams.eval_generate)
        self.val_metrics.reset()
        self.train(was_training)
        for logger in self.loggers:
            logger.log_metrics({key: float(value) for key, value in values.items()}, step=0)

    def hf_model(self) -> Any:
        """The Hugging Face causal LM (inside the PEFT wrapper with LoRA; its LoRA layers are live)."""
        return self.model.get_base_model() if self.lora_settings is not None else self.model

    def supervised_hidden(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder hidden states at the positions that predict an answer token, and those tokens' ids."""
        decoder = self.hf_model().get_decoder()
        hidden = decoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state
        return supervised_positions(hidden, batch["labels"])

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Mean NLL of the answer tokens: the model's own loss, or the chunked one (``loss_chunk_tokens``)."""
        chunk = self.hparams.loss_chunk_tokens
        if chunk is None:
            return self.model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                labels=batch["labels"],
                use_cache=False,
            ).loss
        hidden, targets = self.supervised_hidden(batch)
        return chunked_cross_entropy(hidden, targets, self.hf_model().get_output_embeddings(), chunk)

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self._step_losses.append(loss.detach())
        return loss

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Runs once per real optimizer step, after every micro-batch of gradient accumulation.
        if self._step_losses:
            # sync_dist: the mean over ranks (each rank's loss is the mean over its share of the global batch)
            self.log("train/loss", torch.stack(self._step_losses).mean(), on_step=True, prog_bar=True, sync_dist=True)
            self._step_losses.clear()
        self.log("train/lr", float(optimizer.param_groups[0]["lr"]), on_step=True)

    @override
    def configure_callbacks(self) -> list[Callback]:
        """A SIGTERM stops the fit at a step boundary with a checkpoint to resume from (``PreemptionCheckpoint``)."""
        from svdlora_pl.callbacks.preemption import PreemptionCheckpoint

        return [PreemptionCheckpoint()]

    @override
    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = build_optimizer(self.optimizer_factory, params)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(round(self.hparams.warmup_ratio * total))
        scheduler = warmup_schedule(optimizer, warmup, total, self.hparams.lr_schedule, self.hparams.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------------------------- evaluation, predict
    def generate_answers(self, batch: dict[str, Any]) -> list[str]:
        """Greedy completions of the batch's left-padded prompts, special tokens removed."""
        prompt = batch["prompt_input_ids"]
        out = self.model.generate(
            input_ids=prompt,
            attention_mask=batch["prompt_attention_mask"],
            max_new_tokens=self.hparams.max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        return self.tokenizer.batch_decode(out[:, prompt.shape[1] :], skip_special_tokens=True)

    def _eval_step(self, metrics: EvalMetrics, batch: dict[str, Any]) -> None:
        if self.hparams.loss_chunk_tokens is None:
            metrics.update_tokens(self(batch["input_ids"], batch["attention_mask"]), batch["labels"])
        else:  # logits only where there is an answer token
            hidden, targets = self.supervised_hidden(batch)
            metrics.update_selected(self.hf_model().get_output_embeddings()(hidden), targets)
        if self.hparams.eval_generate:
            metrics.exact_match.update(self.generate_answers(batch), batch["answers"])

    def _eval_epoch_end(self, metrics: EvalMetrics, stage: str) -> None:
        self.log_dict(metrics.compute(stage, with_exact_match=self.hparams.eval_generate), sync_dist=False)
        metrics.reset()

    @override
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(self.val_metrics, batch)

    @override
    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end(self.val_metrics, "val")

    @override
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(self.test_metrics, batch)

    @override
    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end(self.test_metrics, "test")

    @override
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        rows = []
        for record, reference, text in zip(
            batch["records"], batch["answers"], self.generate_answers(batch), strict=True
        ):
            row = {**record, "prediction": text, "predicted_answer": extract_final_answer(text)}
            if reference:
                row["correct"] = answers_match(text, reference)
            rows.append(row)
        self._predictions.extend(rows)
        return rows

    @override
    def on_predict_epoch_end(self) -> None:
        path = self.predictions_path()
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self._predictions))
        scored = [r["correct"] for r in self._predictions if "correct" in r]
        summary = f", exact match {sum(scored)}/{len(scored)}" if scored else ""
        print(f"wrote {len(self._predictions)} predictions to {path}{summary}")
        self._predictions.clear()

    def predictions_path(self) -> Path:
        """``predictions_file`` or ``<log_dir>/predictions.jsonl`` (one file per rank under DDP)."""
        if self.hparams.predictions_file:
            path = Path(self.hparams.predictions_file)
        else:
            path = self.run_dir() / "predictions.jsonl"
        if self.trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{self.trainer.global_rank}{path.suffix}")
        return path

    # ----------------------------------------------------------------------------------- outputs and checkpoints
    def run_dir(self) -> Path:
        """The run's log directory (``<default_root_dir>/lightning_logs/version_N`` with TensorBoard).

        Under DDP this broadcasts from rank zero, so every rank must call it.
        """
        return Path(self.trainer.log_dir or self.trainer.default_root_dir)

    def save_pretrained(self, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Save the adapter (PEFT format) or, in full fine-tuning, the whole model, plus the tokenizer.

        ``state_dict``: this module's full (unsharded) state dict, when the parameters themselves are shards (FSDP);
        default: the parameters as they are.
        """
        inner = None
        if state_dict is not None:  # keys of self.model's own state dict
            inner = {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}
        with atomic_directory(directory) as staging:
            if self.initial_factors is not None:
                save_base_relative_adapter(
                    staging, self.model, ADAPTER_NAME, self.initial_factors,
                    self.hparams.model_name_or_path, self.hparams.initializer["class_path"], inner,
                )  # fmt: skip
            else:
                self.model.save_pretrained(staging, state_dict=inner)
            self.tokenizer.save_pretrained(staging)
        return Path(directory)

    @override
    def on_train_end(self) -> None:
        # on_train_end runs while the strategy (and its process group) is still up; on_fit_end runs after teardown.
        # trainer.log_dir is a collective under DDP: every rank asks, rank zero writes. The strategy's state dict is
        # a collective under FSDP (full tensors gathered to rank zero) and the module's own state dict otherwise.
        target = self.run_dir() / ("adapter" if self.lora_settings else "model")
        state = self.trainer.strategy.lightning_module_state_dict()
        if self.trainer.is_global_zero:
            self.save_pretrained(target, state)
            print(f"saved {target.name} to {target}")
        self.trainer.strategy.barrier()

    def trainable_names(self) -> set[str]:
        """State-dict keys of the parameters being trained."""
        return {name for name, p in self.named_parameters() if p.requires_grad}

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self.trainable_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["rng_states"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
        save_initial_factors(self, checkpoint)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        missing = sorted(self.trainable_names() - set(checkpoint["state_dict"]))
        if missing:
            raise InputError(
                f"checkpoint state_dict: {len(missing)} trainable tensors missing (e.g. {missing[0]}); "
                "was it saved with other LoRA settings or target modules?"
            )
        for key, value in checkpoint["state_dict"].items():
            if not torch.isfinite(value).all():
                raise InputError(f"checkpoint state_dict: {key} holds NaN or infinite values")
        restore_initial_factors(self, checkpoint)
        states = checkpoint.get("rng_states", {})
        if "torch" in states:
            torch.set_rng_state(states["torch"])
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(list(states["cuda"]))
