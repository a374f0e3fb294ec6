"""An arm's data: its sources mixed by weight, then each step in order.

The data steps are the CLI's operations (dedupe, filter, select, synth), through datakit's
Python API with the option names of the CLI command, and two that exist for the statistics:
``shuffle`` (the same records in another order: the null arm) and ``corrupt`` (damage of a known
kind: the positive control). Every step reads a file and writes a file; the run caches each
step's output under a hash of everything before it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import datakit
from datakit.convert import read_records


def settings_for(name: str, options: dict[str, Any]) -> Any:
    """The settings object of a step; raises TypeError/ValueError naming a bad option."""
    opts = {k.replace("-", "_"): v for k, v in options.items()}
    if name == "dedupe":
        from datakit.dedupe import Settings

        return _build(Settings, opts)
    if name == "select":
        from datakit.select import Settings

        return _build(Settings, opts)
    if name == "filter":
        from datakit.filter import Limits, parse_rules

        rules = opts.pop("rules", None)
        annotate = bool(opts.pop("annotate", False))
        if isinstance(rules, list):
            rules = ",".join(rules)
        if "languages" in opts and isinstance(opts["languages"], str):
            opts["languages"] = tuple(opts["languages"].split(","))
        return parse_rules(rules), _build(Limits, opts), annotate
    if name == "shuffle":
        return _build(Shuffle, opts)
    if name == "corrupt":
        return _build(Corrupt, opts)
    if name == "synth":
        from datakit.synth import ClientSettings, MethodSettings

        method = opts.pop("method", None)
        if method is None:
            raise ValueError("missing option 'method' (self-instruct, evol, backtranslate or judge)")
        client_keys = {f for f in ClientSettings.__dataclass_fields__}
        client = _build(ClientSettings, {k: v for k, v in opts.items() if k in client_keys})
        return method, client, _build(MethodSettings, {k: v for k, v in opts.items() if k not in client_keys})
    raise ValueError(f"unknown step {name!r}")


@dataclass
class Shuffle:
    """The same records in another order: a null arm's data (an A/A comparison)."""

    seed: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed: expected an integer, got {self.seed!r}")


@dataclass
class Corrupt:
    """Damage of a known kind, so that a recipe can check the harness sees a real effect.

    shuffle_responses: the share of records whose last answer is handed to another record of
    that share (answers rotated among them): right language, wrong answer.
    shuffle_words: the share of records whose answers have their words put in random order:
    the language itself is broken, so a model trained on it gets worse at every answer.
    """

    shuffle_responses: float = 0.0
    shuffle_words: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("shuffle_responses", "shuffle_words"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{key}: expected a share between 0 and 1, got {value!r}")
        if not (self.shuffle_responses or self.shuffle_words):
            raise ValueError("nothing to corrupt: set shuffle_responses or shuffle_words above 0")


def shuffle(records: list[dict[str, Any]], settings: Shuffle) -> list[dict[str, Any]]:
    order = np.random.default_rng(settings.seed).permutation(len(records))
    return [records[i] for i in order]


def _answers(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in record["messages"] if m["role"] == "assistant" and isinstance(m.get("content"), str)]


def corrupt(records: list[dict[str, Any]], settings: Corrupt) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """A damaged copy of the records (the input is not changed), and how many of each kind."""
    rng = np.random.default_rng(settings.seed)
    out = [{**r, "messages": [dict(m) for m in r["messages"]]} for r in records]
    with_answer = [i for i, r in enumerate(out) if _answers(r)]
    counts = {"responses_swapped": 0, "words_shuffled": 0}
    chosen = sorted(rng.choice(with_answer, size=round(settings.shuffle_responses * len(with_answer)), replace=False))
    if len(chosen) > 1:  # rotate by one: every chosen record gets another's answer
        last = [_answers(out[i])[-1]["content"] for i in chosen]
        for k, i in enumerate(chosen):
            _answers(out[i])[-1]["content"] = last[k - 1]
        counts["responses_swapped"] = len(chosen)
    chosen = rng.choice(with_answer, size=round(settings.shuffle_words * len(with_answer)), replace=False)
    words_rng = random.Random(settings.seed)
    for i in sorted(chosen):
        for message in _answers(out[i]):
            words = message["content"].split()
            words_rng.shuffle(words)
            message["content"] = " ".join(words)
        counts["words_shuffled"] += 1
    return out, counts


def _build(cls: type, opts: dict[str, Any]) -> Any:
    allowed = set(cls.__dataclass_fields__)
    for key in opts:
        if key not in allowed:
            raise TypeError(f"unknown option {key!r}; options: {', '.join(sorted(allowed))}")
    return cls(**opts)


def apply(name: str, options: dict[str, Any], source: Path, output: Path) -> dict[str, Any]:
    """Run one step from ``source`` to ``output`` (canonical JSONL); returns its summary."""
    settings = settings_for(name, options)
    common = {"to": "canonical"}
    if name == "dedupe":
        from datakit.dedupe import dedupe

        summary = dedupe(source, output, settings=settings, clusters=output.with_suffix(".clusters.jsonl"), **common)
    elif name == "select":
        from datakit.select import select

        summary = select(source, output, settings=settings, **common)
    elif name in ("shuffle", "corrupt"):
        records = list(read_records(source, "canonical"))
        if name == "shuffle":
            changed, counts = shuffle(records, settings), {}
        else:
            changed, counts = corrupt(records, settings)
        datakit.write_records(changed, output, to="canonical")
        return {"read": len(records), "written": len(changed), **counts}
    elif name == "filter":
        from datakit.filter import filter_file

        rules, limits, annotate = settings
        summary = filter_file(source, output, rules=rules, limits=limits, annotate=annotate,
                              rejects=output.with_suffix(".rejects.jsonl"), **common)  # fmt: skip
    else:
        from datakit.synth import synth

        method, client, method_settings = settings
        summary = synth(method, source, output, client, method_settings, rejects=output.with_suffix(".rejects.jsonl"))
        if summary.stopped:
            raise RuntimeError(f"synth stopped by its budget after {summary}; raise the budget and run again")
    return summary.to_dict()


def mix(sources: list, output: Path, seed: int = 0) -> dict[str, Any]:
    """The sources as one canonical file: weight w takes a seeded share w of a source (w < 1)
    or repeats it (whole part) plus a seeded share of the remainder (w > 1)."""
    rng = np.random.default_rng(seed)
    records, counts = [], []
    for source in sources:
        rows = list(read_records(source.path, source.format))
        whole, part = int(math.floor(source.weight)), source.weight - math.floor(source.weight)
        chosen = list(range(len(rows))) * whole
        if part > 0:
            chosen += sorted(rng.choice(len(rows), size=round(part * len(rows)), replace=False).tolist())
        records += [rows[i] for i in chosen]
        counts.append({"path": str(source.path), "records": len(rows), "weight": source.weight, "taken": len(chosen)})
    datakit.write_records(records, output, to="canonical")
    return {"sources": counts, "records": len(records)}
