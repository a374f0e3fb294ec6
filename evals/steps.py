"""An arm's data: its sources mixed by weight, then each step in order.

The steps are datakit's registered steps (datakit.pipeline): dedupe, filter, select, synth, and
shuffle and corrupt for the statistics (a null arm and a positive control). A step's recipe keys
are its config fields, the same names as its CLI flags. Every step reads a file and writes a
file; the run caches each output under a hash of everything before it and the step's settings.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

import datakit
from datakit import pipeline
from datakit.convert import read_records
from datakit.errors import StepError
from datakit.options import StepConfig


def config_for(name: str, options: dict[str, Any]) -> StepConfig:
    """The step's config from recipe keys; raises OptionError naming a bad key."""
    return pipeline.get(name).Config.from_mapping(options)


def cache_identity(name: str, options: dict[str, Any]) -> tuple:
    """What decides the step's output: its name, config version and every setting (defaults
    included, so a changed default is a new cache entry)."""
    cls = pipeline.get(name)
    return name, cls.Config.VERSION, config_for(name, options).to_dict()


def apply(name: str, options: dict[str, Any], source: Path, output: Path) -> dict[str, Any]:
    """Run one step from ``source`` to ``output`` (canonical JSONL); returns its report."""
    cls = pipeline.get(name)
    sides = {side: str(output.with_suffix(spec.suffix)) for side, spec in cls.side_outputs.items()}
    report = pipeline.run(cls, source, output, config=config_for(name, options), to="canonical",
                          side_paths=sides).report  # fmt: skip
    if report.stopped:  # a partial arm would be measured (and cached) as if it were whole
        for path in (output, *sides.values()):
            Path(path).unlink(missing_ok=True)
        raise StepError(f"{name} stopped early ({report.stopped}); raise the budget and run again")
    return report.to_dict()


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
