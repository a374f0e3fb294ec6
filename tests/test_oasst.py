"""OpenAssistant threads: counts per policy checked against counts derived here another way
(bottom-up over a flat parent table, where datakit walks the trees top-down)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import polars as pl
import pytest
from conftest import fixture_path, load_rows

import datakit
from datakit.formats import ReadOptions

TREES = fixture_path("open-assistant/en_60_tree.jsonl")


def flatten(trees: list[dict]) -> list[dict]:
    """The tree export as the flat message table (the Hugging Face oasst1 layout)."""
    rows = []

    def walk(node: dict, tree_id: str, parent: str | None) -> None:
        row = {k: v for k, v in node.items() if k != "replies"}
        rows.append({**row, "message_tree_id": tree_id, "parent_id": parent})
        for child in node.get("replies", []):
            walk(child, tree_id, node["message_id"])

    for tree in trees:
        walk(tree["prompt"], tree["message_tree_id"], None)
    return rows


def expected_threads(messages: list[dict], keep_synthetic=False, lang=None) -> dict[str, int]:
    """leaf assistant id -> thread length, for the 'all' policy, derived bottom-up."""
    by_id = {m["message_id"]: m for m in messages}

    def own_ok(m: dict) -> bool:
        return (
            not m.get("deleted")
            and m.get("review_result") is not False
            and (keep_synthetic or not m.get("synthetic"))
            and (lang is None or m.get("lang") in lang)
        )

    def ancestors(m: dict) -> list[dict]:
        chain = []
        while m.get("parent_id"):
            m = by_id[m["parent_id"]]
            chain.append(m)
        return chain

    kept = {mid for mid, m in by_id.items() if own_ok(m) and all(own_ok(a) for a in ancestors(m))}
    has_assistant_below = set()
    for mid in kept:
        if by_id[mid]["role"] == "assistant":
            has_assistant_below.update(a["message_id"] for a in ancestors(by_id[mid]))
    return {
        mid: len(ancestors(by_id[mid])) + 1
        for mid in kept
        if by_id[mid]["role"] == "assistant" and mid not in has_assistant_below
    }


def expected_top_trees(messages: list[dict]) -> int:
    """Trees whose kept root has a kept reply: each gives exactly one 'top' thread."""
    ok = {m["message_id"] for m in messages if not m.get("deleted") and not m.get("synthetic")}
    roots = {m["message_id"] for m in messages if m["parent_id"] is None and m["message_id"] in ok}
    return len({m["parent_id"] for m in messages if m["parent_id"] in roots and m["message_id"] in ok})


def read_all(path: Path, **options) -> list[dict]:
    return list(datakit.read_records(path, "oasst", ReadOptions(**options)))


def test_all_threads_match_an_independent_count() -> None:
    messages = flatten(load_rows(TREES))
    expected = expected_threads(messages)
    records = read_all(TREES)
    assert len(expected) > 100  # the fixture branches a lot: a real check
    assert {r["id"]: len(r["messages"]) for r in records} == expected
    for r in records:
        roles = [m["role"] for m in r["messages"]]
        assert roles[0] == "user" and roles[-1] == "assistant"
        assert all(a != b for a, b in zip(roles, roles[1:], strict=False))


def test_keeping_synthetic_messages_adds_their_threads() -> None:
    messages = flatten(load_rows(TREES))
    expected = expected_threads(messages, keep_synthetic=True)
    records = read_all(TREES, oasst_keep_synthetic=True)
    assert {r["id"]: len(r["messages"]) for r in records} == expected
    assert len(records) > len(read_all(TREES))


def test_top_policy_gives_one_best_ranked_thread_per_tree() -> None:
    trees = load_rows(TREES)
    records = read_all(TREES, oasst_threads="top")
    assert len(records) == expected_top_trees(flatten(trees))
    tree_of = {t["message_tree_id"]: t for t in trees}
    for record in records:
        node = tree_of[record["meta"]["oasst"]["message_tree_id"]]["prompt"]
        for turn in record["meta"]["oasst"]["messages"][1:]:
            candidates = [c for c in node["replies"] if not c.get("synthetic")]
            best = min(candidates, key=lambda c: (c.get("rank") is None, c.get("rank") or 0))
            assert turn["message_id"] == best["message_id"]
            node = best


def test_language_filter_deleted_and_failed_review(tmp: Path) -> None:
    trees = load_rows(TREES)
    edited = copy.deepcopy(trees)
    # delete the first reply of every tree, fail the review of the second where there is one
    for tree in edited:
        replies = tree["prompt"]["replies"]
        if replies:
            replies[0]["deleted"] = True
        if len(replies) > 1:
            replies[1]["review_result"] = False
    path = tmp / "edited.jsonl"
    path.write_text("\n".join(json.dumps(t) for t in edited) + "\n")
    expected = expected_threads(flatten(edited))
    assert {r["id"]: len(r["messages"]) for r in read_all(path)} == expected
    assert len(expected) < len(expected_threads(flatten(trees)))
    summary = datakit.convert(path, tmp / "out.jsonl", to="canonical", read_options=ReadOptions(oasst_lang=("de",)))
    assert summary.written == 0 and summary.rows_skipped == len(trees)


@pytest.mark.parametrize("container", ["jsonl", "parquet", "csv"])
def test_flat_message_table_gives_the_same_threads_and_accounts_for_every_row(container: str, tmp: Path) -> None:
    messages = flatten(load_rows(TREES))
    table = tmp / f"messages.{container}"
    frame = pl.DataFrame(messages, infer_schema_length=None)
    if container == "jsonl":
        table.write_text("\n".join(json.dumps(m) for m in messages) + "\n")
    elif container == "parquet":
        frame.write_parquet(table)
    else:
        frame.drop("emojis", strict=False).write_csv(table)
    from_trees = {r["id"]: r["messages"] for r in read_all(TREES)}
    from_table = {r["id"]: r["messages"] for r in read_all(table)}
    assert from_table == from_trees
    summary = datakit.convert(table, tmp / "out.jsonl", to="sharegpt")
    assert summary.rows_read == len(messages)
    assert summary.written == len(from_trees)
    # every message is in a thread, or skipped with its reason
    in_threads = {m for r in read_all(TREES) for m in (t["message_id"] for t in r["meta"]["oasst"]["messages"])}
    assert summary.rows_converted == len(in_threads)
    assert summary.rows_skipped == len(messages) - len(in_threads)


def test_table_with_a_missing_parent_rejects_that_row(tmp: Path) -> None:
    messages = flatten(load_rows(TREES))[:20]
    messages[5]["parent_id"] = "no-such-message"
    path = tmp / "broken.jsonl"
    path.write_text("\n".join(json.dumps(m) for m in messages) + "\n")
    with pytest.raises(datakit.ConversionError, match=r"broken.jsonl:6: parent message 'no-such-message'"):
        datakit.convert(path, tmp / "out.jsonl", to="canonical", from_format="oasst")
    assert not (tmp / "out.jsonl").exists()


def test_round_trip_through_the_tree_export(tmp: Path) -> None:
    records = read_all(TREES)
    datakit.write_records(records, tmp / "trees.jsonl", to="oasst")
    back = read_all(tmp / "trees.jsonl")
    assert [r["messages"] for r in back] == [r["messages"] for r in records]
    assert [r["id"] for r in back] == [r["id"] for r in records]
