"""One module per format, each with ``read`` (rows -> canonical records) and ``write``
(canonical record -> row), plus ``matches`` for detection and ``SCHEMA`` for tables."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from datakit.errors import DatakitError
from datakit.formats import alpaca, canonical, oasst, openai, p3, sharegpt
from datakit.formats._common import Read, ReadOptions, Rejected, Skipped, Used, WriteOptions

FORMATS: dict[str, ModuleType] = {
    "canonical": canonical,
    "alpaca": alpaca,
    "sharegpt": sharegpt,
    "openai": openai,
    "p3": p3,
    "oasst": oasst,
}

# Checked in this order; a row that matches an earlier format is not counted for later
# ones (a canonical row also has OpenAI-like messages, a ShareGPT row with role/content
# turns and ShareGPT-only roles also looks like chat messages).
PRECEDENCE = ("canonical", "oasst", "sharegpt", "openai", "alpaca", "p3")

__all__ = [
    "FORMATS",
    "FormatError",
    "Read",
    "ReadOptions",
    "Rejected",
    "Skipped",
    "Used",
    "WriteOptions",
    "detect",
    "get",
]


class FormatError(DatakitError, ValueError):
    """The input's format is unknown, or could be more than one."""


def get(name: str) -> ModuleType:
    try:
        return FORMATS[name]
    except KeyError:
        raise FormatError(f"unknown format {name!r}; choose one of {', '.join(FORMATS)}") from None


def detect(rows: list[dict[str, Any]], source: str = "input") -> tuple[str, str]:
    """(format, explanation) from a sample of rows; raises FormatError when unsure."""
    if not rows:
        raise FormatError(f"{source}: no records to detect the format from; pass --from")
    counts = dict.fromkeys(PRECEDENCE, 0)
    for row in rows:
        for name in PRECEDENCE:
            if FORMATS[name].matches(row):
                counts[name] += 1
                break
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    (best, n), (second, m) = ranked[0], ranked[1]
    if n == 0:
        fields = ", ".join(sorted(rows[0].keys())[:12])
        raise FormatError(
            f"{source}: no known format has the fields [{fields}]; pass --from with one of {', '.join(FORMATS)}"
        )
    if m > 0 and m * 4 > n:
        raise FormatError(
            f"{source}: ambiguous format ({best} in {n}, {second} in {m} of {len(rows)} sampled records); pass --from"
        )
    return best, f"detected {best} ({n} of {len(rows)} sampled records match)"
