"""A resolved ``svdlora fit`` config read for memory: the settings of the shipped configs and overlays, class
defaults, dtypes from the precision, optimizer state counts, device and strategy forms, FSDP's activation
checkpointing, and semantic errors naming the field."""

from __future__ import annotations

import pytest
from helpers import ROOT

from svdlora_pl.cli.lightning import resolve_fit_config
from svdlora_pl.errors import InputError
from svdlora_pl.memory.architecture import DECODER_PROJECTIONS
from svdlora_pl.memory.fit_setup import (
    device_count,
    fsdp_checkpointing,
    optimizer_states,
    read_fit_config,
    statements,
    training_setup,
    world_and_strategy,
)

REFERENCE = str(ROOT / "configs" / "qwen2.5-math-7b-32gb.yaml")
TINY = str(ROOT / "configs" / "tiny.yaml")
FSDP = str(ROOT / "configs" / "distributed" / "fsdp.yaml")
DDP = str(ROOT / "configs" / "distributed" / "ddp.yaml")


def settings(*args: str):
    return read_fit_config(resolve_fit_config(list(args)))


def test_reference_config():
    ref = settings("-c", REFERENCE)
    assert (ref.model_name_or_path, ref.dtype, ref.precision) == (
        "Qwen/Qwen2.5-Math-7B-Instruct",
        "bfloat16",
        "bf16-mixed",
    )
    assert ref.lora.r == 16 and ref.lora.dropout == 0.05 and ref.lora.targets == DECODER_PROJECTIONS
    assert ref.gradient_checkpointing and ref.loss_chunk_tokens == 256
    assert (ref.batch_size, ref.max_length, ref.accumulate) == (1, 1024, 4)
    assert (ref.optimizer, ref.optimizer_states, ref.strategy, ref.world_size) == ("AdamW", 2, "single", 1)
    assert ref.accelerator == "gpu" and ref.notes == ()
    setup = training_setup(ref, "bfloat16")
    assert (setup.base_dtype, setup.trainable_dtype, setup.autocast_dtype) == ("bfloat16", "float32", "bfloat16")


def test_tiny_config():
    tiny = settings("-c", TINY)
    setup = training_setup(tiny, None)
    assert (setup.micro_batch, setup.seq_len, setup.base_dtype, setup.accelerator) == (8, 256, "float32", "cpu")
    assert setup.lora.r == 8 and len(setup.lora.targets) == 7 and not setup.gradient_checkpointing


def test_fsdp_overlay_shards_and_checkpoints_through_its_policy():
    config = resolve_fit_config(["-c", REFERENCE, "-c", FSDP])
    assert config["model"]["gradient_checkpointing"] is False  # the overlay's value
    fsdp = read_fit_config(config)
    assert (fsdp.strategy, fsdp.world_size, fsdp.accumulate) == ("fsdp", 1, 1)
    assert fsdp.gradient_checkpointing  # FSDP's activation_checkpointing_policy: every Qwen2DecoderLayer
    assert any(n.startswith("trainer.devices=-1: the device count is known at run time") for n in fsdp.notes)
    assert any("activation_checkpointing_policy (Qwen2DecoderLayer)" in n for n in fsdp.notes)
    four = settings("-c", REFERENCE, "-c", FSDP, "--trainer.devices=4")
    assert four.world_size == 4 and not any("trainer.devices" in n for n in four.notes)


def test_ddp_overlay_and_device_forms():
    ddp = settings("-c", REFERENCE, "-c", DDP, "--trainer.devices=2", "--trainer.num_nodes=3")
    assert (ddp.strategy, ddp.world_size) == ("ddp", 6)
    assert settings("-c", TINY, "--trainer.devices=2").strategy == "ddp"  # auto strategy, more than one device
    assert [device_count(d) for d in (2, "3", "0,1", [0, 1, 2], -1, "-1", "auto")] == [2, 3, 2, 3, None, None, None]
    for bad in (0, "0", [], "x", True):
        with pytest.raises(InputError, match="trainer.devices: expected a count >= 1"):
            device_count(bad)


def test_strategies():
    assert world_and_strategy({"devices": 1, "strategy": "single_device"})[:2] == (1, "single")
    assert world_and_strategy({"devices": 2, "strategy": "ddp_find_unused_parameters_true"})[:2] == (2, "ddp")
    fsdp_class = {"class_path": "lightning.pytorch.strategies.FSDPStrategy", "init_args": {}}
    assert world_and_strategy({"devices": 4, "strategy": fsdp_class})[:2] == (4, "fsdp")
    with pytest.raises(InputError, match="trainer.strategy: 'deepspeed_stage_2' is not modelled"):
        world_and_strategy({"devices": 1, "strategy": "deepspeed_stage_2"})
    with pytest.raises(InputError, match="trainer.strategy: unknown strategy 'XLAStrategy'"):
        world_and_strategy({"devices": 1, "strategy": {"class_path": "lightning.pytorch.strategies.XLAStrategy"}})


def test_fsdp_checkpointing_policy():
    def strategy(policy):
        return {"class_path": "FSDPStrategy", "init_args": {"activation_checkpointing_policy": policy}}

    assert fsdp_checkpointing(strategy(None)) == (False, "")
    assert fsdp_checkpointing(strategy(["transformers.models.llama.modeling_llama.LlamaDecoderLayer"]))[0]
    on, note = fsdp_checkpointing(strategy({"torch.nn.Linear"}))
    assert not on and "activation_checkpointing_policy ['Linear'] is not modelled" in note


def test_class_defaults_fill_what_the_config_leaves_out():
    """LoRASettings' dropout, QADataModule's batch_size; bf16-true converts the LoRA factors too."""
    plain = settings("--model.dtype=bfloat16", "--model.lora={r: 4, target_modules: [q_proj, v_proj]}",
                     "--data.max_length=64", "--trainer.precision=bf16-true", "--trainer.accelerator=cpu")  # fmt: skip
    assert plain.lora.dropout == 0.05 and plain.lora.targets == ("q_proj", "v_proj")
    assert (plain.batch_size, plain.max_length) == (4, 64)
    setup = training_setup(plain, None)
    assert setup.base_dtype == setup.trainable_dtype == "bfloat16"
    assert any("no float32 copy" in note for note in statements(setup, plain))


@pytest.mark.parametrize(
    ("name", "init", "states"),
    [("AdamW", {}, 2), ("AdamW", {"amsgrad": True}, 3), ("Adagrad", {}, 1), ("SGD", {"lr": 0.1}, 0),
     ("SGD", {"momentum": 0.9}, 1), ("RMSprop", {"momentum": 0.9, "centered": True}, 3)],
)  # fmt: skip
def test_optimizer_state_counts(name, init, states):
    assert optimizer_states({"class_path": f"torch.optim.{name}", "init_args": init})[:2] == (name, states)


def test_an_unknown_optimizer_is_counted_as_adamw_with_a_note():
    resolved = settings("-c", TINY, "--model.optimizer=torch.optim.LBFGS")
    assert (resolved.optimizer, resolved.optimizer_states) == ("LBFGS", 2)
    assert "model.optimizer: LBFGS's state size is unknown" in resolved.notes[0]
    assert settings("--model.optimizer={class_path: torch.optim.SGD, init_args: {lr: 0.1}}").optimizer_states == 0


def test_full_finetuning_and_the_notes():
    full = settings("-c", REFERENCE, "--model.lora=null", "--trainer.devices=2", "--trainer.strategy=ddp")
    setup = training_setup(full, "bfloat16")
    assert setup.lora is None and setup.trainable_dtype == "bfloat16"
    notes = statements(setup, full)
    assert any("DDP over 2 devices: every device holds a full replica" in n for n in notes)
    assert any(n.startswith("CUDA overhead: 1 GiB context + 10%") for n in notes)
    tiny = settings("-c", TINY)
    assert any("accelerator cpu: no CUDA overhead" in n for n in statements(training_setup(tiny, None), tiny))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data.batch_size=0"], "data.batch_size: must be >= 1, got 0"),
        (["--data.max_length=0"], "data.max_length: must be >= 1, got 0"),
        (["--trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches: must be >= 1, got 0"),
        (["--trainer.num_nodes=0"], "trainer.num_nodes: must be >= 1, got 0"),
        (["--model.loss_chunk_tokens=0"], "model.loss_chunk_tokens: must be >= 1, got 0"),
        (["--trainer.precision=transformer-engine"], "trainer.precision: 'transformer-engine' is not modelled"),
        (["--model.lora.r=0"], "model.lora.r: must be a positive integer, got 0"),
        (["--model.lora.dropout=1.0"], "model.lora.dropout: must be in [0, 1)"),
        (["--trainer.strategy=deepspeed"], "trainer.strategy: 'deepspeed' is not modelled"),
    ],
)
def test_semantic_errors_name_the_field(args, message):
    with pytest.raises(InputError) as info:
        settings("-c", TINY, *args)
    assert message in str(info.value)


def test_a_field_missing_from_a_hand_made_config_is_named():
    config = resolve_fit_config([])
    with pytest.raises(InputError, match="data.batch_size: missing from the config"):
        read_fit_config({**config, "data": {"max_length": 8}})
    with pytest.raises(InputError, match="model.lora: .*unexpected keyword argument 'rank'"):
        read_fit_config({**config, "model": {**config["model"], "lora": {"rank": 4}}})
