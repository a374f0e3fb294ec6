"""What the report shows of each arm's data and answers, copied into the run folder at the end of
a run (``cards/ARM.json``, ``answers.json``), so that the report needs nothing from the cache.

An arm's data card: its sources with their mixing weights, then each step with its report
(read, written, removed by reason) and a few examples read from the step's side outputs:
records dedupe merged (the kept one beside those it removed, with their similarity), records
the filter rejected (with the rule and reason), and select's 2-D map with a snippet of each
record to read.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from datakit.convert import read_records
from datakit.text import conversation

EXAMPLES = 4  # merged clusters or rejected records shown per step
TEXT = 1200  # characters of a record shown in an example
MAP_TEXT = 400  # characters of a record shown on the selection map


def records_at(path: Path, positions: set[int]) -> dict[int, dict[str, Any]]:
    """The records of a canonical file at the given positions (one pass over the file)."""
    found = {}
    for position, record in enumerate(read_records(path, "canonical")):
        if position in positions:
            found[position] = record
            if len(found) == len(positions):
                break
    return found


def merged_examples(clusters_file: Path, source: Path) -> list[dict[str, Any]]:
    """A few clusters dedupe merged, near-duplicates first (exact copies say less)."""
    if not clusters_file.exists():
        return []
    with open(clusters_file, encoding="utf-8") as f:
        clusters = [json.loads(line) for line in f if line.strip()]
    clusters.sort(key=lambda c: (c["stage"] == "exact", -len(c["removed"])))
    chosen = clusters[:EXAMPLES]
    texts = records_at(source, {c["kept_index"] for c in chosen} | {r["index"] for c in chosen for r in c["removed"]})
    return [
        {
            "stage": c["stage"],
            "kept": {"id": c["kept"], "text": conversation(texts[c["kept_index"]], TEXT)},
            "removed": [
                {"id": r["id"], "similarity": r["similarity"], "text": conversation(texts[r["index"]], TEXT)}
                for r in c["removed"][:3]
            ],  # fmt: skip
            "more": max(0, len(c["removed"]) - 3),
        }
        for c in chosen
    ]


def rejected_examples(rejects_file: Path) -> list[dict[str, Any]]:
    """The first rejected record of each rule, then the second..., up to EXAMPLES (filter rows
    name a rule; synth rows give a reason only, and the record where there was one)."""
    if not rejects_file.exists():
        return []
    by_rule: dict[str, list[dict[str, Any]]] = {}
    with open(rejects_file, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            rule = row.get("rule") or row["reason"].split(":")[0]
            if len(by_rule.setdefault(rule, [])) < EXAMPLES:
                record = row.get("record")
                by_rule[rule].append({"id": row.get("id") or (record or {}).get("id") or row.get("parent", "-"),
                                      "rule": rule, "reason": row["reason"],
                                      "text": conversation(record, TEXT) if record else ""})  # fmt: skip
    rounds = itertools.zip_longest(*by_rule.values())  # the first of each rule, then the second...
    return [row for round_ in rounds for row in round_ if row is not None][:EXAMPLES]


def selection_map(map_file: Path, source: Path) -> dict[str, Any] | None:
    """select's projection, each point with a label and a snippet of its record."""
    if not map_file.exists():
        return None
    projection = json.loads(map_file.read_text())
    texts = records_at(source, set(projection["positions"]))
    records = [{"label": f"{'chosen' if p[2] else 'not chosen'}: {texts[i]['id']}",
                "text": conversation(texts[i], MAP_TEXT)}
               for i, p in zip(projection["positions"], projection["points"], strict=True)]  # fmt: skip
    return {"title": projection["title"], "records": projection["records"], "points": projection["points"],
            "texts": records}  # fmt: skip


def data_card(arm: str, chain: list[tuple[str, dict[str, Any], Path, Path]]) -> dict[str, Any]:
    """An arm's card from its cached data files: ``chain`` is (step, options, input, output), the
    mix first."""
    card: dict[str, Any] = {"arm": arm, "sources": [], "records": 0, "steps": []}
    for step, options, source, output in chain:
        summary = json.loads(output.with_suffix(".summary.json").read_text())
        if step == "mix":
            card["sources"], card["records"] = summary["sources"], summary["records"]
            continue
        entry: dict[str, Any] = {"step": step, "options": options, "report": summary}
        if step == "dedupe":
            entry["merged"] = merged_examples(output.with_suffix(".clusters.jsonl"), source)
        elif step in ("filter", "synth"):
            entry["rejected"] = rejected_examples(output.with_suffix(".rejects.jsonl"))
        elif step == "select":
            entry["map"] = selection_map(output.with_suffix(".map.json"), source)
        card["steps"].append(entry)
    return card


def side_by_side(answer_files: dict[str, Path], heldout: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each held-out prompt: the prompt, the reference answer and every arm's answer."""
    by_item: dict[int, dict[str, Any]] = {}
    for arm, path in answer_files.items():
        for row in json.loads(path.read_text()):
            record = heldout[row["item"]]
            entry = by_item.setdefault(row["item"], {
                "item": row["item"], "id": record["id"],
                "prompt": conversation({**record, "messages": record["messages"][:-1]}, TEXT),
                "reference": record["messages"][-1].get("content") or "", "answers": {},
            })  # fmt: skip
            entry["answers"][arm] = row["answer"]
    return [by_item[i] for i in sorted(by_item)]
