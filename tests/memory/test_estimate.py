"""``svdlora estimate-memory`` end to end: the reference config fits 32 GB with the published 7B counts, the JSON
equals the plan computed directly, config fields are read like LightningCLI reads them, and bad input or a config
that cannot fit exits 2 with one line."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

from svdlora_pl.cli import main
from svdlora_pl.memory.estimate import GB, training_setup

REFERENCE = ROOT / "configs" / "qwen2.5-math-7b-32gb.yaml"
TINY = ROOT / "configs" / "tiny.yaml"


def estimate(*args: str | Path) -> int:
    return main(["estimate-memory", *map(str, args)])


def write_config(path: Path, base: Path, **changes: dict) -> Path:
    """``base`` with each section's fields updated by ``changes`` (``model={"lora": None}``)."""
    config = yaml.safe_load(base.read_text())
    for section, fields in changes.items():
        config.setdefault(section, {}).update(fields)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict, str]:
    """The reference config's JSON report and printed table."""
    out = tmp_path_factory.mktemp("reference") / "plan.json"
    with contextlib.redirect_stdout(io.StringIO()) as table:
        assert estimate("-c", REFERENCE, "--model-config", "qwen2.5-math-7b", "--json", out) == 0
    return json.loads(out.read_text()), table.getvalue()


def test_reference_config_fits_32_gb(reference):
    report, table = reference
    assert report["fits"] and report["plan"]["total"] < 32 * GB
    assert report["parameters"]["total"] == 7_615_616_512
    assert report["parameters"]["lora"] == 40_370_176
    setup = report["setup"]
    assert (setup["base_dtype"], setup["trainable_dtype"], setup["autocast_dtype"]) == (
        "bfloat16",
        "float32",
        "bfloat16",
    )
    assert setup["gradient_checkpointing"] and (setup["micro_batch"], setup["seq_len"]) == (1, 1024)
    plan = report["plan"]
    assert plan["base_weights"] == {"bfloat16": 7_615_616_512 * 2}
    assert plan["optimizer_states"] == 2 * 4 * 40_370_176  # AdamW: two float32 states per LoRA parameter
    assert setup["loss_chunk_tokens"] == 256  # chunked loss: one 256-row chunk of float32 logits and gradients
    assert plan["logits"] == 256 * 152064 * 2 and plan["logits_peak"] == 12 * 256 * 152064
    assert plan["activations_checkpointed"] < plan["activations_full"]
    assert report["largest_micro_batch"] >= 1 and report["largest_max_length"] == 4096  # the model's context
    for expected in ("fits in 32.00 GB", "activations, no checkpointing", "logits + loss peak", "master weights"):
        assert expected in table


def test_reference_resolves_its_hub_name_without_network(capsys):
    assert estimate("-c", REFERENCE) == 0
    out = capsys.readouterr().out
    assert "7,615,616,512 parameters" in out and "fits in 32.00 GB" in out


def test_tiny_json_equals_the_plan_computed_directly(tmp_path, capsys):
    from svdlora_pl.memory.estimate import read_config, setup_from_config, tiny_config
    from svdlora_pl.memory.plan import count_parameters, plan_memory

    assert estimate("-c", TINY, "--json", tmp_path / "plan.json") == 0
    report = json.loads((tmp_path / "plan.json").read_text())
    fields, _ = setup_from_config(read_config(TINY), TINY)
    setup = training_setup(fields, None)
    arch, counts = count_parameters(tiny_config(), setup.lora)
    plan = plan_memory(arch, counts, setup)
    assert report["plan"]["total"] == plan.total and report["plan"]["peak"] == plan.peak
    assert (setup.micro_batch, setup.seq_len, setup.base_dtype, setup.accelerator) == (8, 256, "float32", "cpu")
    assert setup.lora.r == 8 and len(setup.lora.targets) == 7 and not setup.gradient_checkpointing
    assert plan.cuda_overhead == 0  # accelerator: cpu
    assert "total with checkpointing" in capsys.readouterr().out


def test_budget_too_small_exits_2_with_the_numbers(capsys):
    assert estimate("-c", REFERENCE, "--model-config", "qwen2.5-7b", "--budget-gb", "1") == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert "needs 19.39 GB" in line and "over the 1 GB budget" in line and "largest micro-batch" in line
    assert "does NOT fit" in captured.out  # the table is still printed


def test_knobs_change_the_plan(tmp_path):
    def total(name: str, **changes) -> dict:
        config = write_config(tmp_path / f"{name}.yaml", REFERENCE, **changes)
        assert estimate("-c", config, "--model-config", "qwen2.5-7b", "--json", tmp_path / f"{name}.json") == 0
        return json.loads((tmp_path / f"{name}.json").read_text())

    base = total("base")
    no_ckpt = total("no_ckpt", model={"gradient_checkpointing": False})
    assert no_ckpt["plan"]["total"] > base["plan"]["total"]
    assert no_ckpt["plan"]["total"] == pytest.approx(base["plan"]["peak_full"] * 1.1 + 2**30, rel=1e-6)
    longer = total("longer", data={"max_length": 2048})
    assert longer["plan"]["logits"] == base["plan"]["logits"] == 256 * 152064 * 2  # one chunk: not B·T·V
    full_loss = total("full_loss", model={"loss_chunk_tokens": None})
    assert full_loss["plan"]["logits"] == 1024 * 152064 * 2
    ddp = total("ddp", trainer={"devices": 2, "strategy": "ddp"})
    assert ddp["plan"]["ddp_buckets"] == base["plan"]["gradients"]
    assert any("full replica" in note for note in ddp["notes"])
    fsdp = total("fsdp", trainer={"devices": 4, "strategy": "fsdp"})
    assert fsdp["plan"]["base_weights"]["bfloat16"] == 7_615_616_512 * 2 // 4
    sgd = total("sgd", model={"optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}}})
    assert sgd["plan"]["optimizer_states"] == 0


def test_full_finetuning_of_the_7b_does_not_fit_32_gb(tmp_path, capsys):
    config = write_config(tmp_path / "full.yaml", REFERENCE, model={"lora": None})
    assert estimate("-c", config, "--model-config", "qwen2.5-7b") == 2
    assert "over the 32 GB budget" in capsys.readouterr().err


def test_model_config_file(tmp_path, capsys):
    from svdlora_pl.memory.plan import PRESETS

    fields = {**PRESETS["qwen2.5-7b"], "num_hidden_layers": 2}
    fields["torch_dtype"] = fields.pop("dtype")
    (tmp_path / "config.json").write_text(json.dumps(fields))
    assert estimate("-c", REFERENCE, "--model-config", tmp_path / "config.json") == 0
    assert "2 layers" in capsys.readouterr().out
    assert estimate("-c", REFERENCE, "--model-config", tmp_path) == 0  # a directory holding config.json


def test_class_path_sections_and_defaults(tmp_path):
    """LightningCLI's class_path/init_args form; absent fields take the classes' defaults."""
    config = {
        "model": {
            "class_path": "svdlora_pl.model.QwenLoRAModule",
            "init_args": {"lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}, "dtype": "bfloat16"},
        },
        "data": {"class_path": "svdlora_pl.data.QADataModule", "init_args": {"max_length": 64}},
        "trainer": {"precision": "bf16-true", "accelerator": "cpu"},
    }
    path = tmp_path / "lightning.yaml"
    path.write_text(yaml.safe_dump(config))
    assert estimate("-c", path, "--json", tmp_path / "plan.json") == 0
    report = json.loads((tmp_path / "plan.json").read_text())
    setup = report["setup"]
    assert setup["lora"] == {"r": 4, "dropout": 0.05, "targets": ["q_proj", "v_proj"]}  # LoRASettings' dropout
    assert (setup["micro_batch"], setup["seq_len"]) == (4, 64)  # QADataModule's batch_size default
    assert setup["base_dtype"] == setup["trainable_dtype"] == "bfloat16"  # bf16-true converts the LoRA factors
    assert any("no float32 copy" in note for note in report["notes"])


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (None, (), "config file not found"),
        ("model: [unclosed", (), "not valid YAML"),
        ("data:\n  batch_size: eight\n", (), "data.batch_size: expected int"),
        ("model:\n  gradient_checkpointing: 3\n", (), "model.gradient_checkpointing: expected bool"),
        ("model:\n  lora:\n    rank: 4\n", (), "model.lora: "),
        ("model:\n  lora:\n    r: 0\n", (), "config.yaml: model.lora.r: must be a positive integer"),
        ("data:\n  batchsize: 2\n", (), "data.batchsize: unknown field"),
        ("model:\n  lora:\n    target_modules: [qkv]\n", (), "config.yaml: model.lora.target_modules: 'qkv'"),
        ("model:\n  lora:\n    target_modules: [lm_head]\n", (), "'lm_head' is not modelled"),
        ("trainer:\n  precision: 8-bit\n", (), "trainer.precision"),
        ("trainer:\n  strategy: fsdp\n", (), "trainer.devices"),
        ("data:\n  max_length: 256\n", ("--model-config", "qwen3-999b"), "neither a file nor a known preset"),
        ("model:\n  model_name_or_path: nobody/no-such-model\n", (), "no config.json for 'nobody/no-such-model'"),
        ("data:\n  max_length: 256\n", ("--budget-gb", "0"), "--budget-gb: must be positive"),
    ],
)
def test_bad_input_exits_2_in_one_line(tmp_path, capsys, content, args, message):
    config = tmp_path / "config.yaml"
    if content is not None:
        config.write_text(content)
    assert estimate("-c", config, *args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
