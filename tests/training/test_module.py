"""QwenLoRAModule on the tiny model: training, logging, adapter export, checkpoints, resume, predict."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import make_trainer, read_scalars
from lightning.pytorch.callbacks import ModelCheckpoint

from svdlora_pl.embedded.tiny import TINY_MODEL, resolve_model_path
from svdlora_pl.errors import InputError
from svdlora_pl.lora.settings import LoRASettings
from svdlora_pl.training.datamodule import QADataModule
from svdlora_pl.training.module import QwenLoRAModule


def make_module(**kwargs) -> QwenLoRAModule:
    kwargs.setdefault("lora", LoRASettings(r=4, alpha=8, dropout=0.1))
    kwargs.setdefault("optimizer", lambda params: torch.optim.AdamW(params, lr=3e-3))
    module = QwenLoRAModule(**kwargs)
    module.configure_model()
    return module


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[QwenLoRAModule, pl.Trainer, Path]:
    """One short fit shared by the tests that only inspect its outputs."""
    root = tmp_path_factory.mktemp("fit")
    pl.seed_everything(0)
    module = make_module()
    trainer = make_trainer(root, max_epochs=1, limit_train_batches=30, limit_val_batches=3)
    trainer.fit(module, QADataModule(batch_size=8))
    return module, trainer, Path(trainer.log_dir)


def test_fit_lowers_loss_and_logs_metrics(fitted):
    _, _, log_dir = fitted
    scalars = read_scalars(log_dir)
    assert {"train/loss", "train/lr", "val/loss", "val/perplexity", "val/token_accuracy"} <= set(scalars)
    losses = [value for _, value in scalars["train/loss"]]
    assert len(losses) == 30  # one point per optimizer step
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1
    (_, val_loss), (_, ppl) = scalars["val/loss"][-1], scalars["val/perplexity"][-1]
    assert ppl == pytest.approx(torch.exp(torch.tensor(val_loss)).item(), rel=1e-4)
    assert list(log_dir.glob("events.out.tfevents.*"))


def test_initial_eval_logs_the_untrained_model_at_step_zero(fitted, tmp_path):
    _, _, log_dir = fitted
    scalars = read_scalars(log_dir)
    assert [step for step, _ in scalars["val/loss"]] == [0, 29]  # Lightning logs epoch-end val at the last step
    assert scalars["train/loss"][0][0] == 0  # the first train point is also measured before any update
    pl.seed_everything(0)
    fresh = make_module()  # same seed: the same initial LoRA factors as the fitted run had
    (expected,) = make_trainer(tmp_path, limit_val_batches=3).validate(fresh, QADataModule(batch_size=8))
    for key in ("val/loss", "val/token_accuracy"):
        assert scalars[key][0][1] == pytest.approx(expected[key], rel=1e-6)
    skipped = make_trainer(tmp_path / "off", max_steps=1, limit_val_batches=1)
    skipped.fit(make_module(initial_eval=False), QADataModule(batch_size=8))
    assert "val/loss" not in read_scalars(Path(skipped.log_dir))  # max_steps ends before any epoch-end validation


def test_adapter_loads_with_plain_peft_and_gives_same_logits(fitted):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    module, _, log_dir = fitted
    adapter_dir = log_dir / "adapter"
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    loaded = PeftModel.from_pretrained(base, adapter_dir).eval()
    module.eval()
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids, attention_mask=mask).logits, module(ids, mask), atol=1e-5, rtol=0
        )
        # the adapter is not a no-op: it changed the base model's outputs
        fresh_base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
        assert not torch.allclose(fresh_base(input_ids=ids).logits, module(ids, mask), atol=1e-4)


def test_checkpoint_holds_only_trainable_tensors_and_loads_weights_only(fitted):
    module, _, log_dir = fitted
    (ckpt_path,) = (log_dir / "checkpoints").glob("*.ckpt")
    checkpoint = torch.load(ckpt_path, weights_only=True, map_location="cpu")
    keys = set(checkpoint["state_dict"])
    assert keys == module.trainable_names()
    assert all("lora_" in key for key in keys)
    assert checkpoint["optimizer_states"] and "rng_states" in checkpoint
    restored = QwenLoRAModule.load_from_checkpoint(ckpt_path, optimizer=torch.optim.AdamW)
    for key, value in module.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[key], value)


def test_resume_from_mid_run_checkpoint_matches_uninterrupted_run(tmp_path):
    def run(root: Path, max_epochs: int, ckpt_path: str | None = None) -> tuple[QwenLoRAModule, Path]:
        pl.seed_everything(0)
        module = make_module()  # dropout 0.1: the RNG state must be restored for an exact resume
        saver = ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, every_n_epochs=1)
        trainer = make_trainer(
            root, max_epochs=max_epochs, limit_train_batches=6, limit_val_batches=1, callbacks=[saver]
        )
        trainer.fit(module, QADataModule(batch_size=4), ckpt_path=ckpt_path)
        return module, Path(trainer.log_dir)

    full, full_logs = run(tmp_path / "full", max_epochs=3)
    first_epoch_ckpt = next((tmp_path / "full" / "ckpt").glob("epoch=0-*.ckpt"))
    resumed, resumed_logs = run(tmp_path / "resumed", max_epochs=3, ckpt_path=str(first_epoch_ckpt))
    full_loss = read_scalars(full_logs)["train/loss"]
    resumed_loss = read_scalars(resumed_logs)["train/loss"]
    assert [s for s, _ in resumed_loss] == [s for s, _ in full_loss[6:]]
    torch.testing.assert_close(torch.tensor([v for _, v in resumed_loss]), torch.tensor([v for _, v in full_loss[6:]]))
    for name in full.trainable_names():
        torch.testing.assert_close(resumed.state_dict()[name], full.state_dict()[name])


def test_resume_from_mid_epoch_checkpoint_sees_the_rest_of_the_epoch(tmp_path):
    def run(root: Path, ckpt_path: str | None = None) -> list[tuple[int, float]]:
        pl.seed_everything(0)
        saver = ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, every_n_train_steps=4)
        trainer = make_trainer(root, max_epochs=2, limit_train_batches=6, limit_val_batches=1, callbacks=[saver])
        trainer.fit(make_module(), QADataModule(batch_size=4), ckpt_path=ckpt_path)
        return read_scalars(Path(trainer.log_dir))["train/loss"]

    full = run(tmp_path / "full")
    mid_epoch = next((tmp_path / "full" / "ckpt").glob("epoch=0-step=4.ckpt"))  # 4 of the epoch's 6 batches done
    resumed = run(tmp_path / "resumed", str(mid_epoch))
    assert resumed == full[4:]  # the epoch's last 2 batches, then epoch 1: the same losses, bit for bit


def test_model_loads_from_a_local_directory_like_a_hub_model(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model_path(TINY_MODEL)
    AutoModelForCausalLM.from_pretrained(source).save_pretrained(tmp_path / "local")
    AutoTokenizer.from_pretrained(source).save_pretrained(tmp_path / "local")
    from_dir = make_module(model_name_or_path=str(tmp_path / "local"))
    from_name = make_module()
    ids = torch.arange(20).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(
            from_dir.eval()(ids, torch.ones_like(ids)), from_name.eval()(ids, torch.ones_like(ids))
        )


def test_construction_reads_no_weights_configure_model_builds_once(tmp_path, monkeypatch):
    from transformers import AutoConfig, AutoTokenizer

    import svdlora_pl.training.module as module_file

    source = resolve_model_path(TINY_MODEL)
    AutoConfig.from_pretrained(source).save_pretrained(tmp_path)  # config and tokenizer, no weight file
    AutoTokenizer.from_pretrained(source).save_pretrained(tmp_path)
    loads = []
    real = module_file.load_causal_lm
    monkeypatch.setattr(module_file, "load_causal_lm", lambda *a: loads.append(a) or real(*a))
    module = QwenLoRAModule(model_name_or_path=str(tmp_path))
    assert module.model is None and loads == [] and not list(tmp_path.glob("*.safetensors"))
    built = QwenLoRAModule()
    built.configure_model()
    first = built.model
    built.configure_model()  # idempotent: Lightning calls it in every fit/validate/test/predict
    assert built.model is first and len(loads) == 1


def test_missing_model_directory_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not a model directory"):
        make_module(model_name_or_path=str(tmp_path))


def test_unknown_target_module_is_an_input_error():
    with pytest.raises(InputError, match=r"model.lora.target_modules: 'qkv_proj'"):
        make_module(lora=LoRASettings(target_modules=["q_proj", "qkv_proj"]))


@pytest.mark.parametrize(
    "kwargs, field",
    [({"r": 0}, "model.lora.r"), ({"alpha": -1.0}, "model.lora.alpha"), ({"dropout": 1.0}, "model.lora.dropout")],
)
def test_invalid_lora_settings_name_the_field(kwargs, field):
    with pytest.raises(InputError, match=field):
        LoRASettings(**kwargs).validate()


def test_full_finetune_trains_every_parameter_and_saves_the_model(tmp_path):
    module = make_module(lora=None)
    assert all(p.requires_grad for p in module.parameters())
    trainer = make_trainer(tmp_path, max_steps=2, limit_val_batches=1)
    trainer.fit(module, QADataModule(batch_size=2))
    saved = Path(trainer.log_dir) / "model"
    assert (saved / "config.json").is_file() and (saved / "tokenizer_config.json").is_file()


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))

    def grads(checkpointing: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        module = make_module(lora=LoRASettings(r=4, dropout=0.0), gradient_checkpointing=checkpointing).train()
        for name, p in module.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)  # B = 0 would leave A without gradient
        module.model(input_ids=ids, labels=ids).loss.backward()
        return [p.grad for p in module.parameters() if p.requires_grad]

    for with_ckpt, without in zip(grads(True), grads(False), strict=True):
        torch.testing.assert_close(with_ckpt, without, atol=1e-6, rtol=1e-5)


def test_predict_writes_jsonl_and_validate_reports_exact_match(tmp_path):
    module = make_module(eval_generate=True, max_new_tokens=4, predictions_file=str(tmp_path / "out" / "pred.jsonl"))
    data = QADataModule(batch_size=8)
    trainer = make_trainer(tmp_path, limit_predict_batches=2, limit_val_batches=1)
    trainer.predict(module, data, return_predictions=False)
    rows = [json.loads(line) for line in (tmp_path / "out" / "pred.jsonl").read_text().splitlines()]
    assert len(rows) == 16
    assert {"question", "answer", "prediction", "predicted_answer", "correct"} <= set(rows[0])
    (metrics,) = trainer.validate(module, data, verbose=False)
    assert 0.0 <= metrics["val/exact_match"] <= 1.0
