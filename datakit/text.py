"""The text a dedupe or selection step looks at, and how it is normalised.

``--on`` picks the roles: ``prompt`` (system prompt and user turns), ``response``
(assistant turns) or ``all``. A multi-turn record is one text: its chosen turns in order.
Tool calls count as assistant text (their name and arguments).
"""

from __future__ import annotations

import functools
import re
from typing import Any

import numpy as np
import polars as pl

ON_CHOICES = ("prompt", "response", "all")
# One token per CJK character (those scripts put no spaces between words), else runs of
# letters and digits. Digits are kept: "17+25" and "38+4" must stay different texts.
TOKEN_SEED, EXACT_SEED = 0x70C3, 0xE8AC7
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
    of a typical set), so ``guard_values`` finds them for those records alone.

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
            .with_columns(exact=pl.col("lower").str.replace_all(r"\s+", " ").str.strip_chars())
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


# --- the value guard: near duplicates differ by edits, not by swapped values -----------

# A value is a number (a token with a digit) or a name (a capitalised word: "France").
VALUE_PATTERN = r"\w*\d\w*|\b\p{Lu}[\p{Ll}\p{Lt}\p{Lm}\p{Lo}\p{Mn}]+\b"


def guard_values(texts: pl.Series | list[str]) -> list[list[str]]:
    """Each text's values for ValueGuard: its numbers and names, found in the NFKC text, lower-cased."""
    series = pl.Series("text", texts, dtype=pl.String).fill_null("")
    values = (
        pl.col("text").str.normalize("NFKC").str.extract_all(VALUE_PATTERN).list.eval(pl.element().str.to_lowercase())
    )
    # one query per core: polars runs this expression (list.eval) on one thread otherwise
    size = max(1, -(-len(series) // pl.thread_pool_size()))
    parts = pl.collect_all([pl.LazyFrame([series.slice(i, size)]).select(values) for i in range(0, len(series), size)])
    return [v for part in parts for v in part["text"].to_list()]


@functools.lru_cache(maxsize=1 << 16)
def _deletions(word: str) -> frozenset[str]:
    """The word with up to one character deleted (two for words of 6+ characters)."""
    found, frontier = {word}, {word}
    for _ in range(2 if len(word) >= 6 else 1):
        frontier = {w[:i] + w[i + 1 :] for w in frontier for i in range(len(w))}
        found |= frontier
    return frozenset(found)


_DIGIT = re.compile(r"\d").search  # a value with a digit is a number (see VALUE_PATTERN)


def _typo_apart(a: str, b: str) -> bool:
    """Whether two names share a string after deleting a character or two from each."""
    # the deletions of a word of length n are n - 2 (n - 1 under 6 characters) to n long
    if len(a) - (2 if len(a) >= 6 else 1) > len(b) or len(b) - (2 if len(b) >= 6 else 1) > len(a):
        return False
    return not _deletions(a).isdisjoint(_deletions(b))


class ValueGuard:
    """Tells apart similar texts that are the same template with other values.

    Near duplicates (typos, re-spacing, reordering, truncation, another template) differ by
    edits, insertions or deletions. When a number in one text was replaced by another
    number ("what is 17+25" / "what is 38+4"), or a name by another name ("the capital of
    France" / "... of Germany"), the texts are different records, however similar.
    Each text's values (lower-cased) are found once, vectorised; a pair then costs two small
    set differences. A value counts as swapped only when both texts have values the other
    lacks and no typo explains them.
    """

    def __init__(self, values: list[list[str] | None]):
        self._values = [frozenset(v) if v else frozenset() for v in values]

    def differ(self, i: int, j: int) -> str | None:
        """Why texts i and j are different records, or None when they may be duplicates."""
        only_i = self._values[i] - self._values[j]
        if not only_i:
            return None
        only_j = self._values[j] - self._values[i]
        if not only_j:
            return None  # values only added or removed (a truncation, a template): not swapped
        numbers_i = [v for v in only_i if _DIGIT(v)]
        numbers_j = [v for v in only_j if _DIGIT(v)]
        if numbers_i and numbers_j:
            return f"numbers differ: {', '.join(sorted(numbers_i)[:3])} / {', '.join(sorted(numbers_j)[:3])}"
        # a name counts as swapped when no name on the other side is a typo of it (numbers must
        # be equal, so they are never a typo of a name)
        others_j = only_j.difference(numbers_j)
        names_i = [v for v in only_i.difference(numbers_i) if not any(_typo_apart(v, u) for u in others_j)]
        if not names_i:
            return None
        others_i = only_i.difference(numbers_i)
        names_j = [v for v in others_j if not any(_typo_apart(v, u) for u in others_i)]
        if names_j:
            return f"names differ: {', '.join(sorted(names_i)[:3])} / {', '.join(sorted(names_j)[:3])}"
        return None


def changed_values(a: str, b: str) -> str | None:
    """ValueGuard for one pair of texts."""
    return ValueGuard(guard_values([a, b])).differ(0, 1)
