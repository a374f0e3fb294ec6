"""The documented --lossy rules: how a record is reshaped to fit a format that cannot hold it.

Without --lossy such a record is rejected with the reason. With --lossy each rule that
fires is named in ``meta["lossy"]`` of the converted record and counted in the summary,
so nothing changes silently. Rules (applied in this order, only where the target needs):

1. ``tools_inlined``: a tool call becomes text in its assistant turn
   (``<tool_call>{"name": ..., "arguments": ...}</tool_call>``) and tool results become a
   user turn (``<tool_response>...</tool_response>``, consecutive results joined). The tool
   schemas are kept in ``meta["tools"]``.
2. ``tool_results_joined``: consecutive tool results (ShareGPT's observation alternation)
   are joined into one turn, separated by a newline.
3. ``system_folded``: a system turn after the start is prepended to the next user turn,
   separated by a blank line.
4. ``trailing_turns_trimmed``: turns after the last assistant turn are dropped (they
   teach nothing); their count is kept in ``meta["trimmed_turns"]``.
5. ``history_flattened`` (P3 only): earlier turns are rendered into the prompt as
   ``User: ...`` / ``Assistant: ...`` lines, so a single input/target pair remains.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from datakit.formats._common import dump_json
from datakit.record import RecordError, message


def _mark(record: dict[str, Any], rule: str, notes: Counter) -> None:
    done = record["meta"].get("lossy")
    record["meta"]["lossy"] = [*(done if isinstance(done, list) else []), rule]
    notes[f"lossy rule applied: {rule}"] += 1


def has_tools(record: dict[str, Any]) -> bool:
    return bool(record.get("tools")) or any(m["role"] == "tool" or m.get("tool_calls") for m in record["messages"])


def require_no_tools(record: dict[str, Any], lossy: bool, target: str, notes: Counter) -> dict[str, Any]:
    """For formats without tools: reject a record that uses them, or inline them (rule 1)."""
    if not has_tools(record):
        return record
    if not lossy:
        raise RecordError(f"{target} cannot hold tool calls, tool results or tool schemas (--lossy inlines them)")
    return inline_tools(record, notes)


def require_no_system_prompt(record: dict[str, Any], lossy: bool, target: str, notes: Counter) -> dict[str, Any]:
    """For formats without a system prompt: reject, or fold it into the first user turn (rule 3)."""
    if record.get("system") is None:
        return record
    if not lossy:
        raise RecordError(f"{target} has no system prompt (--lossy folds it into the first user turn)")
    first = record["messages"][0]
    folded = {**first, "content": f"{record['system']}\n\n{first['content']}"}
    record = {**record, "system": None, "messages": [folded, *record["messages"][1:]], "meta": dict(record["meta"])}
    _mark(record, "system_folded", notes)
    return record


def inline_tools(record: dict[str, Any], notes: Counter) -> dict[str, Any]:
    """Rule 1: tool calls and results as plain text turns."""
    out: list[dict[str, Any]] = []
    for msg in record["messages"]:
        if msg["role"] == "tool":
            text = f"<tool_response>\n{msg['content']}\n</tool_response>"
            if out and out[-1]["role"] == "user" and out[-1].get("_tool"):
                out[-1]["content"] += "\n" + text
            else:
                out.append({**message("user", text), "_tool": True})
        elif msg.get("tool_calls"):
            calls = [_call_text(c) for c in msg["tool_calls"]]
            text = "\n".join(([msg["content"]] if msg["content"] else []) + calls)
            out.append(message("assistant", text))
        else:
            out.append(msg)
    for m in out:
        m.pop("_tool", None)
    record = {**record, "messages": out, "meta": dict(record["meta"])}
    if record.get("tools"):
        record["meta"]["tools"] = record["tools"]
    record["tools"] = None
    _mark(record, "tools_inlined", notes)
    return record


def join_tool_results(record: dict[str, Any], notes: Counter) -> dict[str, Any]:
    """Rule 2: consecutive tool results become one."""
    out: list[dict[str, Any]] = []
    joined = False
    for msg in record["messages"]:
        if msg["role"] == "tool" and out and out[-1]["role"] == "tool":
            out[-1] = {**out[-1], "content": out[-1]["content"] + "\n" + msg["content"], "tool_call_id": None}
            joined = True
        else:
            out.append(msg)
    if not joined:
        return record
    record = {**record, "messages": out, "meta": dict(record["meta"])}
    _mark(record, "tool_results_joined", notes)
    return record


def fold_system_turns(record: dict[str, Any], notes: Counter) -> dict[str, Any]:
    """Rule 3: a system turn after the start goes into the next user turn."""
    if not any(m["role"] == "system" for m in record["messages"]):
        return record
    out: list[dict[str, Any]] = []
    pending: list[str] = []
    for msg in record["messages"]:
        if msg["role"] == "system":
            pending.append(msg["content"])
        elif pending and msg["role"] == "user":
            out.append({**msg, "content": "\n\n".join([*pending, msg["content"]])})
            pending = []
        else:
            out.append(msg)
    if pending:
        raise RecordError("a system turn after the last user turn cannot be folded into a user turn")
    record = {**record, "messages": out, "meta": dict(record["meta"])}
    _mark(record, "system_folded", notes)
    return record


def trim_trailing_turns(record: dict[str, Any], notes: Counter) -> dict[str, Any]:
    """Rule 4: drop turns after the last assistant turn."""
    messages = record["messages"]
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    if last == len(messages) - 1:
        return record
    record = {**record, "messages": messages[: last + 1], "meta": dict(record["meta"])}
    record["meta"]["trimmed_turns"] = len(messages) - last - 1
    _mark(record, "trailing_turns_trimmed", notes)
    return record


def flatten_history(record: dict[str, Any], notes: Counter) -> dict[str, Any]:
    """Rule 5: earlier turns rendered into the last prompt (for single-exchange formats)."""
    messages = record["messages"]
    if len(messages) <= 2:
        return record
    names = {"user": "User", "assistant": "Assistant", "tool": "Tool", "system": "System"}
    lines = [f"{names[m['role']]}: {m['content']}" for m in messages[:-1]]
    prompt = "\n".join(lines) + "\nAssistant:"
    record = {**record, "messages": [message("user", prompt), messages[-1]], "meta": dict(record["meta"])}
    _mark(record, "history_flattened", notes)
    return record


def _call_text(call: dict[str, Any]) -> str:
    payload = {"name": call["name"], "arguments": _loads(call["arguments"])}
    return f"<tool_call>{dump_json(payload, 'tool call arguments')}</tool_call>"


def _loads(arguments: str | None) -> Any:
    try:
        return json.loads(arguments) if arguments else {}
    except (json.JSONDecodeError, RecursionError):  # not JSON, or too deep to parse: the text as given
        return arguments
