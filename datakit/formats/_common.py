"""What every format module shares: read outcomes, options and small parsing helpers."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from datakit.errors import shown
from datakit.io import SourceRow
from datakit.record import RecordError, new_record, validate


@dataclass
class ReadOptions:
    """Choices a reader makes where a format leaves room (CLI flags map onto these)."""

    alpaca_separator: str = "\n"  # instruction + separator + input, as LLaMA-Factory does
    oasst_threads: str = "all"  # "all" root-to-leaf threads, or "top" ranked reply at each step
    oasst_lang: tuple[str, ...] | None = None  # keep only these languages (None: all)
    oasst_keep_synthetic: bool = False
    notes: Counter = field(default_factory=Counter)  # counts a reader wants in the summary


@dataclass
class WriteOptions:
    lossy: bool = False  # apply the documented lossy rules instead of rejecting
    alpaca_separator: str = "\n"
    notes: Counter = field(default_factory=Counter)


@dataclass(slots=True)
class Rejected:
    """An input row (or record) that could not be converted, with the reason."""

    row: SourceRow
    reason: str


@dataclass(slots=True)
class Skipped:
    """An input row that is valid but left out by a documented policy (not an error)."""

    row: SourceRow
    reason: str


@dataclass(slots=True)
class Used:
    """An input row whose content went into records made from other rows (an OpenAssistant
    message on the path to a later reply, in the flat message table)."""

    row: SourceRow


@dataclass(slots=True)
class Read:
    """One canonical record made from an input row (a row may give several)."""

    row: SourceRow
    record: dict[str, Any]


Outcome = Read | Used | Rejected | Skipped


def read_each(
    rows: Iterable[SourceRow],
    read_row: Callable[[dict[str, Any]], list[dict[str, Any]]],
    source_format: str,
) -> Iterator[Outcome]:
    """Apply a one-row reader to every row: stamp provenance, validate, turn errors into rejects."""
    for row in rows:
        if row.error is not None:
            yield Rejected(row, row.error)
            continue
        try:
            records = read_row(row.data)
            for record in records:
                validate(record)
                check_record_nesting(record)
        except RecordError as exc:
            yield Rejected(row, str(exc))
            continue
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            # A wrong type deep inside a row: report it as a reason, never crash.
            yield Rejected(row, f"malformed {source_format} record: {type(exc).__name__}: {exc}")
            continue
        for record in records:
            stamp_source(record, row, source_format)
            yield Read(row, record)


def stamp_source(record: dict[str, Any], row: SourceRow, source_format: str) -> None:
    meta = record["meta"]
    if "source" not in meta:  # a record read again keeps where it first came from
        meta["source"] = row.location(source_format)


def field_text(row: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    """A string field; a missing or null optional field is None, a wrong type is an error."""
    value = row.get(key)
    if value is None:
        if required:
            raise RecordError(f"missing required field {key!r}")
        return None
    if not isinstance(value, str):
        raise RecordError(f"field {key!r} must be a string, got {type(value).__name__}")
    return value


# orjson, which writes every JSON output, stops at 255 levels of nesting; a record keeps free-form
# values (unknown fields, tools, preference pairs) a few levels down, so deeper ones are refused
# when read, with the field's name, rather than failing when written.
MAX_NESTING = 200


def json_depth(value: Any) -> int:
    """Levels of lists and objects in ``value`` (0 for a scalar), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def check_nesting(value: Any, what: str) -> None:
    """``what`` names the value in the error."""
    if isinstance(value, (dict, list)) and json_depth(value) > MAX_NESTING:
        raise RecordError(f"{what} is nested more than {MAX_NESTING} levels deep, more than datakit can write")


def check_record_nesting(record: dict[str, Any]) -> None:
    """The free-form parts of a record (tools, and whatever a reader kept in meta) can be written.
    Only lists and objects are looked at, and named only then: this runs for every record."""
    check_nesting(record.get("tools"), "field 'tools'")
    for key, value in record["meta"].items():
        if not isinstance(value, (dict, list)):
            continue
        if key == "extra" and isinstance(value, dict):
            for name, item in value.items():
                if isinstance(item, (dict, list)):
                    check_nesting(item, f"field {shown(name)}")
        else:
            check_nesting(value, f"field {shown(key)}")


def optional_text(value: Any, what: str) -> str | None:
    """A string or None; anything else is an error naming ``what``."""
    if value is not None and not isinstance(value, str):
        raise RecordError(f"{what} must be a string, got {type(value).__name__}")
    return value


def dump_json(value: Any, what: str) -> str:
    """``value`` as JSON text (non-ASCII kept); a value nested too deeply to write is an error."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except RecursionError:
        raise RecordError(f"{what}: nested too deeply to write as JSON") from None
    except (TypeError, ValueError) as exc:
        raise RecordError(f"{what}: cannot be written as JSON ({exc})") from None


def nested(value: Any, key: str, expect: type) -> Any:
    """A list/dict field that may arrive as JSON text (CSV, Parquet, ShareGPT's `tools`)."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise RecordError(f"field {key!r} is not valid JSON: {exc}") from None
    if value is not None and not isinstance(value, expect):
        raise RecordError(f"field {key!r} must be a {expect.__name__}, got {type(value).__name__}")
    return value


def parse_tools(value: Any) -> list | None:
    """Tool schemas: a list, or JSON text of a list (ShareGPT stores it so); empty means none."""
    tools = nested(value, "tools", list)
    return tools or None


def finish_record(
    row: dict[str, Any],
    messages: list[dict[str, Any]],
    *,
    system: str | None,
    meta: dict[str, Any],
    known_fields: set[str],
) -> dict[str, Any]:
    """The record of a chat row: its tools and id, and its unknown fields kept in ``meta["extra"]``."""
    if not known_fields.issuperset(row):
        meta["extra"] = {k: v for k, v in row.items() if k not in known_fields}
    source_id = row.get("id")
    return new_record(
        messages,
        system=system,
        tools=parse_tools(row.get("tools")),
        meta=meta,
        id=None if source_id is None else str(source_id),
    )


def drop_none(row: dict[str, Any]) -> dict[str, Any]:
    """JSON outputs leave optional fields out rather than writing null."""
    return {k: v for k, v in row.items() if v is not None}
