"""Where an architecture comes from without a download: presets, config.json files and directories, the embedded
tiny model's recipe, the hub names of the 7B presets, and one-line errors naming the field."""

from __future__ import annotations

import json

import pytest

from svdlora_pl.embedded.tiny import TINY_MODEL
from svdlora_pl.errors import InputError
from svdlora_pl.memory.presets import PRESET_ALIASES, PRESETS, resolve_architecture


def test_presets_give_the_published_shapes():
    config, source = resolve_architecture("anything", model_config="qwen2.5-7b")
    assert source == "preset qwen2.5-7b"
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (3584, 28, 152064)
    math, _ = resolve_architecture("anything", model_config="qwen2.5-math-7b")
    assert math.max_position_embeddings == 4096 and math.num_hidden_layers == 28


def test_known_hub_names_fall_back_to_their_preset_without_network(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    config, source = resolve_architecture("Qwen/Qwen2.5-Math-7B-Instruct")
    assert source == "preset qwen2.5-math-7b, Qwen/Qwen2.5-Math-7B-Instruct is not in the Hugging Face cache"
    assert config.max_position_embeddings == 4096
    assert set(PRESET_ALIASES.values()) == set(PRESETS)


def test_embedded_tiny_model_from_its_recipe():
    config, source = resolve_architecture(TINY_MODEL)
    assert source == "embedded tiny" and config.model_type == "qwen2"
    assert resolve_architecture("ignored", model_config=TINY_MODEL)[1] == "embedded tiny"


def test_config_json_file_and_directory(tmp_path):
    fields = {**PRESETS["qwen2.5-7b"], "num_hidden_layers": 2}
    fields["torch_dtype"] = fields.pop("dtype")  # as hub config.json files spell it
    (tmp_path / "config.json").write_text(json.dumps(fields))
    from_file, source = resolve_architecture("ignored", model_config=str(tmp_path / "config.json"))
    assert from_file.num_hidden_layers == 2 and source == str(tmp_path / "config.json")
    from_dir, _ = resolve_architecture("ignored", model_config=str(tmp_path))
    assert from_dir.num_hidden_layers == 2
    local, source = resolve_architecture(str(tmp_path))  # model_name_or_path a local directory
    assert local.num_hidden_layers == 2 and source == str(tmp_path)


@pytest.mark.parametrize(
    ("name", "model_config", "message"),
    [
        ("x", "qwen3-999b", "model_config: 'qwen3-999b' is neither a file nor a known preset (qwen2.5-7b, "),
        ("nobody/no-such-model", None, "model.model_name_or_path: no config.json for 'nobody/no-such-model'"),
        ("x", "{dir}", "model_config: {dir} has no config.json"),
        ("x", "{dir}/bad.json", "model_config: {dir}/bad.json is not a model config.json"),
    ],
)
def test_unknown_architecture_is_one_line_naming_the_field(tmp_path, monkeypatch, name, model_config, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "bad.json").write_text('{"hidden_size": 8}')  # no model_type
    model_config = None if model_config is None else model_config.format(dir=tmp_path)
    with pytest.raises(InputError) as info:
        resolve_architecture(name, model_config=model_config)
    assert message.format(dir=tmp_path) in str(info.value) and "\n" not in str(info.value)
