"""Bad input: a clear error naming file, line or record, and reason; nothing lost, nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import datakit
from datakit.formats import FormatError
from datakit.io import InputError

GOOD = {"instruction": "Add 2 and 3.", "input": "", "output": "5"}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def messy(tmp: Path) -> Path:
    return write_lines(
        tmp / "messy.jsonl",
        [
            json.dumps(GOOD),
            '{"instruction": "broken", "output": ',  # malformed JSON
            json.dumps({**GOOD, "instruction": "Name a colour."}),
            json.dumps({"instruction": "no output here", "input": ""}),  # missing field
            json.dumps({"instruction": "x", "input": "", "output": 7}),  # wrong type
            "[1, 2, 3]",  # not an object
            "",  # a blank line is no record
            json.dumps({**GOOD, "history": [["only one half"]]}),  # malformed history
        ],
    )


def test_fail_mode_names_file_line_and_reason_and_writes_nothing(messy: Path, tmp: Path) -> None:
    out = tmp / "out.jsonl"
    out.write_text("the previous good output\n")
    with pytest.raises(datakit.ConversionError, match=r"messy\.jsonl:2: malformed JSON"):
        datakit.convert(messy, out, to="sharegpt", from_format="alpaca")
    assert out.read_text() == "the previous good output\n"  # untouched: writes are atomic
    assert [p.name for p in tmp.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_skip_mode_accounts_for_every_row(messy: Path, tmp: Path) -> None:
    out = tmp / "out.jsonl"
    summary = datakit.convert(messy, out, to="sharegpt", from_format="alpaca", on_error="skip")
    assert (summary.rows_read, summary.written, summary.rows_rejected) == (7, 2, 5)
    rejects = [json.loads(line) for line in Path(summary.rejects_path).read_text().splitlines()]
    assert [(r["line"], r["stage"]) for r in rejects] == [
        (2, "read"),
        (4, "read"),
        (5, "read"),
        (6, "read"),
        (8, "read"),
    ]
    reasons = [r["reason"] for r in rejects]
    assert reasons[0].startswith("malformed JSON")
    assert reasons[1] == "missing required field 'output'"
    assert reasons[2] == "field 'output' must be a string, got int"
    assert reasons[3] == "expected a JSON object, got list"
    assert reasons[4] == "history[0] must be an [instruction, response] pair of strings"
    assert rejects[0]["record"] == '{"instruction": "broken", "output": '  # the raw text is kept
    assert len(out.read_text().splitlines()) == 2
    assert "read 7 = converted 2 + rejected 5 + skipped 0" in summary.text()


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"conversations": []}, "empty conversation: field 'conversations' is missing or empty"),
        ({"conversations": [{"from": "human", "value": "hi"}]}, "no assistant turn"),
        (
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "beep"}]},
            "turn 1: unknown role 'robot'",
        ),
        ({"conversations": [{"from": "gpt", "value": "hello"}]}, "conversation starts with a assistant turn"),
        (
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "function_call", "value": "{oops"}]},
            "turn 1: function_call value is not JSON",
        ),
        ({"conversations": [{"from": "human", "value": 3}]}, "turn 0: 'value' must be a string, got int"),
    ],
)
def test_sharegpt_rows_are_rejected_with_their_reason(row: dict, reason: str, tmp: Path) -> None:
    path = write_lines(tmp / "in.jsonl", [json.dumps(row)])
    with pytest.raises(datakit.ConversionError) as err:
        datakit.convert(path, tmp / "out.jsonl", to="canonical", from_format="sharegpt")
    assert f"in.jsonl:1: {reason}" in str(err.value)


def test_openai_non_text_content_is_rejected_not_dropped(tmp: Path) -> None:
    row = {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "assistant", "content": "a cat"},
        ]
    }
    path = write_lines(tmp / "in.jsonl", [json.dumps(row)])
    summary = datakit.convert(path, tmp / "out.jsonl", to="openai", on_error="skip")
    assert summary.rows_rejected == 1
    reject = json.loads(Path(summary.rejects_path).read_text())
    assert "content part 0 is 'image_url'" in reject["reason"]


def test_records_a_target_cannot_hold_are_rejected_or_converted_with_lossy(tmp: Path) -> None:
    from conftest import fixture_path

    glaive = fixture_path("llama-factory/glaive_toolcall_en_demo.json")
    strict = datakit.convert(glaive, tmp / "strict.jsonl", to="alpaca", on_error="skip")
    with_tools = sum(
        1 for r in datakit.read_records(glaive) if r["tools"] or any(m["tool_calls"] for m in r["messages"])
    )
    assert strict.rejected_on_write == with_tools > 0
    assert any("Alpaca cannot hold tool calls" in reason for reason in strict.reasons)
    lossy = datakit.convert(glaive, tmp / "lossy.jsonl", to="alpaca", lossy=True)
    assert lossy.written == lossy.records_read == len(json.loads(glaive.read_text()))
    rows = [json.loads(line) for line in (tmp / "lossy.jsonl").read_text().splitlines()]
    assert sum("<tool_call>" in json.dumps(r) for r in rows) > 0
    assert lossy.notes["lossy rule applied: tools_inlined"] == with_tools


def test_unknown_format_asks_for_from(tmp: Path) -> None:
    path = write_lines(tmp / "mystery.jsonl", [json.dumps({"question": "q", "answer": "a"})])
    with pytest.raises(FormatError, match="pass --from"):
        datakit.convert(path, tmp / "out.jsonl", to="sharegpt")


def test_mixed_formats_are_ambiguous(tmp: Path) -> None:
    alpaca = json.dumps(GOOD)
    sharegpt = json.dumps({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]})
    path = write_lines(tmp / "mixed.jsonl", [alpaca, sharegpt] * 5)
    with pytest.raises(FormatError, match="ambiguous format.*pass --from"):
        datakit.convert(path, tmp / "out.jsonl", to="openai")


def test_unknown_extension_and_missing_file(tmp: Path) -> None:
    (tmp / "data.txt").write_text("{}")
    with pytest.raises(InputError, match="unknown file type"):
        datakit.convert(tmp / "data.txt", tmp / "out.jsonl", to="sharegpt")
    with pytest.raises(InputError, match="no such file"):
        datakit.convert(tmp / "absent.jsonl", tmp / "out.jsonl", to="sharegpt")


def test_broken_json_array_names_the_position(tmp: Path) -> None:
    path = tmp / "broken.json"
    path.write_text('[{"instruction": "a", "output": "b"},\n {"instruction": ]')
    with pytest.raises(InputError, match=r"broken\.json: not valid JSON .*line 2"):
        datakit.convert(path, tmp / "out.jsonl", to="sharegpt")


def test_parallel_and_serial_runs_agree_on_output_and_rejects(messy: Path, tmp: Path) -> None:
    lines = messy.read_text().splitlines() * 3000  # several worker blocks
    big = write_lines(tmp / "big.jsonl", lines)
    import datakit.convert as convert_module

    convert_module.CHUNK_BYTES = 64 << 10  # force many blocks
    try:
        one = datakit.convert(big, tmp / "one.jsonl", to="openai", from_format="alpaca", on_error="skip", workers=1)
        two = datakit.convert(big, tmp / "two.jsonl", to="openai", from_format="alpaca", on_error="skip", workers=2)
    finally:
        convert_module.CHUNK_BYTES = 4 << 20
    assert (tmp / "one.jsonl").read_bytes() == (tmp / "two.jsonl").read_bytes()
    assert Path(one.rejects_path).read_text() == Path(two.rejects_path).read_text()
    assert (one.rows_read, one.written, one.rows_rejected) == (two.rows_read, two.written, two.rows_rejected)
    assert one.rows_read == 7 * 3000
    with pytest.raises(datakit.ConversionError, match=r"big\.jsonl:2: malformed JSON"):
        datakit.convert(big, tmp / "fail.jsonl", to="openai", from_format="alpaca", workers=2)
    assert not (tmp / "fail.jsonl").exists()


def test_an_option_error_crosses_between_processes_whole() -> None:
    """A scan worker sends its errors to the driver pickled: an OptionError arrives with the
    setting's name, so the CLI can still name the flag."""
    import pickle

    from datakit.errors import OptionError

    error = pickle.loads(pickle.dumps(OptionError("threshold", "must be below 1")))
    assert (type(error), error.key, error.problem, str(error)) == (
        OptionError, "threshold", "must be below 1", "threshold: must be below 1")  # fmt: skip
