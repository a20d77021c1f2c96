"""Reading and validating QA records from ``.json`` / ``.jsonl`` files.

A file holds records, either as a JSON list of objects (``.json``) or one object per line (``.jsonl``, blank
lines skipped). A record is one of:

* question/answer style: two string fields (names configurable) that become
  ``[system?, user: question, assistant: answer]``;
* chat style: a ``messages`` list of ``{"role": ..., "content": ...}`` objects (OpenAI style, roles
  ``system``/``user``/``assistant``) with at least one assistant message.

Every problem is reported as an :class:`~svdlora_pl.errors.InputError` with a one-line message that names the
file, the record (index, and line for JSONL) and the field, e.g.
``train.jsonl: record 3 (line 4): missing field 'answer'``. Record indices count from 0, lines from 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svdlora_pl.errors import InputError

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Fields:
    """Names of the record fields to read."""

    question: str = "question"
    answer: str = "answer"
    messages: str = "messages"


@dataclass
class QARecord:
    """One validated record: where it came from, the original object, and its chat messages."""

    source: str
    """The file it was read from."""
    where: str
    """Its location in the file, e.g. ``record 3 (line 4)``."""
    data: dict[str, Any]
    """The original object, extra fields included (written back with predictions)."""
    messages: list[dict[str, str]]
    """``{"role", "content"}`` messages, ending at the last assistant message."""

    @property
    def answer(self) -> str:
        """The reference answer: the content of the last assistant message."""
        return self.messages[-1]["content"]

    def error(self, message: str) -> InputError:
        """An :class:`InputError` located at this record."""
        return InputError(f"{self.source}: {self.where}: {message}")


def read_objects(path: str | Path) -> list[tuple[str, Any]]:
    """The raw JSON values of a ``.json`` (list) or ``.jsonl`` file, each with its location string."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl"):
        raise InputError(f"{path}: unsupported file type {path.suffix!r} (expected .json or .jsonl)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text (byte {err.start})") from None
    if suffix == ".jsonl":
        objects = []
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{line_no}: invalid JSON ({err.msg} at column {err.colno})") from None
            objects.append((f"record {len(objects)} (line {line_no})", value))
        return objects
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: invalid JSON at line {err.lineno} column {err.colno} ({err.msg})") from None
    if not isinstance(value, list):
        raise InputError(f"{path}: top level must be a JSON list of records, got {_type_name(value)}")
    return [(f"record {index}", item) for index, item in enumerate(value)]


def read_records(
    path: str | Path, fields: Fields, system_prompt: str | None = None, for_training: bool = True
) -> list[QARecord]:
    """Read and validate all records of a file (see the module docstring for the accepted shapes).

    ``for_training`` requires chat-style records to end with an assistant message; otherwise messages after the
    last assistant message are ignored. ``system_prompt`` is prepended to question/answer records only.
    """
    records = []
    for where, value in read_objects(path):
        record = QARecord(str(path), where, value, [])
        if not isinstance(value, dict):
            raise record.error(f"must be a JSON object, got {_type_name(value)}")
        if fields.messages in value:
            record.messages = _chat_messages(record, fields.messages, for_training)
        else:
            record.messages = _qa_messages(record, fields, system_prompt)
        records.append(record)
    if not records:
        raise InputError(f"{path}: no records")
    return records


def _qa_messages(record: QARecord, fields: Fields, system_prompt: str | None) -> list[dict[str, str]]:
    if fields.question not in record.data:
        raise record.error(f"missing field {fields.question!r} (or a {fields.messages!r} list)")
    question = _text(record, record.data, fields.question, f"field {fields.question!r}")
    answer = _text(record, record.data, fields.answer, f"field {fields.answer!r}")
    messages = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    return messages + [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def _chat_messages(record: QARecord, field: str, for_training: bool) -> list[dict[str, str]]:
    raw = record.data[field]
    if not isinstance(raw, list) or not raw:
        raise record.error(f"field {field!r} must be a non-empty list of {{'role', 'content'}} objects")
    messages = []
    for index, message in enumerate(raw):
        name = f"{field}[{index}]"
        if not isinstance(message, dict):
            raise record.error(f"{name} must be an object with 'role' and 'content', got {_type_name(message)}")
        role = message.get("role")
        if "role" not in message:
            raise record.error(f"{name}: missing field 'role'")
        if role not in ROLES:
            raise record.error(f"{name}.role: {role!r} is not one of {', '.join(ROLES)}")
        content = _text(record, message, "content", f"{name}.content", missing=f"{name}: missing field 'content'")
        if index == 0 and role == "assistant":
            raise record.error(f"{name}.role: a conversation cannot start with an assistant message")
        messages.append({"role": role, "content": content})
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise record.error(f"field {field!r} has no assistant message")
    if for_training and last != len(messages) - 1:
        raise record.error(
            f"field {field!r} must end with an assistant message for training (last role is {messages[-1]['role']!r})"
        )
    return messages[: last + 1]


def _text(record: QARecord, obj: dict, key: str, name: str, missing: str | None = None) -> str:
    if key not in obj:
        raise record.error(missing or f"missing field {key!r}")
    value = obj[key]
    if not isinstance(value, str):
        raise record.error(f"{name} must be a string, got {_type_name(value)}")
    if not value.strip():
        raise record.error(f"{name} is empty")
    return value


def _type_name(value: Any) -> str:
    name = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): None}.get(
        type(value), type(value).__name__
    )
    return "null" if name is None else f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
