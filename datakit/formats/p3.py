"""P3 / promptsource: one prompt and one target per row.

Reads ``inputs_pretokenized``/``targets_pretokenized`` (P3), or ``inputs``/``targets``
when those are strings (the T0 / xP3 layout; in P3 they are token ids and are ignored).
P3 texts usually start (and targets often end) with a newline left by the template:
datakit strips that surrounding whitespace and keeps what it stripped in
``meta["p3"]``, so writing back to P3 restores it exactly. ``answer_choices``, ``idx``
and ``weight`` are kept in meta. In ``_score_eval`` tasks every answer choice is a row
with ``is_correct``; only the correct rows are training pairs, the others are skipped
(counted in the summary, not errors).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import polars as pl

from datakit.formats import lossy
from datakit.formats._common import Outcome, ReadOptions, Rejected, Skipped, WriteOptions, drop_none, nested, read_each
from datakit.io import SourceRow
from datakit.record import RecordError, check_alternation, message, new_record

NAME = "p3"
ROW_LOCAL = True  # each row converts on its own (so rows can be split across workers)
SCHEMA = pl.Schema(
    {
        "inputs_pretokenized": pl.String,
        "targets_pretokenized": pl.String,
        "answer_choices": pl.List(pl.String),
    }
)


def matches(row: dict[str, Any]) -> bool:
    if "inputs_pretokenized" in row and "targets_pretokenized" in row:
        return True
    return isinstance(row.get("inputs"), str) and isinstance(row.get("targets"), str)


def read(rows: Iterable[SourceRow], options: ReadOptions) -> Iterator[Outcome]:
    def kept(rows: Iterable[SourceRow]) -> Iterator[SourceRow]:
        for row in rows:
            if row.data is not None and _is_false(row.data.get("is_correct")):
                skipped.append(Skipped(row, "P3 score_eval row with is_correct = false"))
            else:
                yield row

    skipped: list[Skipped | Rejected] = []
    for outcome in read_each(kept(rows), read_row, NAME):
        yield from skipped
        skipped.clear()
        yield outcome
    yield from skipped


def _is_false(value: Any) -> bool:
    return value is False or (isinstance(value, str) and value.strip().lower() in ("false", "0"))


def read_row(row: dict[str, Any]) -> list[dict[str, Any]]:
    if "inputs_pretokenized" in row:
        layout, in_key, out_key = "p3", "inputs_pretokenized", "targets_pretokenized"
    else:
        layout, in_key, out_key = "xp3", "inputs", "targets"
    prompt, target = row.get(in_key), row.get(out_key)
    for key, value in ((in_key, prompt), (out_key, target)):
        if not isinstance(value, str):
            raise RecordError(f"field {key!r} must be a string, got {type(value).__name__}")
    p3: dict[str, Any] = {"layout": layout}
    prompt, p3["input_prefix"], p3["input_suffix"] = _strip(prompt)
    target, p3["target_prefix"], p3["target_suffix"] = _strip(target)
    meta: dict[str, Any] = {"p3": {k: v for k, v in p3.items() if v}}
    for key in ("answer_choices", "idx", "weight", "is_correct"):
        if row.get(key) not in (None, ""):
            meta[key] = _choices(row[key]) if key == "answer_choices" else row[key]
    return [new_record([message("user", prompt), message("assistant", target)], meta=meta)]


def _written_choices(value: Any) -> list[str] | None:
    """The answer choices a record keeps, if they are a list of strings (what P3 holds)."""
    return value if isinstance(value, list) and all(isinstance(c, str) for c in value) else None


def _choices(value: Any) -> list[str] | None:
    choices = nested(value, "answer_choices", list)
    if choices is not None and not all(isinstance(c, str) for c in choices):
        raise RecordError("field 'answer_choices' must be a list of strings")
    return choices


def _strip(text: str) -> tuple[str, str, str]:
    core = text.strip()
    if not core:
        return text, "", ""
    start = text.index(core)
    return core, text[:start], text[start + len(core) :]


def write(record: dict[str, Any], options: WriteOptions) -> dict[str, Any]:
    record = lossy.require_no_tools(record, options.lossy, "P3", options.notes)
    record = lossy.require_no_system_prompt(record, options.lossy, "P3", options.notes)
    if options.lossy:
        record = lossy.fold_system_turns(record, options.notes)
        record = lossy.trim_trailing_turns(record, options.notes)
        record = lossy.flatten_history(record, options.notes)
    check_alternation(record, "P3")
    if len(record["messages"]) != 2:
        n = len(record["messages"])
        raise RecordError(f"P3 holds one prompt and one target, not {n} turns (--lossy flattens the history)")
    p3 = record["meta"].get("p3")
    p3 = {k: v for k, v in p3.items() if isinstance(v, str)} if isinstance(p3, dict) else {}
    prompt = p3.get("input_prefix", "") + record["messages"][0]["content"] + p3.get("input_suffix", "")
    target = p3.get("target_prefix", "") + record["messages"][1]["content"] + p3.get("target_suffix", "")
    if p3.get("layout") == "xp3":
        return {"inputs": prompt, "targets": target}
    return drop_none(
        {
            "inputs_pretokenized": prompt,
            "targets_pretokenized": target,
            "answer_choices": _written_choices(record["meta"].get("answer_choices")),
        }
    )
