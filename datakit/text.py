"""The text a dedupe or selection step looks at, and how it is normalised.

``--on`` picks the roles: ``prompt`` (system prompt and user turns), ``response``
(assistant turns) or ``all``. A multi-turn record is one text: its chosen turns in order.
Tool calls count as assistant text (their name and arguments).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import polars as pl

ON_CHOICES = ("prompt", "response", "all")
# One token per CJK character (those scripts put no spaces between words), else runs of
# letters and digits. Digits are kept: "17+25" and "38+4" must stay different texts.
TOKEN_SEED, EXACT_SEED = 0x70C3, 0xE8AC7
# Whitespace collapsed to one space: only the runs that are not already one space are replaced
# (two or more characters, or one that is not a space), 2.6x faster than replacing every run.
WHITESPACE_RUN = r"\s\s+|[^\S ]"
WORD_PATTERN = r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]|[^\W\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]+"


def record_text(record: dict[str, Any], on: str = "all") -> str:
    """The chosen turns of a record joined into one text."""
    if on not in ON_CHOICES:
        raise ValueError(f"--on must be one of {', '.join(ON_CHOICES)}, not {on!r}")
    parts = []
    if on in ("prompt", "all") and record.get("system"):
        parts.append(record["system"])
    for m in record["messages"]:
        is_response = m["role"] == "assistant"
        if (on == "prompt" and is_response) or (on == "response" and not is_response):
            continue
        if m.get("content"):
            parts.append(m["content"])
        for call in m.get("tool_calls") or []:
            parts.append(f"{call['name']} {call['arguments']}")
    return "\n".join(parts)


def conversation(record: dict[str, Any], limit: int | None = None) -> str:
    """A record as a reader sees it: one ``role: text`` paragraph a turn, cut at ``limit`` characters."""
    parts = [f"system: {record['system']}"] if record.get("system") else []
    for m in record["messages"]:
        calls = "".join(f"\n[call {c['name']}({c['arguments']})]" for c in m.get("tool_calls") or [])
        parts.append(f"{m['role']}: {m.get('content') or ''}{calls}")
    text = "\n\n".join(parts)
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def detect_language(text: str) -> str | None:
    """The language code langdetect finds in ``text`` (seeded), or None when it is too short to tell."""
    from langdetect import DetectorFactory, LangDetectException, detect

    DetectorFactory.seed = 0  # langdetect is random without a seed
    text = text.strip()
    if len(re.findall(r"\w+", text)) < 3:
        return None
    try:
        return detect(text)
    except LangDetectException:
        return None


class Texts:
    """The texts a dedupe stage compares, analysed once (in one streaming polars query that
    uses every core) and shared by the stages:

    - ``exact_key``, ``exact_length``: hash and length of ``lower`` with whitespace collapsed
      (the exact stage's key);
    - word hashes (WORD_PATTERN tokens of the NFKC, lower-cased text) for MinHash shingles.

    Only these are kept (not the normalised strings), to hold a million texts in memory. The
    value guard's values are not among them: only records in a similar pair need them (a fifth
    of a typical set), so ``datakit.value_guard`` finds them for those records alone.

    Hashes come from polars: fast and seeded, stable within one polars version. A dedupe run
    compares them within the run only (its scan tables are temporary); the Ray executor checks
    that every worker has the driver's polars version.
    """

    def __init__(self, raw: pl.Series, frame: pl.DataFrame, index: np.ndarray | None = None, shared=None):
        self._raw = raw  # the texts as given (for embeddings)
        self._frame = frame  # one row per text of the whole set
        self.index = np.arange(frame.height) if index is None else index  # the texts this view holds
        # per-text results computed once for the whole set and shared by every view
        # (MinHash signatures, for instance), so a stage can index them instead of recomputing
        self.shared: dict = {} if shared is None else shared

    @classmethod
    def of(cls, texts: pl.Series | list[str]) -> Texts:
        series = pl.Series("text", texts, dtype=pl.String).fill_null("")
        frame = (
            pl.LazyFrame({"original": series})
            .with_columns(pl.col("original").str.normalize("NFKC"))
            .with_columns(lower=pl.col("original").str.to_lowercase())
            .with_columns(exact=pl.col("lower").str.replace_all(WHITESPACE_RUN, " ").str.strip_chars())
            .select(
                exact_key=pl.col("exact").hash(EXACT_SEED),
                exact_length=pl.col("exact").str.len_bytes(),
                words=pl.col("lower").str.extract_all(WORD_PATTERN).list.eval(pl.element().hash(TOKEN_SEED)),
            )
            .collect(engine="streaming")
        )
        return cls(series, frame)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def size_of_set(self) -> int:
        """How many texts the whole set has (views index into it)."""
        return self._frame.height

    def take(self, index: np.ndarray) -> Texts:
        """A view of some of these texts (positions in this view); nothing is copied."""
        return Texts(self._raw, self._frame, self.index[index], self.shared)

    def column(self, name: str) -> pl.Series:
        """exact_key or exact_length, for the texts of this view."""
        return self._frame[name].gather(self.index)

    @property
    def raw(self) -> pl.Series:
        return self._raw.gather(self.index)

    def all_words(self) -> tuple[np.ndarray, np.ndarray]:
        """(uint64 hash of every word, in order; offsets: text d's words are [offsets[d], offsets[d+1]))
        for every text of the whole set."""
        lists = self._frame["words"].rechunk().to_arrow()
        offsets = np.asarray(lists.offsets, dtype=np.int64)
        return np.asarray(lists.flatten(), dtype=np.uint64), offsets - offsets[0]

    def drop_words(self) -> None:
        """Free the word hashes of the whole set (once the shingles are made)."""
        if "words" in self._frame.columns:
            self._frame.drop_in_place("words")
