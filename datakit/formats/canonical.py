"""datakit's own record (see datakit.record): the format every step reads and writes.

In JSON and JSONL ``tools`` and ``meta`` are written as JSON values; in Parquet and CSV
they are JSON strings, so the table schema stays fixed (CANONICAL_SCHEMA).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from datakit.formats._common import Outcome, ReadOptions, WriteOptions, nested, optional_text, read_each, shown
from datakit.io import SourceRow
from datakit.record import CANONICAL_SCHEMA, ROLES, RecordError, from_storage_row

NAME = "canonical"
ROW_LOCAL = True  # each row converts on its own (so rows can be split across workers)
SCHEMA = CANONICAL_SCHEMA


def matches(row: dict[str, Any]) -> bool:
    return set(CANONICAL_SCHEMA) <= row.keys()


def read(rows: Iterable[SourceRow], options: ReadOptions) -> Iterator[Outcome]:
    return read_each(rows, read_row, NAME)


def read_row(row: dict[str, Any]) -> list[dict[str, Any]]:
    if not isinstance(row.get("id"), str) or not row["id"]:
        raise RecordError("field 'id' must be a non-empty string")
    messages = nested(row.get("messages"), "messages", list) or []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RecordError(f"message {i}: expected an object, got {type(m).__name__}")
        for key in ("role", "name", "tool_call_id"):
            optional_text(m.get(key), f"message {i}: {key!r}")
        if m.get("role") not in ROLES:
            raise RecordError(f"message {i}: unknown role {shown(m.get('role'))} (expected one of {', '.join(ROLES)})")
        calls = m.get("tool_calls")
        if calls is not None and not isinstance(calls, list):
            raise RecordError(f"message {i}: 'tool_calls' must be a list, got {type(calls).__name__}")
        for n, call in enumerate(calls or []):
            if not isinstance(call, dict):
                raise RecordError(f"message {i}: tool call {n} must be an object, got {type(call).__name__}")
            for key in ("id", "name", "arguments"):
                optional_text(call.get(key), f"message {i}: tool call {n}: {key!r}")
    tools = nested(row.get("tools"), "tools", list)
    meta = nested(row.get("meta"), "meta", dict)
    return [from_storage_row({**row, "messages": messages, "tools": tools, "meta": meta})]


def write(record: dict[str, Any], options: WriteOptions) -> dict[str, Any]:
    return record
