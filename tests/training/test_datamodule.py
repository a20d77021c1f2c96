"""Tests for QADataModule: record files, chat-template masking, length policy, batches, shuffling."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from builders import CHAT, QA, setup_split, write_jsonl

from svdlora_pl.embedded.datasets import BUNDLED_TRAIN, BUNDLED_VAL
from svdlora_pl.errors import InputError
from svdlora_pl.training.datamodule import QADataModule
from svdlora_pl.training.tokenization import IGNORE_INDEX


def supervised_runs(labels: torch.Tensor) -> list[list[int]]:
    """Contiguous runs of labelled (not -100) token ids."""
    runs, current = [], []
    for label in labels.tolist():
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(label)
    return runs + ([current] if current else [])


def test_bundled_data_loads_and_tokenizes(caplog):
    dm = QADataModule()
    with caplog.at_level(logging.INFO, logger="svdlora_pl.training.datamodule"):
        dm.setup("fit")
    n_train = len([line for line in BUNDLED_TRAIN.read_text().splitlines() if line.strip()])
    n_val = len([line for line in BUNDLED_VAL.read_text().splitlines() if line.strip()])
    assert dm.stats["train"].records == n_train and dm.stats["val"].records == n_val
    assert dm.stats["train"].samples + dm.stats["train"].dropped == n_train
    assert 0 < dm.stats["train"].longest <= 512
    assert any(m.startswith(f"train: {dm.stats['train'].samples} samples, 0 truncated") for m in caplog.messages)

    train_batch = next(iter(dm.train_dataloader()))
    assert set(train_batch) == {"input_ids", "attention_mask", "labels"}
    assert train_batch["input_ids"].shape[0] == 4
    val_batch = next(iter(dm.val_dataloader()))
    assert {"prompt_input_ids", "prompt_attention_mask", "answers", "records"} <= set(val_batch)
    assert "final_answer" in val_batch["records"][0]
    # test and predict default to the validation set
    assert dm.dataset("test") is dm.dataset("val") and dm.dataset("predict") is dm.dataset("val")


@pytest.mark.parametrize("system_prompt", [None, "You solve probability problems."])
def test_prompt_is_masked_and_answer_supervised(tmp_path, tiny_tokenizer, system_prompt):
    dm = setup_split(write_jsonl(tmp_path / "qa.jsonl", [QA]), system_prompt=system_prompt)
    (sample,) = dm.dataset("train")
    ids, labels = sample.input_ids, sample.labels
    prompt = tiny_tokenizer.decode(ids[: sample.prompt_length])
    expected_system = system_prompt or "You are a helpful assistant."
    assert prompt == (
        f"<|im_start|>system\n{expected_system}<|im_end|>\n"
        f"<|im_start|>user\n{QA['question']}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (labels[: sample.prompt_length] == IGNORE_INDEX).all()
    assert (labels[sample.prompt_length :] == ids[sample.prompt_length :]).all()
    assert tiny_tokenizer.decode(ids[labels != IGNORE_INDEX]) == QA["answer"] + "<|im_end|>\n"
    assert ids[labels != IGNORE_INDEX].tolist().count(tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")) == 1


def test_every_assistant_turn_is_supervised(tmp_path, tiny_tokenizer):
    dm = setup_split(write_jsonl(tmp_path / "chat.jsonl", [CHAT]))
    (sample,) = dm.dataset("train")
    runs = [tiny_tokenizer.decode(run) for run in supervised_runs(sample.labels)]
    assert runs == ["1/6.<|im_end|>\n", "1/2.<|im_end|>\n"]
    assert tiny_tokenizer.decode(sample.input_ids) == tiny_tokenizer.apply_chat_template(
        CHAT["messages"], tokenize=False
    )
    # the generation prompt is the conversation up to the last assistant header
    assert tiny_tokenizer.decode(sample.input_ids[: sample.prompt_length]) == tiny_tokenizer.apply_chat_template(
        CHAT["messages"][:-1], tokenize=False, add_generation_prompt=True
    )


def test_eval_split_ignores_messages_after_last_assistant(tmp_path):
    record = {"messages": CHAT["messages"] + [{"role": "user", "content": "Thanks!"}]}
    dm = setup_split(write_jsonl(tmp_path / "chat.jsonl", [record]), split="predict")
    (sample,) = dm.dataset("predict")
    assert sample.record.answer == "1/2."
    assert sample.record.data == record


def test_json_and_jsonl_give_the_same_samples(tmp_path):
    records = [QA, CHAT]
    (tmp_path / "d.json").write_text(json.dumps(records, indent=2), encoding="utf-8")
    (tmp_path / "d.jsonl").write_text(json.dumps(QA) + "\n\n" + json.dumps(CHAT) + "\n", encoding="utf-8")
    a = setup_split(tmp_path / "d.json").dataset("train")
    b = setup_split(tmp_path / "d.jsonl").dataset("train")
    assert len(a) == len(b) == 2
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.input_ids, y.input_ids) and torch.equal(x.labels, y.labels)
    assert b[1].record.where == "record 1 (line 3)"


def _bad(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


ERROR_CASES = {
    "not_found": ("absent.jsonl", None, ["absent.jsonl", "file not found"]),
    "wrong_suffix": ("data.csv", "q,a\n", ["data.csv", ".csv"]),
    "jsonl_invalid": ("bad.jsonl", _bad(QA, '{"question": "x",'), ["bad.jsonl:2: invalid JSON"]),
    "json_invalid": ("bad.json", '[\n{"question": "x"\n', ["bad.json", "invalid JSON at line 3"]),
    "json_not_list": ("bad.json", json.dumps(QA), ["bad.json", "top level", "list"]),
    "jsonl_not_object": ("bad.jsonl", _bad(QA, [1, 2]), ["bad.jsonl", "record 1 (line 2)", "object"]),
    "json_not_object": ("bad.json", json.dumps([QA, "text"]), ["bad.json", "record 1", "object"]),
    "missing_answer": (
        "bad.jsonl",
        _bad(QA, QA, QA, {"question": "q?"}),
        ["bad.jsonl: record 3 (line 4): missing field 'answer'"],
    ),
    "missing_question": ("bad.jsonl", _bad({"answer": "a"}), ["bad.jsonl", "record 0 (line 1)", "'question'"]),
    "answer_not_string": ("bad.jsonl", _bad({"question": "q", "answer": 5}), ["bad.jsonl", "'answer'", "string"]),
    "question_empty": ("bad.jsonl", _bad({"question": "  ", "answer": "a"}), ["bad.jsonl", "'question'", "empty"]),
    "messages_not_list": ("bad.jsonl", _bad({"messages": "hi"}), ["bad.jsonl", "'messages'", "list"]),
    "message_not_object": ("bad.jsonl", _bad({"messages": ["hi"]}), ["bad.jsonl", "messages[0]", "object"]),
    "bad_role": (
        "bad.jsonl",
        _bad({"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}),
        ["bad.jsonl", "record 0 (line 1)", "messages[1].role", "'bot'"],
    ),
    "missing_role": ("bad.jsonl", _bad({"messages": [{"content": "q"}]}), ["bad.jsonl", "messages[0]", "'role'"]),
    "missing_content": (
        "bad.jsonl",
        _bad({"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]}),
        ["bad.jsonl", "messages[1]", "missing field 'content'"],
    ),
    "content_not_string": (
        "bad.jsonl",
        _bad({"messages": [{"role": "user", "content": ["q"]}, {"role": "assistant", "content": "a"}]}),
        ["bad.jsonl", "messages[0].content", "string"],
    ),
    "no_assistant": (
        "bad.jsonl",
        _bad({"messages": [{"role": "user", "content": "q"}]}),
        ["bad.jsonl", "'messages'", "no assistant message"],
    ),
    "assistant_first": (
        "bad.jsonl",
        _bad({"messages": [{"role": "assistant", "content": "a"}]}),
        ["bad.jsonl", "messages[0].role", "assistant"],
    ),
    "train_ends_with_user": (
        "bad.jsonl",
        _bad({"messages": CHAT["messages"] + [{"role": "user", "content": "more?"}]}),
        ["bad.jsonl", "record 0 (line 1)", "'messages'", "end with an assistant message"],
    ),
    "empty_jsonl": ("empty.jsonl", "\n\n", ["empty.jsonl: no records"]),
    "empty_json": ("empty.json", "[]", ["empty.json: no records"]),
}


@pytest.mark.parametrize(("name", "content", "expected"), list(ERROR_CASES.values()), ids=list(ERROR_CASES))
def test_bad_input_gives_one_line_input_error(tmp_path, name, content, expected):
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError) as info:
        setup_split(path)
    message = str(info.value)
    assert "\n" not in message
    for part in expected:
        assert part in message


def test_custom_field_names(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"q": "Why?", "a": "Because."}])
    dm = setup_split(path, question_field="q", answer_field="a")
    assert dm.dataset("train")[0].record.answer == "Because."
    with pytest.raises(InputError, match=r"qa.jsonl: record 0 \(line 1\): missing field 'question'"):
        setup_split(path)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"q": "Why?"}])
    with pytest.raises(InputError, match="bad.jsonl: record 0 \\(line 1\\): missing field 'a'"):
        setup_split(bad, question_field="q", answer_field="a")


def _length_records() -> list[dict]:
    short = [{"question": f"Q{i}?", "answer": "A."} for i in range(3)]
    long_answer = [{"question": "Q?", "answer": "word " * 200} for _ in range(2)]
    long_question = [{"question": "word " * 200, "answer": "A."}]
    return short + long_answer + long_question


def test_drop_and_truncate_counts(tmp_path):
    path = write_jsonl(tmp_path / "len.jsonl", _length_records())
    dropped = setup_split(path, max_length=64, overlong="drop").stats["train"]
    assert (dropped.records, dropped.samples, dropped.truncated, dropped.dropped) == (6, 3, 0, 3)
    assert dropped.longest < 64
    truncated = setup_split(path, max_length=64, overlong="truncate")
    stats = truncated.stats["train"]
    # the long question leaves no supervised token after truncation, so it is dropped
    assert (stats.records, stats.samples, stats.truncated, stats.dropped) == (6, 5, 3, 1)
    assert stats.longest == 64
    assert all(len(s.input_ids) <= 64 and (s.labels != IGNORE_INDEX).any() for s in truncated.dataset("train"))


def test_eval_split_drops_samples_whose_prompt_does_not_fit(tmp_path):
    turns = [("user", "Q?"), ("assistant", "A."), ("user", "word " * 40), ("assistant", "B.")]
    record = {"messages": [{"role": role, "content": content} for role, content in turns]}
    path = write_jsonl(tmp_path / "len.jsonl", [record, QA])
    # at 80 tokens the first assistant turn fits but the last prompt does not: fine for training, not for eval
    train = setup_split(path, max_length=80, overlong="truncate").stats["train"]
    assert (train.samples, train.truncated, train.dropped) == (2, 1, 0)
    val = setup_split(path, split="val", max_length=80, overlong="truncate").stats["val"]
    assert (val.samples, val.truncated, val.dropped) == (1, 1, 1)


def test_all_records_dropped_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "long.jsonl", _length_records()[3:])
    with pytest.raises(InputError, match="long.jsonl: all 3 records were dropped by the length policy"):
        setup_split(path, max_length=16)


def test_val_fraction_split_is_seeded_and_disjoint(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"Q{i}?", "answer": f"A{i}."} for i in range(20)])

    def split(seed):
        dm = QADataModule(train_file=str(path), val_fraction=0.25, seed=seed)
        dm.setup("fit")
        return (
            [s.record.data["question"] for s in dm.dataset("train")],
            [s.record.data["question"] for s in dm.dataset("val")],
        )

    train, val = split(0)
    assert len(val) == 5 and len(train) == 15
    assert not set(train) & set(val) and len(set(train) | set(val)) == 20
    assert split(0) == (train, val)
    assert set(split(1)[1]) != set(val)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_fraction": 1.0}, "data.val_fraction: must be in"),
        ({"val_fraction": -0.1}, "data.val_fraction: must be in"),
        ({"val_fraction": 0.1, "val_file": "__VAL__"}, "cannot be combined with data.val_file"),
        ({"max_length": 0}, "data.max_length"),
        ({"batch_size": 0}, "data.batch_size"),
        ({"val_file": "nowhere.jsonl"}, "nowhere.jsonl: file not found"),
    ],
)
def test_bad_arguments(kwargs, match):
    kwargs = {k: str(BUNDLED_VAL) if v == "__VAL__" else v for k, v in kwargs.items()}
    with pytest.raises(InputError, match=match):
        QADataModule(**kwargs)


def test_no_validation_set_without_val_file(tmp_path):
    dm = QADataModule(train_file=str(write_jsonl(tmp_path / "qa.jsonl", [QA])))
    dm.setup("fit")
    assert dm.dataset("val") is None and dm.val_dataloader() == []
    with pytest.raises(InputError, match="data.test_file"):
        dm.test_dataloader()


def test_loaders_do_not_consume_the_global_rng():
    dm = QADataModule()
    dm.setup("fit")
    train, val = dm.train_dataloader(), dm.val_dataloader()
    state = torch.get_rng_state()
    next(iter(train))
    next(iter(val))
    assert torch.equal(torch.get_rng_state(), state)
    # the train order is the sampler's, identical for a freshly built loader
    again = QADataModule()
    again.setup("fit")
    assert list(train.sampler) == list(again.train_dataloader().sampler)
