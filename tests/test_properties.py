"""Property tests: random valid records round-trip through every format and file type that can
hold them; random garbage gives a reason, never a crash or a silent drop."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import datakit
from datakit.formats import FORMATS, Read, ReadOptions, Rejected, Skipped, Used
from datakit.io import SourceRow
from datakit.record import message, new_record, tool_call

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
nonblank = text.filter(lambda t: t.strip() == t and t != "")  # P3 strips surrounding whitespace


@st.composite
def records(draw, tools: bool, system: bool, turns: int | None = None, words=text) -> dict:
    n = turns or draw(st.integers(1, 3))
    messages = []
    for i in range(n):
        messages.append(message("user", draw(words)))
        if tools and draw(st.booleans()):
            args = json.dumps({"q": draw(text)}, ensure_ascii=False)
            messages.append(message("assistant", None, tool_calls=[tool_call(f"f{i}", args)]))
            messages.append(message("tool", draw(words)))
        messages.append(message("assistant", draw(words)))
    sys_prompt = draw(st.one_of(st.none(), words.filter(bool))) if system else None
    schemas = [{"type": "function", "function": {"name": "f0", "parameters": {}}}] if tools else None
    return new_record(messages, system=sys_prompt, tools=schemas)


STRATEGIES = {
    "canonical": records(tools=True, system=True),
    "openai": records(tools=True, system=True),
    "sharegpt": records(tools=True, system=True),
    "alpaca": records(tools=False, system=True),
    "oasst": records(tools=False, system=False),
    "p3": records(tools=False, system=False, turns=1, words=nonblank),
}


def conversation(record: dict) -> tuple:
    turns = tuple(
        (m["role"], m["content"], tuple((c["name"], c["arguments"]) for c in m["tool_calls"] or ()))
        for m in record["messages"]
    )
    return record["system"], turns, json.dumps(record["tools"])


def round_trip(fmt: str, container: str, batch: list[dict], tmp: Path) -> None:
    path = tmp / f"data.{container}"
    datakit.write_records(batch, path, to=fmt)
    back = list(datakit.read_records(path, fmt))
    assert [conversation(r) for r in back] == [conversation(r) for r in batch]


def make_test(fmt: str):
    @SETTINGS
    @given(
        batch=st.lists(STRATEGIES[fmt], min_size=1, max_size=4),
        container=st.sampled_from(["jsonl", "parquet", "csv", "json"]),
    )
    def test(batch, container, tmp_path_factory):
        round_trip(fmt, container, batch, tmp_path_factory.mktemp(fmt))

    test.__name__ = f"test_random_records_round_trip_through_{fmt}"
    return test


for _fmt in STRATEGIES:
    globals()[f"test_random_records_round_trip_through_{_fmt}"] = make_test(_fmt)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)
# rows that look half like a real format: the right keys with anything in them
garbage_rows = st.dictionaries(
    st.sampled_from(
        [
            "instruction",
            "input",
            "output",
            "history",
            "system",
            "conversations",
            "messages",
            "tools",
            "id",
            "inputs_pretokenized",
            "targets_pretokenized",
            "is_correct",
            "message_tree_id",
            "prompt",
            "meta",
            "message_id",
            "parent_id",
            "role",
            "text",
            "from",
            "value",
            "content",
            "tool_calls",
        ]
    )
    | text,
    json_values,
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(garbage_rows, min_size=1, max_size=5), fmt=st.sampled_from(list(FORMATS)))
def test_garbage_gives_a_reason_never_a_crash(rows: list[dict], fmt: str) -> None:
    source = [SourceRow(row, "garbage.jsonl", i, i + 1) for i, row in enumerate(rows)]
    outcomes = list(FORMATS[fmt].read(source, ReadOptions()))
    accounted = set()
    for outcome in outcomes:
        assert isinstance(outcome, (Read, Used, Rejected, Skipped))
        accounted.add(outcome.row.index)
        if isinstance(outcome, (Rejected, Skipped)):
            assert isinstance(outcome.reason, str) and outcome.reason
        if isinstance(outcome, Read):
            datakit.validate(outcome.record)
            for target in FORMATS.values():  # writing either works or names a reason
                try:
                    target.write(outcome.record, datakit.formats.WriteOptions(lossy=True))
                except datakit.RecordError as exc:
                    assert str(exc)
    assert accounted == set(range(len(rows)))  # no row silently dropped


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.binary(max_size=60), min_size=1, max_size=8))
def test_random_bytes_lines_are_all_accounted_for(lines: list[bytes], tmp_path_factory) -> None:
    lines = [line.replace(b"\n", b" ").replace(b"\r", b" ") for line in lines]
    path = tmp_path_factory.mktemp("bytes") / "noise.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    summary = datakit.convert(
        path, path.with_suffix(".out.jsonl"), to="canonical", from_format="alpaca", on_error="skip"
    )
    assert summary.rows_read == sum(1 for line in lines if line.strip())
    assert summary.rows_read == summary.rows_converted + summary.rows_rejected + summary.rows_skipped


# --- dedupe's kernels against their plain definitions ---------------------------------------

words = st.text("abcdeé", min_size=1, max_size=9)


@settings(max_examples=400, deadline=None)
@given(a=words, b=words)
def test_two_names_are_a_typo_apart_exactly_when_they_share_a_deletion(a: str, b: str) -> None:
    """The value guard's shortcut (names whose lengths differ too much share no deletion) may
    not change its answer."""
    from datakit.text import _deletions, _typo_apart

    assert _typo_apart(a, b) == (not _deletions(a).isdisjoint(_deletions(b)))


@settings(max_examples=100, deadline=None)
@given(pairs=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)).filter(lambda p: p[0] != p[1]), max_size=60))
def test_candidate_pairs_are_made_distinct_and_sorted(pairs: list[tuple[int, int]]) -> None:
    import numpy as np

    from datakit.minhash import unique_pairs

    expected = sorted({(min(p), max(p)) for p in pairs})
    got = unique_pairs(np.array(pairs, dtype=np.int64).reshape(-1, 2))
    assert [tuple(p) for p in got.tolist()] == expected
