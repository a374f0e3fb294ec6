"""Alpaca: ``instruction``, ``input``, ``output``, optional ``system`` and ``history``.

Reading joins instruction and input with a separator (default ``"\\n"``, as
LLaMA-Factory's AlpacaDatasetConverter does; an empty part is left out, so an empty
input, the common case, adds nothing). ``history`` is a list of [instruction, response]
pairs that come before the final exchange. Variants read as well:

- ranking data whose ``output`` is a rank-ordered list (LLaMA-Factory's oaast_rm):
  the first reply is the response, the whole list is kept in ``meta["ranked_outputs"]``;
- ``chosen``/``rejected`` pairs: ``chosen`` is the response, ``rejected`` goes to meta;
- Self-Instruct seed tasks (``instruction`` + ``instances``): one record per instance.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import polars as pl

from datakit.formats import lossy
from datakit.formats._common import Outcome, ReadOptions, WriteOptions, drop_none, field_text, nested, read_each
from datakit.io import SourceRow
from datakit.record import RecordError, check_alternation, message, new_record

NAME = "alpaca"
ROW_LOCAL = True  # each row converts on its own (so rows can be split across workers)
KNOWN_FIELDS = {"id", "instruction", "input", "output", "system", "history", "instances", "chosen", "rejected"}
SCHEMA = pl.Schema(
    {
        "id": pl.String,
        "instruction": pl.String,
        "input": pl.String,
        "output": pl.String,
        "system": pl.String,
        "history": pl.List(pl.List(pl.String)),
    }
)


def matches(row: dict[str, Any]) -> bool:
    return "instruction" in row and ("output" in row or "instances" in row or "chosen" in row)


def read(rows: Iterable[SourceRow], options: ReadOptions) -> Iterator[Outcome]:
    return read_each(rows, lambda row: read_row(row, options.alpaca_separator), NAME)


def read_row(row: dict[str, Any], separator: str = "\n") -> list[dict[str, Any]]:
    if "instances" in row and "output" not in row:
        return _read_seed_task(row, separator)
    history = _read_history(row.get("history"))
    meta: dict[str, Any] = {}
    output = row.get("output", row.get("chosen"))
    if isinstance(output, list):  # rank-ordered replies, best first
        if not output or not all(isinstance(o, str) for o in output):
            raise RecordError("field 'output' must be a string or a non-empty list of strings")
        meta["ranked_outputs"] = output
        output = output[0]
    elif isinstance(output, dict):  # chosen given as a message object
        output = output.get("value", output.get("content"))
    if output is None:
        raise RecordError("missing required field 'output'")
    if not isinstance(output, str):
        raise RecordError(f"field 'output' must be a string, got {type(output).__name__}")
    if "rejected" in row:
        meta["rejected"] = row["rejected"]
    if not KNOWN_FIELDS.issuperset(row):  # (a set difference made a set for every row)
        meta["extra"] = {k: v for k, v in row.items() if k not in KNOWN_FIELDS}
    return [_make(row, separator, history, output, meta, row.get("id"))]


def _make(row, separator, history, output, meta, source_id) -> dict[str, Any]:
    instruction = field_text(row, "instruction", required=True)
    query = field_text(row, "input") or ""
    if query:
        meta["alpaca_input"] = query  # lets the writer split the prompt back exactly
    prompt = f"{instruction}{separator}{query}" if instruction and query else (instruction or query)
    messages = [*history, message("user", prompt), message("assistant", output)]
    system = field_text(row, "system") or None
    return new_record(messages, system=system, meta=meta, id=None if source_id is None else str(source_id))


def _read_history(value: Any) -> list[dict[str, Any]]:
    if not value:
        return []
    pairs = nested(value, "history", list) or []
    messages = []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise RecordError(f"history[{i}] must be an [instruction, response] pair of strings")
        messages += [message("user", pair[0]), message("assistant", pair[1])]
    return messages


def _read_seed_task(row: dict[str, Any], separator: str) -> list[dict[str, Any]]:
    instances = nested(row.get("instances"), "instances", list)
    if not instances:
        raise RecordError("seed task has no instances")
    extra = {k: v for k, v in row.items() if k not in KNOWN_FIELDS}
    records = []
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise RecordError(f"instances[{i}] must be an object")
        output = field_text(instance, "output", required=True)
        fields = {"instruction": row.get("instruction"), "input": instance.get("input")}
        meta = {"instance": i, **({"extra": extra} if extra else {})}
        source_id = None if row.get("id") is None else f"{row['id']}#{i}"
        records.append(_make(fields, separator, [], output, meta, source_id))
    return records


def write(record: dict[str, Any], options: WriteOptions) -> dict[str, Any]:
    record = lossy.require_no_tools(record, options.lossy, "Alpaca", options.notes)
    if options.lossy:
        record = lossy.fold_system_turns(record, options.notes)
        record = lossy.trim_trailing_turns(record, options.notes)
    check_alternation(record, "Alpaca")
    messages = record["messages"]
    history = [[messages[i]["content"], messages[i + 1]["content"]] for i in range(0, len(messages) - 2, 2)]
    instruction, query = _split_prompt(messages[-2]["content"], record["meta"], options.alpaca_separator)
    row = {
        "id": record["id"] if record["meta"].get("id_from") == "source" else None,
        "instruction": instruction,
        "input": query,
        "output": messages[-1]["content"],
        "system": record.get("system"),
        "history": history or None,
    }
    return drop_none(row)


def _split_prompt(prompt: str, meta: dict[str, Any], separator: str) -> tuple[str, str]:
    """Undo the instruction+input join when the reader recorded the input."""
    query = meta.get("alpaca_input")
    if query and isinstance(query, str) and prompt.endswith(query):
        head = prompt[: len(prompt) - len(query)]
        if head.endswith(separator):
            return head[: len(head) - len(separator)], query
        if not head:
            return "", query
    return prompt, ""
