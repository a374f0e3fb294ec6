"""OpenAI chat: ``messages`` with system/user/assistant/tool roles, plus ``tools``.

Assistant turns that call tools carry ``tool_calls`` (``{"id", "type": "function",
"function": {"name", "arguments"}}``, arguments a JSON string) and often no ``content``
key. Tool turns answer a call through ``tool_call_id``. ``developer`` is read as system.
Content given as a list of parts keeps its text parts joined; any other part (image,
audio) is a reason to reject, since the canonical record holds text only. The fine-tuning
``weight`` key on assistant turns is kept in ``meta["weights"]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import polars as pl

from datakit.formats._common import (
    Outcome,
    ReadOptions,
    WriteOptions,
    drop_none,
    dump_json,
    finish_record,
    nested,
    optional_text,
    read_each,
    shown,
)
from datakit.io import SourceRow
from datakit.record import RecordError, message, tool_call

NAME = "openai"
ROW_LOCAL = True  # each row converts on its own (so rows can be split across workers)
ROLE_OF = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
KNOWN_FIELDS = {"id", "messages", "tools"}
SCHEMA = pl.Schema(
    {
        "id": pl.String,
        "messages": pl.List(
            pl.Struct(
                {
                    "role": pl.String,
                    "content": pl.String,
                    "name": pl.String,
                    "tool_calls": pl.List(
                        pl.Struct(
                            {
                                "id": pl.String,
                                "type": pl.String,
                                "function": pl.Struct({"name": pl.String, "arguments": pl.String}),
                            }
                        )
                    ),
                    "tool_call_id": pl.String,
                }
            )
        ),
        "tools": pl.String,  # JSON array (free-form schemas) in tables
    }
)


def matches(row: dict[str, Any]) -> bool:
    turns = row.get("messages")
    if not (isinstance(turns, list) and turns and all(isinstance(t, dict) for t in turns)):
        return False
    return all(isinstance(t.get("role"), str) and t["role"] in ROLE_OF for t in turns)


def read(rows: Iterable[SourceRow], options: ReadOptions) -> Iterator[Outcome]:
    return read_each(rows, read_row, NAME)


def read_row(row: dict[str, Any]) -> list[dict[str, Any]]:
    turns = nested(row.get("messages"), "messages", list)
    if not turns:
        raise RecordError("empty conversation: field 'messages' is missing or empty")
    system = None
    messages = []
    weights = {}
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError(f"message {i}: expected an object, got {type(turn).__name__}")
        raw_role = turn.get("role")
        if raw_role is not None and not isinstance(raw_role, str):
            raise RecordError(f"message {i}: 'role' must be a string, got {type(raw_role).__name__}")
        role = ROLE_OF.get(raw_role)
        if role is None:
            raise RecordError(f"message {i}: unknown role {shown(raw_role)}")
        content = _text(turn.get("content"), i)
        if role == "system" and i == 0:
            system = content
            continue
        if "weight" in turn:
            weights[str(len(messages))] = turn["weight"]
        raw_calls = turn.get("tool_calls") or []
        if not isinstance(raw_calls, list):
            raise RecordError(f"message {i}: 'tool_calls' must be a list, got {type(raw_calls).__name__}")
        calls = [_read_call(c, i) for c in raw_calls] or None
        name = optional_text(turn.get("name"), f"message {i}: 'name'")
        call_id = optional_text(turn.get("tool_call_id"), f"message {i}: 'tool_call_id'")
        messages.append(message(role, content, name=name, tool_calls=calls, tool_call_id=call_id))
    meta: dict[str, Any] = {}
    if weights:
        meta["weights"] = weights
    return [finish_record(row, messages, system=system, meta=meta, known_fields=KNOWN_FIELDS)]


def _text(content: Any, i: int) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for n, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind != "text":
                raise RecordError(
                    f"message {i}: content part {n} is {shown(kind)}; the canonical record holds text only"
                )
            text = part.get("text", part.get("value"))  # LLaMA-Factory's v1 blocks call it "value"
            if not isinstance(text, str):
                raise RecordError(f"message {i}: content part {n} has no 'text' string")
            texts.append(text)
        return "".join(texts)
    raise RecordError(f"message {i}: content must be a string or a list of parts, got {type(content).__name__}")


def _read_call(call: Any, i: int) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise RecordError(f"message {i}: tool call without function name")
    arguments = function.get("arguments", "{}")
    if not isinstance(arguments, str):
        arguments = dump_json(arguments, f"message {i}: tool call arguments")
    return tool_call(function["name"], arguments, optional_text(call.get("id"), f"message {i}: tool call 'id'"))


def write(record: dict[str, Any], options: WriteOptions) -> dict[str, Any]:
    turns = []
    if record.get("system") is not None:
        turns.append({"role": "system", "content": record["system"]})
    pending_ids: list[str] = []  # ids of calls not yet answered, for tool turns that lack one
    weights = record["meta"].get("weights")
    weights = weights if isinstance(weights, dict) else {}
    for i, msg in enumerate(record["messages"]):
        turn: dict[str, Any] = {"role": msg["role"]}
        if msg["content"] is not None:
            turn["content"] = msg["content"]
        if msg.get("name") is not None:
            turn["name"] = msg["name"]
        if msg.get("tool_calls"):
            calls = []
            for n, c in enumerate(msg["tool_calls"]):
                call_id = c.get("id") or f"call_{i}_{n}"
                pending_ids.append(call_id)
                calls.append(
                    {"id": call_id, "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                )
            turn["tool_calls"] = calls
        if msg["role"] == "tool":
            call_id = msg.get("tool_call_id") or (pending_ids[0] if pending_ids else None)
            if call_id in pending_ids:
                pending_ids.remove(call_id)
            if call_id is not None:
                turn["tool_call_id"] = call_id
        weight = weights.get(str(i))
        if weight is not None:
            turn["weight"] = weight
        turns.append(turn)
    row = {
        "id": record["id"] if record["meta"].get("id_from") == "source" else None,
        "messages": turns,
        "tools": record.get("tools"),
    }
    return drop_none(row)
