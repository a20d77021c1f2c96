"""``svdlora estimate-memory`` end to end: the config is resolved as ``svdlora fit`` resolves it (stacked ``-c``
overlays, options, class defaults), the reference config fits 32 GB with the published 7B counts, the JSON equals
the plan computed directly, ``--help`` and ``--print_config`` work as for every tool, and bad input or a config that
cannot fit exits 2 with one ``svdlora: error:`` line."""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import re
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

from svdlora_pl.cli.lightning import resolve_fit_config
from svdlora_pl.cli.main import main
from svdlora_pl.memory.architecture import count_parameters
from svdlora_pl.memory.estimate import estimate_memory
from svdlora_pl.memory.fit_setup import read_fit_config, training_setup
from svdlora_pl.memory.plan import plan_memory
from svdlora_pl.memory.presets import PRESETS, tiny_config
from svdlora_pl.memory.table import GB

REFERENCE = ROOT / "configs" / "qwen2.5-math-7b-32gb.yaml"
TINY = ROOT / "configs" / "tiny.yaml"
FSDP = ROOT / "configs" / "distributed" / "fsdp.yaml"


def estimate(*args: str | Path) -> int:
    return main(["estimate-memory", *map(str, args)])


def write_config(path: Path, base: Path, **changes: dict) -> Path:
    """``base`` with each section's fields updated by ``changes`` (``model={"lora": None}``)."""
    config = yaml.safe_load(base.read_text())
    for section, fields in changes.items():
        config.setdefault(section, {}).update(fields)
    path.write_text(yaml.safe_dump(config))
    return path


def error_line(err: str) -> str:
    """The one ``svdlora: error:`` line of stderr (a jsonargparse error adds one hint line after it)."""
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("svdlora: error:")]
    return line


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict, str]:
    """The reference config's JSON report and printed table."""
    out = tmp_path_factory.mktemp("reference") / "plan.json"
    with contextlib.redirect_stdout(io.StringIO()) as table:
        assert estimate("-c", REFERENCE, "--model_config", "qwen2.5-math-7b", "--json", out) == 0
    return json.loads(out.read_text()), table.getvalue()


# ------------------------------------------------------------------------------------------------- the plan
def test_reference_config_fits_32_gb(reference):
    report, table = reference
    assert report["fits"] and report["plan"]["total"] < 32 * GB
    assert report["plan"]["total"] == 19_389_095_372  # the published 19.389 GB, unchanged
    assert report["config"] == [str(REFERENCE)]
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
    assert table.splitlines()[0] == f"svdlora estimate-memory: {REFERENCE}"


def test_reference_resolves_its_hub_name_without_network(capsys):
    assert estimate("-c", REFERENCE) == 0
    out = capsys.readouterr().out
    assert "7,615,616,512 parameters" in out and "fits in 32.00 GB" in out


def test_fsdp_overlay_is_stacked_as_for_fit(tmp_path, capsys):
    """``-c CONFIG -c configs/distributed/fsdp.yaml``: the overlay's strategy, accumulation and
    ``gradient_checkpointing: false`` (its FSDP policy checkpoints each decoder layer instead)."""
    assert estimate("-c", REFERENCE, "-c", FSDP, "--json", tmp_path / "fsdp.json") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"svdlora estimate-memory: {REFERENCE} + {FSDP}"
    assert "accumulate 1," in out and "checkpointing on, fsdp x1" in out and "FSDP gathered layers" in out
    assert "activation_checkpointing_policy (Qwen2DecoderLayer)" in out and "trainer.devices=-1" in out
    report = json.loads((tmp_path / "fsdp.json").read_text())
    assert report["config"] == [str(REFERENCE), str(FSDP)]
    assert report["setup"]["strategy"] == "fsdp" and report["setup"]["accumulate_grad_batches"] == 1
    assert resolve_fit_config(["-c", str(REFERENCE), "-c", str(FSDP)])["model"]["gradient_checkpointing"] is False
    expected = estimate_memory(resolve_fit_config(["-c", str(REFERENCE), "-c", str(FSDP)]))
    assert report["plan"] == json.loads(json.dumps(expected["plan"]))
    assert estimate("-c", REFERENCE, "-c", FSDP, "--trainer.devices", "4", "--json", tmp_path / "four.json") == 0
    four = json.loads((tmp_path / "four.json").read_text())
    assert four["plan"]["base_weights"]["bfloat16"] == 7_615_616_512 * 2 // 4
    assert "fsdp x4" in capsys.readouterr().out


def test_tiny_json_equals_the_plan_computed_directly(tmp_path, capsys):
    assert estimate("-c", TINY, "--json", tmp_path / "plan.json") == 0
    report = json.loads((tmp_path / "plan.json").read_text())
    setup = training_setup(read_fit_config(resolve_fit_config(["-c", str(TINY)])), None)
    arch, counts = count_parameters(tiny_config(), setup.lora)
    plan = plan_memory(arch, counts, setup)
    assert report["plan"]["total"] == plan.total and report["plan"]["peak"] == plan.peak
    assert (setup.micro_batch, setup.seq_len, setup.base_dtype, setup.accelerator) == (8, 256, "float32", "cpu")
    assert setup.lora.r == 8 and len(setup.lora.targets) == 7 and not setup.gradient_checkpointing
    assert plan.cuda_overhead == 0  # accelerator: cpu
    assert "total with checkpointing" in capsys.readouterr().out


def test_budget_too_small_exits_2_with_the_numbers(capsys):
    assert estimate("-c", REFERENCE, "--model_config", "qwen2.5-7b", "--budget_gb", "1") == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert "needs 19.39 GB" in line and "over the 1 GB budget" in line and "largest micro-batch" in line
    assert line.startswith("svdlora: error: budget_gb: ")
    assert "does NOT fit" in captured.out  # the table is still printed


def test_knobs_change_the_plan(tmp_path):
    def total(name: str, **changes) -> dict:
        config = write_config(tmp_path / f"{name}.yaml", REFERENCE, **changes)
        assert estimate("-c", config, "--model_config", "qwen2.5-7b", "--json", tmp_path / f"{name}.json") == 0
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


def test_command_line_options_override_the_config(tmp_path):
    """The same knobs as options after ``-c``, as ``svdlora fit`` takes them."""
    out = tmp_path / "plan.json"
    assert estimate("-c", REFERENCE, "--model.gradient_checkpointing", "false", "--data.max_length=512",
                    "--json", out) == 0  # fmt: skip
    report = json.loads(out.read_text())
    assert not report["setup"]["gradient_checkpointing"] and report["setup"]["seq_len"] == 512


def test_full_finetuning_of_the_7b_does_not_fit_32_gb(tmp_path, capsys):
    config = write_config(tmp_path / "full.yaml", REFERENCE, model={"lora": None})
    assert estimate("-c", config, "--model_config", "qwen2.5-7b") == 2
    assert "over the 32 GB budget" in capsys.readouterr().err


def test_model_config_file(tmp_path, capsys):
    fields = {**PRESETS["qwen2.5-7b"], "num_hidden_layers": 2}
    fields["torch_dtype"] = fields.pop("dtype")
    (tmp_path / "config.json").write_text(json.dumps(fields))
    assert estimate("-c", REFERENCE, "--model_config", tmp_path / "config.json") == 0
    assert "2 layers" in capsys.readouterr().out
    assert estimate("-c", REFERENCE, "--model_config", tmp_path) == 0  # a directory holding config.json


def test_plain_sections_and_class_defaults(tmp_path):
    """Absent fields take the classes' defaults, as in ``svdlora fit``."""
    config = {
        "model": {"lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}, "dtype": "bfloat16"},
        "data": {"max_length": 64},
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


def test_class_path_sections_are_refused_as_fit_refuses_them(tmp_path, capsys):
    """``svdlora fit`` takes its model and data classes' arguments directly, not as class_path/init_args."""
    path = tmp_path / "class_path.yaml"
    path.write_text(yaml.safe_dump({"model": {"class_path": "svdlora_pl.model.QwenLoRAModule", "init_args": {}}}))
    assert estimate("-c", path) == 2
    assert "model" in error_line(capsys.readouterr().err)
    from jsonargparse import ArgumentError

    with pytest.raises(ArgumentError):
        resolve_fit_config(["-c", str(path)])


# ------------------------------------------------------------------------------------- help and print_config
def test_help_lists_the_tool_options_with_their_doc_and_fits(capsys):
    from docstring_parser import parse

    with pytest.raises(SystemExit) as info:
        estimate("--help")
    assert info.value.code == 0
    printed = re.sub(r"\s", "", capsys.readouterr().out)
    params = {p.arg_name: p.description for p in parse(inspect.getdoc(estimate_memory)).params}
    assert list(params) == list(inspect.signature(estimate_memory).parameters)
    for name in ("budget_gb", "model_config"):
        assert f"--{name}" in printed and re.sub(r"\s", "", params[name]) in printed, name
    assert "--jsonJSONAlsowritetheplanasJSONtothisfile." in printed
    for option in ("-cCONFIG", "--print_config", "--model.lora", "--data.batch_size", "--trainer.devices"):
        assert option in printed, option
    assert "svdlorafitconfigononedevice" in printed  # the description


def test_print_config_then_config_gives_the_same_result(tmp_path, capsys):
    options = ["-c", REFERENCE, "-c", FSDP, "--budget_gb", "24", "--trainer.devices", "2"]
    with pytest.raises(SystemExit) as info:
        estimate(*options, "--print_config")
    assert info.value.code == 0
    printed = capsys.readouterr().out
    assert "budget_gb: 24.0" in printed and "model_config: null" in printed
    (tmp_path / "x.yaml").write_text(printed)
    assert estimate(*options, "--json", tmp_path / "direct.json") == 0
    assert estimate("-c", tmp_path / "x.yaml", "--json", tmp_path / "configured.json") == 0
    direct, configured = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("direct", "configured"))
    assert configured["config"] == [str(tmp_path / "x.yaml")]
    assert {**direct, "config": None} == {**configured, "config": None}
    assert direct["budget_bytes"] == 24e9 and direct["setup"]["world_size"] == 2


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (None, (), "File does not exist"),
        ("model: [unclosed", (), "Problems parsing config"),
        ("data:\n  batch_size: eight\n", (), "data.batch_size"),
        ("model:\n  gradient_checkpointing: 3\n", (), "model.gradient_checkpointing"),
        ("model:\n  lora:\n    rank: 4\n", (), "model.lora"),
        ("model:\n  lora:\n    r: 0\n", (), "svdlora: error: model.lora.r: must be a positive integer"),
        ("data:\n  batchsize: 2\n", (), "'data' does not accept option 'batchsize'"),
        ("model:\n  lora:\n    target_modules: [qkv]\n", (), "svdlora: error: model.lora.target_modules: 'qkv'"),
        ("model:\n  lora:\n    target_modules: [lm_head]\n", (), "'lm_head' is not modelled"),
        ("trainer:\n  precision: 8-bit\n", (), "trainer.precision"),
        ("trainer:\n  precision: transformer-engine\n", (), "trainer.precision: 'transformer-engine' is not"),
        ("trainer:\n  devices: 0\n", (), "trainer.devices: expected a count >= 1"),
        ("trainer:\n  strategy: deepspeed\n", (), "trainer.strategy: 'deepspeed' is not modelled"),
        ("data:\n  max_length: 256\n", ("--model_config", "qwen3-999b"), "neither a file nor a known preset"),
        ("model:\n  model_name_or_path: nobody/no-such-model\n", (), "no config.json for 'nobody/no-such-model'"),
        ("data:\n  max_length: 256\n", ("--budget_gb", "0"), "budget_gb: must be positive"),
        ("data:\n  max_length: 256\n", ("--budget_gb", "lots"), "budget_gb"),
        ("data:\n  max_length: 256\n", ("--no_such_option", "1"), "no_such_option"),
        ("data:\n  max_length: 256\n", ("--json", "{dir}"), "json: {dir} is a directory"),
        ("data:\n  max_length: 256\n", ("--json", "{dir}/config.yaml/plan.json"), "{dir}/config.yaml is a file"),
    ],
)
def test_bad_input_exits_2_in_one_line(tmp_path, capsys, content, args, message):
    config = tmp_path / "config.yaml"
    if content is not None:
        config.write_text(content)
    args = tuple(arg.format(dir=tmp_path) for arg in args)
    assert estimate("-c", config, *args) == 2
    captured = capsys.readouterr()
    line = error_line(captured.err)
    assert message.format(dir=tmp_path) in line, line
    assert captured.out == ""  # no table
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if content is None else ["config.yaml"])


def test_strategy_fsdp_with_devices_auto_plans_one_device_with_a_note(tmp_path, capsys):
    """Was an error; ``-c CONFIG -c configs/distributed/fsdp.yaml`` (devices -1) is planned instead: one device,
    an upper bound, and a note naming ``trainer.devices``."""
    config = tmp_path / "config.yaml"
    config.write_text("trainer:\n  strategy: fsdp\n")
    assert estimate("-c", config) == 0
    out = capsys.readouterr().out
    assert "fsdp x1" in out and "note: trainer.devices='auto': the device count is known at run time" in out
