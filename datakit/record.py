"""The canonical conversation record that every datakit step reads and writes.

In Python a record is a plain dict with five keys::

    {
        "id": "3f2a...",                  # from the source, or a content hash
        "system": "You are ..." | None,   # the leading system prompt, if any
        "messages": [                     # user / assistant / tool turns (system only mid-chat)
            {"role": "user", "content": "Hi", "name": None,
             "tool_calls": None, "tool_call_id": None},
            ...
        ],
        "tools": [ {json schema}, ... ] | None,
        "meta": {"source": {...}, ...},   # whatever the source had that the fields above cannot hold
    }

On disk (Parquet, or a polars frame) the schema is fixed: ``tools`` and ``meta``
are JSON strings there, because JSON schemas and source metadata have no fixed shape.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import orjson
import polars as pl
import xxhash

from datakit.errors import DatakitError

ROLES = ("system", "user", "assistant", "tool")

TOOL_CALL_DTYPE = pl.Struct({"id": pl.String, "name": pl.String, "arguments": pl.String})
MESSAGE_DTYPE = pl.Struct(
    {
        "role": pl.String,
        "content": pl.String,
        "name": pl.String,
        "tool_calls": pl.List(TOOL_CALL_DTYPE),
        "tool_call_id": pl.String,
    }
)
CANONICAL_SCHEMA = pl.Schema(
    {
        "id": pl.String,
        "system": pl.String,
        "messages": pl.List(MESSAGE_DTYPE),
        "tools": pl.String,  # JSON array of tool schemas, or null
        "meta": pl.String,  # JSON object
    }
)


class RecordError(DatakitError, ValueError):
    """A record that cannot be read or written; the message is the reason."""


def message(
    role: str,
    content: str | None,
    *,
    name: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    tool_call_id: str | None = None,
) -> dict[str, Any]:
    """One canonical message with every key present, so all messages share a shape."""
    return {
        "role": role,
        "content": content,
        "name": name,
        "tool_calls": tool_calls,
        "tool_call_id": tool_call_id,
    }


def tool_call(name: str, arguments: str, id: str | None = None) -> dict[str, Any]:
    """One canonical tool call; ``arguments`` is a JSON string, as in the OpenAI API."""
    return {"id": id, "name": name, "arguments": arguments}


def content_id(system: str | None, messages: list[dict], tools: list | None) -> str:
    """A stable id from the conversation's content (the same content gives the same id)."""
    try:
        payload = orjson.dumps([system, messages, tools])
    except orjson.JSONEncodeError as exc:  # nested deeper than JSON writers go, or not JSON at all
        raise RecordError(f"the conversation cannot be written as JSON ({exc})") from None
    return xxhash.xxh3_128_hexdigest(payload)


def new_record(
    messages: list[dict[str, Any]],
    *,
    system: str | None = None,
    tools: list | None = None,
    meta: dict[str, Any] | None = None,
    id: str | None = None,
) -> dict[str, Any]:
    """Build a canonical record; without a source id the id is a content hash."""
    meta = dict(meta or {})
    if id is None:
        id = content_id(system, messages, tools)
        meta.setdefault("id_from", "content")
    else:
        meta.setdefault("id_from", "source")
    return {"id": id, "system": system, "messages": messages, "tools": tools, "meta": meta}


def validate(record: dict[str, Any]) -> None:
    """Raise RecordError with the reason if the record is not a usable conversation."""
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RecordError("empty conversation: no messages")
    if record.get("system") is not None and not isinstance(record["system"], str):
        raise RecordError(f"system must be a string, got {type(record['system']).__name__}")
    has_assistant = False
    first_turn = None
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if role not in ROLES:
            raise RecordError(f"message {i}: unknown role {role!r} (expected one of {', '.join(ROLES)})")
        content = msg.get("content")
        if content is not None and not isinstance(content, str):
            raise RecordError(f"message {i}: content must be a string, got {type(content).__name__}")
        if role == "assistant":
            has_assistant = True
            if content is None and not msg.get("tool_calls"):
                raise RecordError(f"message {i}: assistant turn has neither content nor tool calls")
        elif content is None:
            raise RecordError(f"message {i}: {role} turn has no content")
        if first_turn is None and role != "system":
            first_turn = role
    if not has_assistant:
        raise RecordError("no assistant turn")
    if first_turn != "user":
        raise RecordError(f"conversation starts with a {first_turn} turn, not a user turn")


def check_alternation(record: dict[str, Any], target: str) -> None:
    """Pairs-based formats (Alpaca, ShareGPT, P3) need user/assistant strictly alternating.

    Tool results count as the 'user side' and tool calls as the 'assistant side', as in
    LLaMA-Factory's ShareGPT layout (human/observation at odd, gpt/function_call at even).
    """
    for i, msg in enumerate(record["messages"]):
        expected = ("user", "tool") if i % 2 == 0 else ("assistant",)
        if msg["role"] not in expected:
            if msg["role"] == "system":
                raise RecordError(f"message {i}: a system turn after the start cannot be held by {target}")
            raise RecordError(
                f"message {i}: roles out of order for {target} (expected {' or '.join(expected)}, got {msg['role']})"
            )
    if record["messages"][-1]["role"] != "assistant":
        raise RecordError(f"{target} needs the conversation to end on an assistant turn")


# --- frames ---------------------------------------------------------------------------


def to_storage_row(record: dict[str, Any]) -> dict[str, Any]:
    """A record as a row of CANONICAL_SCHEMA (tools and meta as JSON strings)."""
    tools = record.get("tools")
    return {
        "id": record["id"],
        "system": record.get("system"),
        "messages": record["messages"],
        "tools": None if tools is None else orjson.dumps(tools).decode(),
        "meta": orjson.dumps(record.get("meta") or {}).decode(),
    }


def from_storage_row(row: dict[str, Any]) -> dict[str, Any]:
    """The inverse of to_storage_row; accepts tools/meta as JSON strings or as objects."""
    tools = row.get("tools")
    meta = row.get("meta")
    if isinstance(tools, str):
        tools = orjson.loads(tools) if tools else None
    if isinstance(meta, str):
        meta = orjson.loads(meta) if meta else {}
    messages = [
        message(
            m.get("role"),
            m.get("content"),
            name=m.get("name"),
            tool_calls=[tool_call(c.get("name"), c.get("arguments"), c.get("id")) for c in m["tool_calls"]]
            if m.get("tool_calls")
            else None,
            tool_call_id=m.get("tool_call_id"),
        )
        for m in (row.get("messages") or [])
    ]
    return {
        "id": row.get("id"),
        "system": row.get("system") or None,  # an empty system prompt is no system prompt
        "messages": messages,
        "tools": tools,
        "meta": meta or {},
    }


def to_frame(records: Iterable[dict[str, Any]]) -> pl.DataFrame:
    """Records as a polars frame with the fixed canonical schema."""
    return pl.DataFrame([to_storage_row(r) for r in records], schema=CANONICAL_SCHEMA)


def from_frame(frame: pl.DataFrame) -> Iterator[dict[str, Any]]:
    """Records back out of a canonical frame."""
    for row in frame.iter_rows(named=True):
        yield from_storage_row(row)


def meta_scores(frame: pl.DataFrame, key: str) -> np.ndarray:
    """``meta[key]`` of every record of a canonical frame as a float; NaN where it is missing
    or not a number (so a record without a score ranks last)."""
    out = np.full(frame.height, np.nan)
    for i, meta in enumerate(frame["meta"].to_list()):
        with contextlib.suppress(TypeError, ValueError):  # missing or not a number: stays NaN
            out[i] = float(orjson.loads(meta or "{}").get(key))
    return out


def conversation_text(record: dict[str, Any], roles: Iterable[str] = ("user", "assistant")) -> str:
    """The text of the chosen roles, one turn per line block; used for hashing and stats."""
    wanted = set(roles)
    parts = [record["system"]] if "system" in wanted and record.get("system") else []
    parts += [m["content"] or "" for m in record["messages"] if m["role"] in wanted]
    return "\n\n".join(parts)


@contextlib.contextmanager
def few_gc_passes() -> Iterator[None]:
    """Collect reference cycles less often while records are made by the thousand.

    Records hold no reference cycles, yet each is several containers, so Python's default
    (a young-generation pass every 700 new containers, and older ones over every live record
    every so often) spends about a fifth of the time it takes to read or convert rows on passes
    that free nothing. Measured (Intel Xeon with AMX, 2 cores): reading blocks of an Alpaca
    JSON-lines file into canonical records and encoding them again took 20.5 us a record with
    the defaults and 16.9 with a pass every 50,000 new containers.

    The threshold is the whole process's: the first of overlapping users (threads running
    datakit at once) sets it and the last one out puts back what it was."""
    with _gc_users_lock:
        if not _gc_users:
            _gc_users.append(gc.get_threshold())  # the threshold to put back
            gc.set_threshold(50_000, *_gc_users[0][1:])
        _gc_users.append(None)
    try:
        yield
    finally:
        with _gc_users_lock:
            _gc_users.pop()
            if len(_gc_users) == 1:
                gc.set_threshold(*_gc_users.pop())


_gc_users: list = []  # while few_gc_passes is in use: the threshold before it, then one entry a user
_gc_users_lock = threading.Lock()
