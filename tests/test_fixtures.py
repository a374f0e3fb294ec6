"""Every real fixture in tests/fixtures/formats: detected, read, converted to every
format that can hold it, and round-tripped without changing its content."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import fixture_path, load_arrow_rows, load_rows

import datakit
from datakit.formats import FORMATS

# (file, detected format, records it should give); rows are counted from the file itself.
FIXTURES = [
    ("llama-factory/alpaca_en_demo.json", "alpaca"),
    ("llama-factory/alpaca_zh_demo.json", "alpaca"),
    ("llama-factory/identity.json", "alpaca"),
    ("llama-factory/glaive_toolcall_en_demo.json", "sharegpt"),
    ("llama-factory/dpo_en_demo.json", "sharegpt"),
    ("llama-factory/kto_en_demo.json", "openai"),
    ("llama-factory/v1_sft_demo.jsonl", "openai"),
    ("llama-factory/legacy/oaast_sft_zh.json", "alpaca"),
    ("llama-factory/legacy/oaast_rm_zh.json", "alpaca"),
    ("fastchat/dummy_conversation.json", "sharegpt"),
    ("axolotl/conversation.json", "sharegpt"),
    ("axolotl/conversation.missingturns.json", "sharegpt"),
    ("axolotl/alpaca.json", "alpaca"),
    ("torchtune/chat_tiny.json", "sharegpt"),
    ("stanford-alpaca/alpaca_tiny.torchtune.json", "alpaca"),
    ("stanford-alpaca/seed_tasks.jsonl", "alpaca"),
    ("open-assistant/en_60_tree.jsonl", "oasst"),
    ("openai-messages/stock_toolcall_training.jsonl", "openai"),
    ("p3/adversarial_qa_dbert_based_on/train/dataset.arrow", "p3"),
    ("p3/hellaswag_complete_first_then_score_eval/train/dataset.arrow", "p3"),
    ("p3/openbookqa_main_choices/train/dataset.arrow", "p3"),
]
IDS = [f.split("/")[-1] if "p3/" not in f else f.split("/")[1] for f, _ in FIXTURES]


def raw_rows(relative: str) -> list[dict]:
    path = fixture_path(relative)
    return load_arrow_rows(path) if path.suffix == ".arrow" else load_rows(path)


def expected_records(relative: str, rows: list[dict]) -> int | None:
    """Records a fixture must give, counted from its raw rows (None where a policy decides)."""
    if relative.endswith("seed_tasks.jsonl"):
        return sum(len(r["instances"]) for r in rows)
    if "score_eval" in relative:
        return sum(1 for r in rows if r["is_correct"])
    if "open-assistant" in relative:
        return None  # checked against an independent count in test_oasst.py
    return len(rows)


@pytest.mark.parametrize(("relative", "fmt"), FIXTURES, ids=IDS)
def test_fixture_is_detected_and_read_whole(relative: str, fmt: str) -> None:
    report = datakit.inspect(fixture_path(relative))
    rows = raw_rows(relative)
    assert report["format"] == fmt, report["detected"]
    assert report["rows"] == len(rows)
    assert report["rejected"] == 0, report["reasons"]
    expected = expected_records(relative, rows)
    if expected is not None:
        assert report["records"] == expected


def can_hold(target: str, record: dict) -> bool:
    """Whether a target format can hold a record, written out independently of the writers."""
    messages = record["messages"]
    roles = [m["role"] for m in messages]
    uses_tools = bool(record["tools"]) or "tool" in roles or any(m["tool_calls"] for m in messages)
    alternates = roles[-1] == "assistant" and all(
        role in (("user", "tool") if i % 2 == 0 else ("assistant",)) for i, role in enumerate(roles)
    )
    if target in ("canonical", "openai"):
        return True
    if target == "alpaca":
        return alternates and not uses_tools
    if target == "sharegpt":
        return alternates and not any(m["tool_calls"] and m["content"] for m in messages)
    if target == "p3":
        return roles == ["user", "assistant"] and record["system"] is None and not uses_tools
    if target == "oasst":
        return alternates and record["system"] is None and not uses_tools
    raise AssertionError(target)


@pytest.mark.parametrize("target", list(FORMATS))
@pytest.mark.parametrize(("relative", "fmt"), FIXTURES, ids=IDS)
def test_fixture_converts_to_every_format_that_can_hold_it(relative: str, fmt: str, target: str, tmp: Path) -> None:
    records = list(datakit.read_records(fixture_path(relative)))
    holdable = sum(can_hold(target, r) for r in records)
    out = tmp / f"out.{target}.jsonl"
    summary = datakit.convert(fixture_path(relative), out, to=target, on_error="skip")
    assert summary.records_read == len(records)
    assert summary.written == holdable
    assert summary.rejected_on_write == len(records) - holdable
    rejects = [json.loads(line) for line in Path(summary.rejects_path).read_text().splitlines()]
    assert len(rejects) == summary.rows_rejected + summary.rejected_on_write
    assert all(r["stage"] == "write" and r["reason"] for r in rejects)
    # what was written reads back as the same conversations
    back = list(datakit.read_records(out, target))
    kept = [r for r in records if can_hold(target, r)]
    strip = target == "p3"  # reading P3 strips the whitespace around texts (documented)
    assert [turns(r, strip) for r in back] == [turns(r, strip) for r in kept]


def turns(record: dict, strip: bool = False) -> list:
    """The conversation as (role, text, calls) triples, system first; ids of tool calls excluded
    (ShareGPT has no place for them)."""
    out = [("system", record["system"], None)] if record["system"] is not None else []
    for m in record["messages"]:
        calls = [(c["name"], json.loads(c["arguments"])) for c in m["tool_calls"]] if m["tool_calls"] else None
        content = m["content"].strip() if strip and m["content"] else m["content"]
        out.append((m["role"], content, calls))
    return out


# --- round trips: format -> canonical -> format keeps what the format can represent ---


def alpaca_view(row: dict) -> dict:
    output = row["output"]
    return {
        "instruction": row["instruction"],
        "input": row.get("input") or "",
        "output": output[0] if isinstance(output, list) else output,
        "system": row.get("system") or None,
        "history": row.get("history") or [],
    }


def sharegpt_view(row: dict) -> dict:
    conversation = row["conversations"]
    system = row.get("system") or None
    if conversation and conversation[0]["from"] == "system":
        system, conversation = conversation[0]["value"], conversation[1:]
    turns = [(t["from"], json.loads(t["value"]) if t["from"] == "function_call" else t["value"]) for t in conversation]
    tools = row.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) and tools else tools
    return {"id": row.get("id"), "system": system, "turns": turns, "tools": tools or None}


def openai_view(row: dict) -> dict:
    messages = []
    for m in row["messages"]:
        calls = [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in m.get("tool_calls") or []]
        messages.append((m["role"], m.get("content"), calls, m.get("tool_call_id"), m.get("name")))
    return {"messages": messages, "tools": row.get("tools")}


def p3_view(row: dict) -> dict:
    return {
        "inputs_pretokenized": row["inputs_pretokenized"],
        "targets_pretokenized": row["targets_pretokenized"],
        "answer_choices": row.get("answer_choices"),
    }


ROUND_TRIPS = [
    ("llama-factory/alpaca_en_demo.json", "alpaca", alpaca_view),
    ("llama-factory/alpaca_zh_demo.json", "alpaca", alpaca_view),
    ("llama-factory/identity.json", "alpaca", alpaca_view),
    ("llama-factory/legacy/oaast_sft_zh.json", "alpaca", alpaca_view),
    ("axolotl/alpaca.json", "alpaca", alpaca_view),
    ("stanford-alpaca/alpaca_tiny.torchtune.json", "alpaca", alpaca_view),
    ("llama-factory/glaive_toolcall_en_demo.json", "sharegpt", sharegpt_view),
    ("fastchat/dummy_conversation.json", "sharegpt", sharegpt_view),
    ("axolotl/conversation.json", "sharegpt", sharegpt_view),
    ("axolotl/conversation.missingturns.json", "sharegpt", sharegpt_view),
    ("torchtune/chat_tiny.json", "sharegpt", sharegpt_view),
    ("openai-messages/stock_toolcall_training.jsonl", "openai", openai_view),
    ("p3/adversarial_qa_dbert_based_on/train/dataset.arrow", "p3", p3_view),
    ("p3/openbookqa_main_choices/train/dataset.arrow", "p3", p3_view),
    ("p3/hellaswag_complete_first_then_score_eval/train/dataset.arrow", "p3", p3_view),
]


@pytest.mark.parametrize("container", ["jsonl", "parquet", "csv"])
@pytest.mark.parametrize(
    ("relative", "fmt", "view"), ROUND_TRIPS, ids=[r[0].split("/")[-2] + "/" + r[0].split("/")[-1] for r in ROUND_TRIPS]
)
def test_round_trip_through_canonical_keeps_content(relative, fmt, view, container, tmp: Path) -> None:
    canonical = tmp / f"canonical.{container}"
    back = tmp / f"back.{container}"
    first = datakit.convert(fixture_path(relative), canonical, to="canonical")
    second = datakit.convert(canonical, back, to=fmt, from_format="canonical")
    assert first.rows_rejected == second.rows_rejected == second.rejected_on_write == 0
    original = [r for r in raw_rows(relative) if r.get("is_correct", True)]
    written = [row.data for row in datakit.read_rows(back)]
    if container != "jsonl":  # tables: nested fields come back as JSON text or with null keys
        written = [_untable(row) for row in written]
    assert [view(r) for r in written] == [view(r) for r in original]


TABLE_JSON_FIELDS = ("conversations", "messages", "history", "answer_choices", "tools")


def _untable(row: dict) -> dict:
    """A table row as JSON would hold it: JSON-text fields parsed, null keys dropped."""
    out = {}
    for key, value in row.items():
        if isinstance(value, str) and value[:1] in ("[", "{") and key in TABLE_JSON_FIELDS:
            value = json.loads(value)
        if key == "messages" and value:
            value = [{k: v for k, v in m.items() if v is not None} for m in value]
        out[key] = value if value != "" else None
    return out
