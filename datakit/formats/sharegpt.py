"""ShareGPT: a ``conversations`` list of ``{"from", "value"}`` turns.

Roles: ``human``, ``gpt``, ``system``, ``function_call`` (the value is a JSON call
``{"name": ..., "arguments": {...}}`` or a list of them) and ``observation`` (a tool
result). ``user``/``assistant`` are accepted as aliases, and the ``messages`` variant with
``role``/``content`` keys reads the same. A top-level ``system`` and ``tools`` (a JSON
string) are optional; a system turn inside the list is allowed in first position.
Preference rows (LLaMA-Factory's DPO layout with ``chosen``/``rejected``) read with the
chosen reply as the last assistant turn and the rejected one in ``meta["rejected"]``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import polars as pl

from datakit.formats import lossy
from datakit.formats._common import (
    Outcome,
    ReadOptions,
    WriteOptions,
    drop_none,
    dump_json,
    field_text,
    finish_record,
    nested,
    read_each,
    shown,
)
from datakit.io import SourceRow
from datakit.record import RecordError, check_alternation, message, tool_call

NAME = "sharegpt"
ROW_LOCAL = True  # each row converts on its own (so rows can be split across workers)
ROLE_OF = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "observation": "tool",
    "tool": "tool",
    "function_call": "function_call",
}
SHAREGPT_ROLE = {"user": "human", "assistant": "gpt", "tool": "observation"}
SHAREGPT_ONLY_ROLES = {"human", "gpt", "function_call", "observation"}
KNOWN_FIELDS = {"id", "conversations", "messages", "system", "tools", "chosen", "rejected"}
SCHEMA = pl.Schema(
    {
        "id": pl.String,
        "conversations": pl.List(pl.Struct({"from": pl.String, "value": pl.String})),
        "system": pl.String,
        "tools": pl.String,
    }
)


def matches(row: dict[str, Any]) -> bool:
    if isinstance(row.get("conversations"), (list, str)):
        return True
    turns = row.get("messages")
    if isinstance(turns, list) and turns and isinstance(turns[0], dict):
        if "from" in turns[0]:
            return True
        return any(isinstance(t, dict) and _is_str(t.get("role")) in SHAREGPT_ONLY_ROLES for t in turns)
    return False


def read(rows: Iterable[SourceRow], options: ReadOptions) -> Iterator[Outcome]:
    return read_each(rows, read_row, NAME)


def read_row(row: dict[str, Any]) -> list[dict[str, Any]]:
    key = "conversations" if "conversations" in row else "messages"
    turns = nested(row.get(key), key, list)
    if not turns:
        raise RecordError(f"empty conversation: field {key!r} is missing or empty")
    role_key, content_key = (
        ("from", "value") if isinstance(turns[0], dict) and "from" in turns[0] else ("role", "content")
    )
    system = field_text(row, "system") or None
    meta: dict[str, Any] = {}
    if key == "messages":
        meta["sharegpt_variant"] = "messages"
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError(f"turn {i}: expected an object, got {type(turn).__name__}")
        raw_role = turn.get(role_key)
        if raw_role is not None and not isinstance(raw_role, str):
            raise RecordError(f"turn {i}: {role_key!r} must be a string, got {type(raw_role).__name__}")
        role = ROLE_OF.get(raw_role)
        if role is None:
            raise RecordError(f"turn {i}: unknown role {shown(raw_role)}")
        content = turn.get(content_key)
        if content is not None and not isinstance(content, str):
            raise RecordError(f"turn {i}: {content_key!r} must be a string, got {type(content).__name__}")
        if role == "system" and i == 0:
            if system is not None and system != content:
                raise RecordError("both a top-level system and a different system turn in first position")
            system = content
        elif role == "function_call":
            messages.append(message("assistant", None, tool_calls=_parse_calls(content, i)))
        else:
            messages.append(message(role, content))
    if "chosen" in row:
        chosen = row["chosen"]
        content = chosen.get(content_key) if isinstance(chosen, dict) else chosen
        if not isinstance(content, str):
            raise RecordError("field 'chosen' must be a turn object or a string")
        messages.append(message("assistant", content))
        rejected = row.get("rejected")
        meta["rejected"] = rejected.get(content_key) if isinstance(rejected, dict) else rejected
    return [finish_record(row, messages, system=system, meta=meta, known_fields=KNOWN_FIELDS)]


def _parse_calls(value: str | None, i: int) -> list[dict[str, Any]]:
    try:
        parsed = json.loads(value or "")
    except json.JSONDecodeError as exc:
        raise RecordError(f"turn {i}: function_call value is not JSON ({exc})") from None
    except RecursionError:
        raise RecordError(f"turn {i}: function_call value is nested too deeply") from None
    calls = parsed if isinstance(parsed, list) else [parsed]
    out = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise RecordError(f"turn {i}: function_call must be {{'name': ..., 'arguments': ...}}")
        arguments = call.get("arguments", {})
        if not isinstance(arguments, str):
            arguments = dump_json(arguments, f"turn {i}: function_call arguments")
        out.append(tool_call(call["name"], arguments))
    return out


def write(record: dict[str, Any], options: WriteOptions) -> dict[str, Any]:
    if options.lossy:
        record = lossy.fold_system_turns(record, options.notes)
        record = lossy.join_tool_results(record, options.notes)
        record = lossy.trim_trailing_turns(record, options.notes)
    check_alternation(record, "ShareGPT")
    turns = []
    for i, msg in enumerate(record["messages"]):
        if msg["role"] == "assistant" and msg.get("tool_calls"):
            if msg["content"]:
                raise RecordError(f"message {i}: ShareGPT's function_call turn cannot also hold text")
            calls = [{"name": c["name"], "arguments": _arguments(c["arguments"])} for c in msg["tool_calls"]]
            value = dump_json(calls[0] if len(calls) == 1 else calls, f"message {i}: tool call arguments")
            turns.append({"from": "function_call", "value": value})
        else:
            turns.append({"from": SHAREGPT_ROLE[msg["role"]], "value": msg["content"]})
    tools = record.get("tools")
    row = {
        "id": record["id"] if record["meta"].get("id_from") == "source" else None,
        "conversations": turns,
        "system": record.get("system"),
        "tools": dump_json(tools, "tools") if tools else None,
    }
    return drop_none(row)


def _arguments(arguments: str | None) -> Any:
    try:
        return json.loads(arguments) if arguments else {}
    except (json.JSONDecodeError, RecursionError):
        return arguments  # not JSON (or nested too deeply to parse): keep the text as given


def _is_str(value: Any) -> str | None:
    """The value if it is a string (so it can be looked up in a set), else None."""
    return value if isinstance(value, str) else None
