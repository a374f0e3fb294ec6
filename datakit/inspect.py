"""``datakit inspect``: what is in a file, before you train on it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import xxhash

from datakit.convert import open_records
from datakit.formats import Read, ReadOptions, Rejected, Skipped, Used


def _stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "p50": 0, "mean": 0.0, "p95": 0, "max": 0}
    ordered = sorted(values)
    return {
        "min": ordered[0],
        "p50": ordered[len(ordered) // 2],
        "mean": round(sum(ordered) / len(ordered), 1),
        "p95": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
        "max": ordered[-1],
    }


def inspect(path: str | Path, from_format: str | None = None, options: ReadOptions | None = None) -> dict[str, Any]:
    """Detected format, counts, turns, roles, lengths (characters), empty fields, exact duplicates."""
    fmt, detected, outcomes = open_records(path, from_format, options)
    roles: Counter = Counter()
    turns: list[int] = []
    lengths: dict[str, list[int]] = {"user": [], "assistant": [], "system": [], "tool": []}
    empty: Counter = Counter()
    reasons: Counter = Counter()
    first_seen: dict[str, str] = {}
    duplicates: list[tuple[str, str]] = []
    rows = rejected = skipped = records = with_tools = with_system = 0
    last_row = None
    for outcome in outcomes:
        if isinstance(outcome, Read):
            key = (outcome.row.file, outcome.row.index)
            rows += key != last_row
            last_row = key
            records += 1
            rec = outcome.record
            turns.append(len(rec["messages"]))
            if rec.get("system") is not None:
                with_system += 1
                lengths["system"].append(len(rec["system"]))
                if not rec["system"].strip():
                    empty["system"] += 1
            if rec.get("tools"):
                with_tools += 1
            for m in rec["messages"]:
                roles[m["role"]] += 1
                if m.get("tool_calls"):
                    roles["assistant (tool calls)"] += 1
                    continue
                lengths[m["role"]].append(len(m["content"] or ""))
                if not (m["content"] or "").strip():
                    empty[m["role"]] += 1
            turns_text = [(m["role"], m["content"], m.get("tool_calls")) for m in rec["messages"]]
            digest = xxhash.xxh3_64_hexdigest(orjson.dumps([rec.get("system"), turns_text]))
            if digest in first_seen:
                duplicates.append((first_seen[digest], rec["id"]))
            else:
                first_seen[digest] = rec["id"]
        elif isinstance(outcome, Used):
            rows += 1
        elif isinstance(outcome, Skipped):
            rows += 1
            skipped += 1
            reasons[f"skipped: {outcome.reason}"] += 1
        elif isinstance(outcome, Rejected):
            rows += 1
            rejected += 1
            reasons[f"rejected: {outcome.reason}"] += 1
    return {
        "path": str(path),
        "format": fmt,
        "detected": detected,
        "rows": rows,
        "records": records,
        "rejected": rejected,
        "skipped": skipped,
        "reasons": dict(reasons.most_common(20)),
        "turns": _stats(turns),
        "roles": dict(roles),
        "records_with_system": with_system,
        "records_with_tools": with_tools,
        "length_chars": {role: _stats(v) for role, v in lengths.items() if v},
        "empty_turns": dict(empty),
        "exact_duplicates": len(duplicates),
        "duplicate_examples": duplicates[:5],
    }


def render(report: dict[str, Any]) -> str:
    """The report as aligned text for a terminal."""
    lines = [f"{report['path']}: {report['detected'] or report['format']}"]
    lines.append(
        f"rows {report['rows']}  records {report['records']}"
        f"  rejected {report['rejected']}  skipped {report['skipped']}"
    )
    t = report["turns"]
    lines.append(f"turns per record: min {t['min']}  median {t['p50']}  mean {t['mean']}  max {t['max']}")
    lines.append("roles: " + "  ".join(f"{k} {v}" for k, v in sorted(report["roles"].items())))
    lines.append(f"with system prompt {report['records_with_system']}  with tools {report['records_with_tools']}")
    lines.append("length in characters:     min     p50     mean      p95      max")
    for role, s in report["length_chars"].items():
        lines.append(f"  {role:<20} {s['min']:>7} {s['p50']:>7} {s['mean']:>8} {s['p95']:>8} {s['max']:>8}")
    lines.append("empty turns: " + ("  ".join(f"{k} {v}" for k, v in report["empty_turns"].items()) or "none"))
    lines.append(f"exact duplicates: {report['exact_duplicates']}")
    for first, dup in report["duplicate_examples"]:
        lines.append(f"  {dup} repeats {first}")
    for reason, n in report["reasons"].items():
        lines.append(f"  {n:>6}  {reason}")
    return "\n".join(lines)
