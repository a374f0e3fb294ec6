"""Reading what an LLM wrote: scores, instruction lists, input/output pairs; and ROUGE-L.

Parsers return None (or an empty list) when they cannot read an answer; the caller counts
and keeps every such failure with the raw text, never drops it silently.
"""

from __future__ import annotations

import json
import re

import numba
import numpy as np

_SCORE_LINE = re.compile(r"score\s*[:=]?\s*\**\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def parse_score(text: str | None, low: float, high: float) -> float | None:
    """A score in [low, high]: from "Score: n" (the last one), a JSON {"score": n}, or the first
    number of the first line. A number outside the scale is a failure (a judge may answer 7.5
    on a 0-5 scale), as is prose without a number."""
    if not text:
        return None
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            value = float(json.loads(stripped).get("score"))
            return value if low <= value <= high else None
        except (ValueError, TypeError, AttributeError):
            pass
    found = _SCORE_LINE.findall(stripped)
    if found:
        value = float(found[-1])
    else:
        first = _NUMBER.search(stripped.splitlines()[0]) if stripped else None
        if first is None:
            return None
        value = float(first.group(0))
    return value if low <= value <= high else None


_TASK = re.compile(r"^\s*(?:task\s*)?\d+\s*[:.)]\s*(.+?)\s*$", re.IGNORECASE)


def parse_tasks(text: str | None) -> list[str]:
    """Instructions from a numbered list ("Task 9: ...", "9. ...")."""
    out = []
    for line in (text or "").splitlines():
        match = _TASK.match(line)
        if match and match.group(1).strip():
            out.append(match.group(1).strip())
    return out


def parse_instance(text: str | None) -> tuple[str, str] | None:
    """(input, output) from "Input: ... Output: ..." ("<noinput>" or nothing means no input)."""
    parts = re.split(r"(?i)output\s*:", text or "", maxsplit=1)
    if len(parts) < 2:
        return None
    head, output = parts
    given = re.sub(r"(?i)^\s*input\s*:", "", head).strip()
    if given.lower() in ("<noinput>", "noinput", "none", "n/a", ""):
        given = ""
    output = output.strip()
    return (given, output) if output else None


# --- ROUGE-L --------------------------------------------------------------------------


def tokens(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


@numba.njit(cache=True)
def _lcs(a: np.ndarray, b: np.ndarray) -> int:
    previous = np.zeros(len(b) + 1, dtype=np.int32)
    current = np.zeros(len(b) + 1, dtype=np.int32)
    for i in range(len(a)):
        for j in range(len(b)):
            if a[i] == b[j]:
                current[j + 1] = previous[j] + 1
            else:
                current[j + 1] = max(current[j], previous[j + 1])
        previous, current = current, previous
    return previous[len(b)]


@numba.njit(cache=True)
def _max_rouge_l(candidate: np.ndarray, pool: np.ndarray, offsets: np.ndarray) -> float:
    best = 0.0
    for k in range(offsets.shape[0] - 1):
        other = pool[offsets[k] : offsets[k + 1]]
        if len(other) == 0 or len(candidate) == 0:
            continue
        lcs = _lcs(candidate, other)
        if lcs == 0:
            continue
        precision, recall = lcs / len(other), lcs / len(candidate)
        f = 2 * precision * recall / (precision + recall)
        if f > best:
            best = f
    return best


class RougePool:
    """The instructions kept so far, as token ids, for the highest ROUGE-L F1 of a new one
    against all of them (a compiled LCS: 50k instructions take milliseconds per candidate)."""

    def __init__(self) -> None:
        self.vocabulary: dict[str, int] = {}
        self._flat = np.zeros(1024, dtype=np.int64)  # grows by doubling: adding stays cheap
        self._offsets = np.zeros(1024, dtype=np.int64)
        self.size = 0  # instructions in the pool

    def _encode(self, text: str) -> np.ndarray:
        return np.array([self.vocabulary.setdefault(t, len(self.vocabulary)) for t in tokens(text)], dtype=np.int64)

    def best(self, text: str) -> float:
        end = self._offsets[self.size]
        return float(_max_rouge_l(self._encode(text), self._flat[:end], self._offsets[: self.size + 1]))

    def add(self, text: str) -> None:
        ids = self._encode(text)
        start = self._offsets[self.size]
        while start + len(ids) > len(self._flat):
            self._flat = np.concatenate([self._flat, np.zeros_like(self._flat)])
        if self.size + 2 > len(self._offsets):
            self._offsets = np.concatenate([self._offsets, np.zeros_like(self._offsets)])
        self._flat[start : start + len(ids)] = ids
        self.size += 1
        self._offsets[self.size] = start + len(ids)
