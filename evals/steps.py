"""An arm's data: its sources mixed by weight, then each step (the CLI's operations) in order.

Every step reads a file and writes a file through datakit's Python API with the option names
of the CLI command; the run caches each step's output under a hash of everything before it.
"""

from __future__ import annotations

import math
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
    if name == "synth":
        from datakit.synth import ClientSettings, MethodSettings

        method = opts.pop("method", None)
        if method is None:
            raise ValueError("missing option 'method' (self-instruct, evol, backtranslate or judge)")
        client_keys = {f for f in ClientSettings.__dataclass_fields__}
        client = _build(ClientSettings, {k: v for k, v in opts.items() if k in client_keys})
        return method, client, _build(MethodSettings, {k: v for k, v in opts.items() if k not in client_keys})
    raise ValueError(f"unknown step {name!r}")


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
