"""``datakit inspect``: what is in a file, before you train on it."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import xxhash

from datakit.convert import open_records
from datakit.formats import Read, ReadOptions, Rejected, Skipped, Used
from datakit.text import conversation, detect_language, record_text


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


SAMPLE = 500  # records kept (a seeded reservoir sample) for the page's languages and browsable sample


def inspect(path: str | Path, from_format: str | None = None, options: ReadOptions | None = None,
            detail: bool = False) -> dict[str, Any]:  # fmt: skip
    """Detected format, counts, turns, roles, lengths (characters), empty fields, exact duplicates.

    With ``detail`` (the HTML page) also: every record's turn count and turn lengths
    (``values``), and a seeded sample of records (``sample``) with their languages."""
    fmt, detected, outcomes = open_records(path, from_format, options)
    reservoir: list[tuple[int, dict[str, Any]]] = []
    rng = random.Random(0)
    roles: Counter = Counter()
    turns: list[int] = []
    lengths: dict[str, list[int]] = {"user": [], "assistant": [], "system": [], "tool": []}
    empty: Counter = Counter()
    reasons: Counter = Counter()
    first_seen: dict[str, tuple[int, str]] = {}  # content hash -> (record number, id) of its first copy
    duplicates: list[dict[str, Any]] = []
    rows = rejected = skipped = records = with_tools = with_system = 0
    last_row = None
    for outcome in outcomes:
        if isinstance(outcome, Read):
            key = (outcome.row.file, outcome.row.index)
            rows += key != last_row
            last_row = key
            records += 1
            rec = outcome.record
            if detail:  # reservoir sampling: every record has the same chance, in one pass
                if len(reservoir) < SAMPLE:
                    reservoir.append((records - 1, rec))
                elif (slot := rng.randrange(records)) < SAMPLE:
                    reservoir[slot] = (records - 1, rec)
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
            if digest in first_seen:  # by record number: ids made from the content repeat too
                first, first_id = first_seen[digest]
                duplicates.append({"record": records, "id": rec["id"], "repeats": first, "repeats_id": first_id})
            else:
                first_seen[digest] = (records, rec["id"])
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
    report = {
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
    if detail:
        report["values"] = {"turns": turns, "length_chars": {role: v for role, v in lengths.items() if v}}
        sample = [rec for _, rec in sorted(reservoir, key=lambda pair: pair[0])]
        report["sample"] = sample
        report["languages"] = dict(Counter(detect_language(record_text(r)) or "too short to tell" for r in sample))
    return report


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
    for d in report["duplicate_examples"]:
        lines.append(f"  record {d['record']} ({d['id']}) repeats record {d['repeats']} ({d['repeats_id']})")
    for reason, n in report["reasons"].items():
        lines.append(f"  {n:>6}  {reason}")
    return "\n".join(lines)


def write_page(report: dict[str, Any], path: str | Path) -> Path:
    """The dataset card: ``report`` from ``inspect(..., detail=True)`` as one self-contained HTML page."""
    from datakit.html import Cell, Page, bar_chart, details, esc, figure, histogram, pre, table

    values, sample = report["values"], report["sample"]
    page = Page(f"Dataset card: {Path(report['path']).name}",
                f"{esc(report['path'])} · read as {esc(report['detected'] or report['format'])}")  # fmt: skip
    page.section("Overview", "overview")
    overview = [["rows read", f"{report['rows']:,}"], ["records", f"{report['records']:,}"],
                ["rows rejected (bad data)", f"{report['rejected']:,}"], ["rows skipped (by policy)", f"{report['skipped']:,}"],
                ["records with a system prompt", f"{report['records_with_system']:,}"],
                ["records with tools", f"{report['records_with_tools']:,}"],
                ["exact duplicates", f"{report['exact_duplicates']:,}"]]  # fmt: skip
    page.add(table("What the file holds", ["", "count"], overview, sortable=False))
    if report["reasons"]:
        page.add(table("Rows not read as records, by reason", ["reason", "rows"],
                       [[reason, Cell(f"{n:,}", n, css="num")] for reason, n in report["reasons"].items()]))  # fmt: skip

    page.section("Turns and lengths", "lengths",
                 "Distributions over every record: messages per record, and characters per turn by role.")  # fmt: skip
    charts = [figure(histogram(values["turns"], "Messages per record", "messages", bins=min(20, max(values["turns"], default=1))),
                     "How many messages each record has (user, assistant and tool turns).")]  # fmt: skip
    for role, lengths in values["length_chars"].items():
        charts.append(figure(histogram(lengths, f"{role} turn length", "characters"),
                             f"Characters per {esc(role)} turn ({len(lengths):,} turns)."))  # fmt: skip
    page.add(f'<div class="figs">{"".join(charts)}</div>')
    stats = [[role, *(Cell(f"{s[k]:,}", s[k], css="num") for k in ("min", "p50", "mean", "p95", "max"))]
             for role, s in report["length_chars"].items()]  # fmt: skip
    page.add(table("Characters per turn, by role", ["role", "min", "median", "mean", "95th percentile", "max"], stats))

    page.section("Roles and languages", "roles",
                 f"Languages are detected (langdetect) on a seeded sample of {len(sample):,} records.")  # fmt: skip
    roles = sorted(report["roles"].items(), key=lambda kv: -kv[1])
    languages = sorted(report["languages"].items(), key=lambda kv: -kv[1])[:15]
    page.add('<div class="figs">'
             + figure(bar_chart(roles, "Messages by role", "messages"), "Messages of each role over all records.")
             + figure(bar_chart(languages, "Languages (sample)", "records"), "Languages of the sampled records.")
             + "</div>")  # fmt: skip

    page.section("Exact duplicates", "duplicates")
    if report["duplicate_examples"]:
        rows = [[Cell(f"{d['record']:,}", d["record"], css="num"), Cell(esc(d["id"])),
                 Cell(f"{d['repeats']:,}", d["repeats"], css="num"), Cell(esc(d["repeats_id"]))]
                for d in report["duplicate_examples"]]  # fmt: skip
        page.add(f"<p>{report['exact_duplicates']:,} records repeat an earlier one word for word (system prompt and "
                 "turns). The first few:</p>" + table("Records that repeat an earlier one (numbered from 1 in file order)",
                                                  ["record", "its id", "repeats record", "whose id is"], rows))  # fmt: skip
    else:
        page.add("<p>No record repeats another word for word.</p>")

    page.section("Sample", "sample",
                 f"{len(sample):,} records drawn at random (seeded), in file order. Sort by a column; open a row "
                 "to read the whole record.")  # fmt: skip
    rows = []
    for record in sample:
        text = record_text(record)
        first = next((m["content"] or "" for m in record["messages"] if m["role"] == "user"), "")
        rows.append([Cell(esc(record["id"])), Cell(str(len(record["messages"])), len(record["messages"]), css="num"),
                     Cell(f"{len(text):,}", len(text), css="num"),
                     Cell(details(esc(first[:120]) or "(no user turn)", pre(conversation(record))))])  # fmt: skip
    page.add(table(f"Sampled records ({len(sample):,})", ["id", "messages", "characters", "first user turn"], rows))
    return page.write(path)
