"""OpenAssistant (oasst1/oasst2): message trees, as the nested export or the flat table.

- Tree export: one JSON object per tree, ``{"message_tree_id", "prompt": {message...,
  "replies": [...]}}``; null fields are left out.
- Flat table: one row per message with ``message_id``, ``parent_id``, ``message_tree_id``,
  ``role``, ``text``, ``rank``, ``lang``, ``deleted``, ``synthetic``, ``review_result``,
  ``labels`` (the Hugging Face oasst1 layout).

Roles ``prompter``/``assistant`` become user/assistant. Before threads are cut, messages
that are deleted, failed review, synthetic (unless kept) or in another language (when a
language filter is set) are removed together with everything below them.

Threads (``ReadOptions.oasst_threads``):
- ``all`` (default): one conversation per assistant message that has no assistant
  below it, running from the root to it. A trailing prompter turn is trimmed, since
  nothing answers it. Threads that branch off the same message share that prefix, so
  the same opening turns repeat in several records (dedupe on the whole conversation
  keeps them apart; dedupe on the prompt merges them).
- ``top``: one conversation per tree, following the best-ranked reply (rank 0) at each
  step; replies without a rank come after ranked ones, ties keep the export order.

Each record's id is its last assistant message's id; ``meta["oasst"]`` keeps the tree
id and, per turn, the message id, rank, labels, language and other fields of the export.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import polars as pl

from datakit.formats import lossy
from datakit.formats._common import (
    Outcome,
    Read,
    ReadOptions,
    Rejected,
    Skipped,
    Used,
    WriteOptions,
    check_nesting,
    json_depth,
    nested,
    shown,
    stamp_source,
)
from datakit.io import SourceRow
from datakit.record import RecordError, check_alternation, message, new_record, validate

NAME = "oasst"
ROW_LOCAL = False  # the flat message table needs every row of a tree together
ROLE_OF = {"prompter": "user", "assistant": "assistant"}
SCHEMA = pl.Schema({"message_tree_id": pl.String, "tree_state": pl.String, "prompt": pl.String})
MESSAGE_META_SKIP = {"text", "role", "replies", "parent_id"}
# Each turn of a written tree is two levels of JSON (the message and its replies list); orjson
# writes at most 255 levels, so a conversation longer than this cannot be written as a tree.
MAX_WRITE_TURNS = 127


def matches(row: dict[str, Any]) -> bool:
    return _is_tree(row) or _is_flat(row)


def _is_tree(row: dict[str, Any]) -> bool:
    return "message_tree_id" in row and "prompt" in row


def _is_flat(row: dict[str, Any]) -> bool:
    return {"message_id", "message_tree_id", "role", "text"} <= row.keys()


def read(rows: Iterable[SourceRow], options: ReadOptions) -> Iterator[Outcome]:
    rows = iter(rows)
    first = next(rows, None)
    if first is None:
        return
    rest = _chain(first, rows)
    if first.data is not None and _is_flat(first.data) and not _is_tree(first.data):
        yield from _read_flat(rest, options)
    else:
        yield from _read_trees(rest, options)


def _chain(first: SourceRow, rows: Iterator[SourceRow]) -> Iterator[SourceRow]:
    yield first
    yield from rows


# --- policy and threads ---------------------------------------------------------------


def _flag(value: Any) -> bool | None:
    if isinstance(value, str):
        return {"true": True, "false": False, "1": True, "0": False}.get(value.strip().lower())
    return None if value is None else bool(value)


def _rank(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RecordError(f"'rank' must be a number, got {type(value).__name__}")
    try:
        return int(float(value))
    except (ValueError, OverflowError):
        raise RecordError(f"'rank' must be a number, got {shown(value)}") from None


def _drop_reason(node: dict[str, Any], options: ReadOptions) -> str | None:
    if _flag(node.get("deleted")):
        return "deleted"
    if _flag(node.get("review_result")) is False:
        return "failed review"
    if _flag(node.get("synthetic")) and not options.oasst_keep_synthetic:
        return "synthetic"
    if options.oasst_lang is not None and node.get("lang") not in options.oasst_lang:
        return f"language {shown(node.get('lang'))} not kept"
    role = node.get("role")
    if not isinstance(role, str) or role not in ROLE_OF:
        return f"unknown role {shown(role)}"
    if not isinstance(node.get("text"), str):
        return "no text"
    return None


def _replies(node: dict[str, Any]) -> list[dict[str, Any]]:
    """A message's replies, checked: a list of message objects (missing or null: none)."""
    replies = node.get("replies")
    if replies is None:
        return []
    if not isinstance(replies, list):
        raise RecordError(f"message {_name(node)}: 'replies' must be a list, got {type(replies).__name__}")
    for reply in replies:
        if not isinstance(reply, dict):
            raise RecordError(f"message {_name(node)}: a reply must be an object, got {type(reply).__name__}")
    return replies


def _name(node: dict[str, Any]) -> str:
    message_id = node.get("message_id")
    if message_id is not None and not isinstance(message_id, str):
        raise RecordError(f"'message_id' must be a string, got {type(message_id).__name__}")
    return repr(message_id)


# The trees are walked with explicit stacks, not recursion: a flat table may chain thousands
# of messages, deeper than Python's recursion limit.


def _prune(root: dict[str, Any], options: ReadOptions, fate: dict[str, str]) -> dict[str, Any] | None:
    """A copy of the tree without dropped messages; ``fate`` gets each dropped id's reason."""
    if not isinstance(root, dict):
        raise RecordError(f"a message must be an object, got {type(root).__name__}")
    kept_root = None
    stack: list[tuple[dict[str, Any], list | None]] = [(root, None)]  # (message, its parent copy's replies)
    while stack:
        node, siblings = stack.pop()
        _name(node)
        reason = _drop_reason(node, options)
        if reason is not None:
            _mark_subtree(node, reason, fate)
            continue
        copy = {**node, "replies": []}
        if siblings is None:
            kept_root = copy
        else:
            siblings.append(copy)
        stack.extend((child, copy["replies"]) for child in reversed(_replies(node)))
    return kept_root


def _mark_subtree(node: dict[str, Any], reason: str, fate: dict[str, str]) -> None:
    stack = [(node, reason)]
    while stack:
        node, why = stack.pop()
        _name(node)
        fate[node.get("message_id")] = why
        stack.extend((child, "below a dropped message") for child in _replies(node))


def threads(root: dict[str, Any], policy: str) -> list[list[dict[str, Any]]]:
    """Root-to-assistant paths of a pruned tree, by policy ("all" or "top")."""
    if policy == "top":
        path, node = [root], root
        while node["replies"]:
            order = sorted(
                enumerate(node["replies"]),
                key=lambda item: (_rank(item[1].get("rank")) is None, _rank(item[1].get("rank")) or 0, item[0]),
            )
            node = order[0][1]
            path.append(node)
        while path and path[-1]["role"] != "assistant":
            path.pop()  # a trailing prompter turn has no answer
        return [path] if path else []
    # pre-order: each message with the path to it; then which messages have an assistant below
    order: list[tuple[dict[str, Any], int | None]] = []  # (message, index of its parent in order)
    stack: list[tuple[dict[str, Any], int | None]] = [(root, None)]
    while stack:
        node, parent = stack.pop()
        order.append((node, parent))
        stack.extend((child, len(order) - 1) for child in reversed(node["replies"]))
    assistant_below = [False] * len(order)
    for k in range(len(order) - 1, 0, -1):  # children come after their parent
        node, parent = order[k]
        if node["role"] == "assistant" or assistant_below[k]:
            assistant_below[parent] = True
    found: list[list[dict[str, Any]]] = []
    for k, (node, _) in enumerate(order):
        if node["role"] == "assistant" and not assistant_below[k]:
            path, at = [], k
            while at is not None:
                path.append(order[at][0])
                at = order[at][1]
            found.append(path[::-1])
    return found


def _thread_record(tree_id: str, path: list[dict[str, Any]]) -> dict[str, Any]:
    messages = [message(ROLE_OF[node["role"]], node["text"]) for node in path]
    per_turn = [{k: v for k, v in node.items() if k not in MESSAGE_META_SKIP} for node in path]
    for fields in per_turn:
        for key, value in fields.items():
            check_nesting(value, f"message {shown(fields.get('message_id'))}: field {shown(key)}")
    meta = {"oasst": {"message_tree_id": tree_id, "messages": per_turn}}
    return new_record(messages, meta=meta, id=str(path[-1].get("message_id")))


def _tree_threads(
    tree_id: str, root: dict[str, Any], options: ReadOptions, fate: dict[str, str]
) -> list[dict[str, Any]]:
    pruned = _prune(root, options, fate)
    for reason in fate.values():
        options.notes[f"oasst messages dropped: {reason}"] += 1
    if pruned is None:
        return []
    if pruned["role"] != "prompter":
        raise RecordError(f"tree {shown(tree_id)}: the root message is from {pruned['role']!r}, not a prompter")
    return [_thread_record(tree_id, path) for path in threads(pruned, options.oasst_threads)]


# --- the tree export ------------------------------------------------------------------


def _read_trees(rows: Iterable[SourceRow], options: ReadOptions) -> Iterator[Outcome]:
    for row in rows:
        if row.error is not None:
            yield Rejected(row, row.error)
            continue
        try:
            root = nested(row.data.get("prompt"), "prompt", dict)
            if root is None:
                raise RecordError("tree has no 'prompt' message")
            tree_id = str(row.data.get("message_tree_id"))
            fate: dict[str, str] = {}
            records = _tree_threads(tree_id, root, options, fate)
            for record in records:
                validate(record)
        except RecordError as exc:
            yield Rejected(row, str(exc))
            continue
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            yield Rejected(row, f"malformed oasst tree: {type(exc).__name__}: {exc}")
            continue
        if not records:
            reason = fate.get(root.get("message_id"), "no assistant reply survives the policy")
            yield Skipped(row, f"no thread left: root message {reason}" if root.get("message_id") in fate else reason)
            continue
        for record in records:
            stamp_source(record, row, NAME)
            yield Read(row, record)


# --- the flat message table -----------------------------------------------------------


def _read_flat(rows: Iterable[SourceRow], options: ReadOptions) -> Iterator[Outcome]:
    """Group messages by tree, rebuild each tree, cut threads, account for every row."""
    trees: dict[str, list[SourceRow]] = defaultdict(list)
    for row in rows:
        if row.error is not None:
            yield Rejected(row, row.error)
        elif not isinstance(row.data.get("message_id"), str):
            yield Rejected(row, "field 'message_id' must be a string")
        elif not isinstance(row.data.get("parent_id"), (str, type(None))):
            yield Rejected(row, f"field 'parent_id' must be a string, got {type(row.data['parent_id']).__name__}")
        else:
            trees[str(row.data.get("message_tree_id"))].append(row)
    for tree_id, tree_rows in trees.items():
        yield from _read_flat_tree(tree_id, tree_rows, options)


def _read_flat_tree(tree_id: str, tree_rows: list[SourceRow], options: ReadOptions) -> Iterator[Outcome]:
    seen: dict[str, SourceRow] = {}
    for row in tree_rows:
        message_id = row.data["message_id"]
        if message_id in seen:  # which of the two is the parent of the replies? nobody can tell
            reason = f"tree {shown(tree_id)}: message_id {shown(message_id)} appears more than once ({seen[message_id].where()}"
            reason += f" and {row.where()})"
            for each in tree_rows:
                yield Rejected(each, reason)
            return
        seen[message_id] = row
    nodes = {row.data["message_id"]: {**row.data, "replies": []} for row in tree_rows}
    row_of = {row.data["message_id"]: row for row in tree_rows}
    roots = []
    orphans = []
    for row in tree_rows:
        node = nodes[row.data["message_id"]]
        parent_id = row.data.get("parent_id")
        if parent_id is None or parent_id == "":
            roots.append(node)
        elif parent_id in nodes:
            nodes[parent_id]["replies"].append(node)
        else:
            orphans.append(row)
    orphan_ids = {row.data["message_id"] for row in orphans}
    for row in orphans:
        yield Rejected(row, f"parent message {shown(row.data['parent_id'])} is not in the table")
    if len(roots) != 1:
        for row in tree_rows:
            if row.data["message_id"] not in orphan_ids:
                yield Rejected(row, f"tree {shown(tree_id)} has {len(roots)} root messages, expected 1")
        return
    fate: dict[str, str] = {}
    try:
        records = _tree_threads(tree_id, roots[0], options, fate)
    except RecordError as exc:
        for row in tree_rows:
            if row.data["message_id"] not in orphan_ids:
                yield Rejected(row, str(exc))
        return
    leaf_ids = {r["id"] for r in records}
    used_ids = {m["message_id"] for r in records for m in r["meta"]["oasst"]["messages"]}
    for record in records:
        row = row_of[record["id"]]
        stamp_source(record, row, NAME)
        yield Read(row, record)
    for message_id, row in row_of.items():
        if message_id in orphan_ids or message_id in leaf_ids:
            continue
        if message_id in used_ids:
            yield Used(row)
        elif message_id in fate:
            yield Skipped(row, f"oasst message {fate[message_id]}")
        else:
            # not reachable from the root (a cycle of parents), or no assistant reply below it
            policy = "not on the top-ranked path" if options.oasst_threads == "top" else "no assistant reply below it"
            yield Skipped(row, f"oasst message {policy}")


# --- writing: one linear tree per conversation ----------------------------------------


def write(record: dict[str, Any], options: WriteOptions) -> dict[str, Any]:
    record = lossy.require_no_tools(record, options.lossy, "OpenAssistant", options.notes)
    record = lossy.require_no_system_prompt(record, options.lossy, "OpenAssistant", options.notes)
    if options.lossy:
        record = lossy.fold_system_turns(record, options.notes)
        record = lossy.trim_trailing_turns(record, options.notes)
    check_alternation(record, "OpenAssistant")
    oasst_meta = record["meta"].get("oasst")
    oasst_meta = oasst_meta if isinstance(oasst_meta, dict) else {}
    known = oasst_meta.get("messages")
    if not (isinstance(known, list) and len(known) == len(record["messages"])):
        known = [{} for _ in record["messages"]]
    known = [fields if isinstance(fields, dict) else {} for fields in known]
    extra_depth = max((json_depth(v) for fields in known for v in fields.values()), default=0)
    if 2 * len(record["messages"]) + extra_depth > 2 * MAX_WRITE_TURNS:
        raise RecordError(
            f"{len(record['messages'])} turns: an OpenAssistant tree nests two levels per turn (and its messages'"
            f" fields inside that), and JSON writers stop at about {MAX_WRITE_TURNS} turns; write it as sharegpt"
            " or openai instead"
        )
    nodes = []
    for i, (msg, extra) in enumerate(zip(record["messages"], known, strict=True)):
        node = {
            "message_id": extra.get("message_id") or f"{record['id']}-{i}",
            **{k: v for k, v in extra.items() if k != "message_id"},
            "text": msg["content"],
            "role": "prompter" if msg["role"] == "user" else "assistant",
            "replies": [],
        }
        if nodes:
            node["parent_id"] = nodes[-1]["message_id"]
            nodes[-1]["replies"].append(node)
        nodes.append(node)
    tree_id = oasst_meta.get("message_tree_id") or nodes[0]["message_id"]
    return {"message_tree_id": tree_id, "tree_state": "ready_for_export", "prompt": nodes[0]}
