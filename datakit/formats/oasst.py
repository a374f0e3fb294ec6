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
    nested,
    stamp_source,
)
from datakit.io import SourceRow
from datakit.record import RecordError, check_alternation, message, new_record, validate

NAME = "oasst"
ROW_LOCAL = False  # the flat message table needs every row of a tree together
ROLE_OF = {"prompter": "user", "assistant": "assistant"}
SCHEMA = pl.Schema({"message_tree_id": pl.String, "tree_state": pl.String, "prompt": pl.String})
MESSAGE_META_SKIP = {"text", "role", "replies", "parent_id"}


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
    return int(float(value))


def _drop_reason(node: dict[str, Any], options: ReadOptions) -> str | None:
    if _flag(node.get("deleted")):
        return "deleted"
    if _flag(node.get("review_result")) is False:
        return "failed review"
    if _flag(node.get("synthetic")) and not options.oasst_keep_synthetic:
        return "synthetic"
    if options.oasst_lang is not None and node.get("lang") not in options.oasst_lang:
        return f"language {node.get('lang')!r} not kept"
    if node.get("role") not in ROLE_OF:
        return f"unknown role {node.get('role')!r}"
    if not isinstance(node.get("text"), str):
        return "no text"
    return None


def _prune(node: dict[str, Any], options: ReadOptions, fate: dict[str, str]) -> dict[str, Any] | None:
    """A copy of the tree without dropped messages; ``fate`` gets each dropped id's reason."""
    reason = _drop_reason(node, options)
    if reason is not None:
        _mark_subtree(node, reason, fate)
        return None
    replies = [kept for child in node.get("replies") or [] if (kept := _prune(child, options, fate)) is not None]
    return {**node, "replies": replies}


def _mark_subtree(node: dict[str, Any], reason: str, fate: dict[str, str]) -> None:
    fate[node.get("message_id")] = reason
    for child in node.get("replies") or []:
        _mark_subtree(child, "below a dropped message", fate)


def _has_assistant(node: dict[str, Any]) -> bool:
    return any(c["role"] == "assistant" or _has_assistant(c) for c in node["replies"])


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
    found: list[list[dict[str, Any]]] = []

    def walk(node: dict[str, Any], path: list[dict[str, Any]]) -> None:
        path = [*path, node]
        if node["role"] == "assistant" and not _has_assistant(node):
            found.append(path)
        for child in node["replies"]:
            walk(child, path)

    walk(root, [])
    return found


def _thread_record(tree_id: str, path: list[dict[str, Any]]) -> dict[str, Any]:
    messages = [message(ROLE_OF[node["role"]], node["text"]) for node in path]
    per_turn = [{k: v for k, v in node.items() if k not in MESSAGE_META_SKIP} for node in path]
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
        raise RecordError(f"tree {tree_id}: the root message is from {pruned['role']!r}, not a prompter")
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
        else:
            trees[str(row.data.get("message_tree_id"))].append(row)
    for tree_id, tree_rows in trees.items():
        yield from _read_flat_tree(tree_id, tree_rows, options)


def _read_flat_tree(tree_id: str, tree_rows: list[SourceRow], options: ReadOptions) -> Iterator[Outcome]:
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
    for row in orphans:
        yield Rejected(row, f"parent message {row.data['parent_id']!r} is not in the table")
    if len(roots) != 1:
        for row in tree_rows:
            if row not in orphans:
                yield Rejected(row, f"tree {tree_id} has {len(roots)} root messages, expected 1")
        return
    fate: dict[str, str] = {}
    try:
        records = _tree_threads(tree_id, roots[0], options, fate)
    except RecordError as exc:
        for row in tree_rows:
            if row not in orphans:
                yield Rejected(row, str(exc))
        return
    leaf_ids = {r["id"] for r in records}
    used_ids = {m["message_id"] for r in records for m in r["meta"]["oasst"]["messages"]}
    for record in records:
        row = row_of[record["id"]]
        stamp_source(record, row, NAME)
        yield Read(row, record)
    for message_id, row in row_of.items():
        if row in orphans or message_id in leaf_ids:
            continue
        if message_id in used_ids:
            yield Used(row)
        elif message_id in fate:
            yield Skipped(row, f"oasst message {fate[message_id]}")
        else:
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
    known = (record["meta"].get("oasst") or {}).get("messages") or []
    if len(known) != len(record["messages"]):
        known = [{} for _ in record["messages"]]
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
    tree_id = (record["meta"].get("oasst") or {}).get("message_tree_id") or nodes[0]["message_id"]
    return {"message_tree_id": tree_id, "tree_state": "ready_for_export", "prompt": nodes[0]}
