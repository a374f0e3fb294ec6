"""The text a dedupe or selection step looks at, and how it is normalised.

``--on`` picks the roles: ``prompt`` (system prompt and user turns), ``response``
(assistant turns) or ``all``. A multi-turn record is one text: its chosen turns in order.
Tool calls count as assistant text (their name and arguments).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numba
import numpy as np
import polars as pl

from datakit.io import buffers_of, series_of_buffers

ON_CHOICES = ("prompt", "response", "all")
# Words are WORD_PATTERN's matches in the NFKC, lower-cased text: one token per CJK character
# (those scripts put no spaces between words), else runs of letters and digits. Digits are kept:
# "17+25" and "38+4" must stay different texts. The pattern is the definition; the compiled pass
# below finds the same words from a table of each character's class made with it.
CJK = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}"
WORD_PATTERN = rf"[{CJK}]|[^\W{CJK}]+"


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
    """The texts a dedupe stage compares, analysed once and shared by the stages:

    - ``exact_key``, ``exact_length``: hash and length in bytes of the NFKC, lower-cased text
      with each whitespace run made one space, and none at either end (the exact stage's key);
    - word hashes (WORD_PATTERN's words of the NFKC, lower-cased text) for MinHash shingles.

    The texts are normalised and lower-cased (``nfkc_and_lower``); one compiled pass over the
    bytes of the result then finds the words and the exact key (see ``_analyse``). Only these are
    kept, not the lower-cased strings, to hold a million texts in memory; the NFKC strings are
    kept only when asked (``of(..., keep_nfkc=True)``: dedupe's value guard reads them). The value guard's
    values are not among them: only records in a similar pair need them (a fifth of a typical
    set), so ``datakit.value_guard`` finds them for those records alone.

    The hashes are datakit's own (FNV-1a over the UTF-8 bytes, then MurmurHash3's 64-bit
    finalizer), the same on every machine; the normalisation and the character classes come
    from polars, so the Ray executor checks that every worker has the driver's polars version.
    """

    def __init__(self, raw: pl.Series, frame: pl.DataFrame, index: np.ndarray | None = None, shared=None):
        self._raw = raw  # the texts as given (for embeddings)
        self._frame = frame  # exact_key and exact_length, one row per text of the whole set
        self.index = np.arange(frame.height) if index is None else index  # the texts this view holds
        self.whole = index is None  # the view of the whole set: its columns are given, not gathered
        # per-text results computed once for the whole set and shared by every view (the word
        # hashes until dropped, MinHash signatures), so a stage can index them, not recompute
        self.shared: dict = {} if shared is None else shared

    @classmethod
    def of(cls, texts: pl.Series | list[str], keep_nfkc: bool = False) -> Texts:
        """``keep_nfkc``: keep the NFKC texts too (``nfkc``), for a caller that looks at them
        again (dedupe's value guard), rather than normalise them twice."""
        series = pl.Series("text", texts, dtype=pl.String).fill_null("")
        nfkc, lower = nfkc_and_lower(series)
        shared = {"nfkc": nfkc} if keep_nfkc else {}
        words, word_offsets, exact_key, exact_length = words_and_exact_keys(*lower)
        del lower  # the lower-cased texts are not kept: only their words and exact keys
        shared["words"] = (words, word_offsets)
        frame = pl.DataFrame({"exact_key": exact_key, "exact_length": exact_length})
        return cls(series, frame, shared=shared)

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
        return self._frame[name] if self.whole else self._frame[name].gather(self.index)

    @property
    def raw(self) -> pl.Series:
        return self._raw if self.whole else self._raw.gather(self.index)

    @property
    def nfkc(self) -> pl.Series:
        """The NFKC texts of this view (not lower-cased); kept only when made with ``keep_nfkc``."""
        if "nfkc" not in self.shared:
            raise RuntimeError("the NFKC texts were not kept (Texts.of(..., keep_nfkc=True))")
        return self.shared["nfkc"] if self.whole else self.shared["nfkc"].gather(self.index)

    def all_words(self) -> tuple[np.ndarray, np.ndarray]:
        """(uint64 hash of every word, in order; offsets: text d's words are [offsets[d], offsets[d+1]))
        for every text of the whole set."""
        if "words" not in self.shared:
            raise RuntimeError("the word hashes were dropped (drop_words)")
        return self.shared["words"]

    def drop_words(self) -> None:
        """Free the word hashes of the whole set, for every view (once the shingles are made)."""
        self.shared.pop("words", None)


# --- NFKC ----------------------------------------------------------------------------------

NFKC_TABLE_FROM = 10_000  # texts: below this many, polars alone is quicker than making the tables (0.8 s)


def normalise_nfkc(texts: pl.Series, table_from: int = NFKC_TABLE_FROM) -> pl.Series:
    """The texts (no nulls) in Unicode NFKC, exactly as polars' ``str.normalize("NFKC")`` makes
    them, 3x faster for a large set: where every character of a text starts a segment that
    normalisation treats on its own (``nfkc_table``), the text is the NFKC forms of its
    characters one after another, copied from a table by a compiled pass; polars normalises the
    other texts (combining marks, Hangul jamo, characters polars knows and Python does not).
    Measured on dedupe's benchmark records (70% non-ASCII, half of them changed by NFKC; Intel
    Xeon with AMX, one thread): 6.5 us a text with polars, 2.2 with the table."""
    return _normalise(texts, table_from, lower=False)[0]


def nfkc_and_lower(
    texts: pl.Series, table_from: int = NFKC_TABLE_FROM
) -> tuple[pl.Series, tuple[np.ndarray, np.ndarray]]:
    """(the texts in NFKC as ``normalise_nfkc`` makes them; the bytes and offsets of those texts
    lower-cased, as polars' ``str.to_lowercase`` makes them), in the same compiled pass: each
    character's lower-cased NFKC form is copied from a table too. Lower-casing goes character
    by character but for one rule, the Greek capital sigma (a final one becomes ς), so a text
    with a Σ in its NFKC form is left to polars. 1.8 us a text less than polars' lower-casing
    after the table's NFKC, on dedupe's benchmark records (Intel Xeon with AMX, one thread)."""
    normal, lower = _normalise(texts, table_from, lower=True)
    assert lower is not None
    return normal, lower


def _normalise(
    texts: pl.Series, table_from: int, lower: bool
) -> tuple[pl.Series, tuple[np.ndarray, np.ndarray] | None]:
    if len(texts) < table_from:
        normal = texts.str.normalize("NFKC")
        return normal, buffers_of(normal.str.to_lowercase()) if lower else None
    data, offsets = buffers_of(texts)
    bytes_out, offsets_out, lower_bytes, lower_offsets, done = _nfkc_by_character(data, offsets, *nfkc_table(), lower)
    normal = series_of_buffers(texts.name, bytes_out, offsets_out, pl.String)
    rest = np.flatnonzero(~done)
    if len(rest):
        normal_rest = texts.gather(rest).str.normalize("NFKC")
        normal = normal.scatter(rest, normal_rest)
        if lower:
            lowered = series_of_buffers("", lower_bytes, lower_offsets, pl.String)
            lower_bytes, lower_offsets = buffers_of(lowered.scatter(rest, normal_rest.str.to_lowercase()))
    return normal, (lower_bytes, lower_offsets) if lower else None


def every_character() -> tuple[np.ndarray, list[str]]:
    """(every code point but the surrogates, each as a one-character string): what the tables of
    this module are made over, with polars' own regex engine and NFKC."""
    points = np.r_[0:0xD800, 0xE000:0x110000]
    return points, [chr(p) for p in points.tolist()]


class CharacterForms(NamedTuple):
    """Each code point's NFKC form and lower-cased NFKC form, as tables a compiled pass indexes."""

    alone: np.ndarray  # bool[0x110000]: NFKC treats the character as a segment of its own
    mapped: np.ndarray  # bool[0x110000]: NFKC changes it; its form is forms[offsets[c]:offsets[c + 1]]
    offsets: np.ndarray  # int64[0x110001]
    forms: np.ndarray  # UTF-8 bytes
    lowered: np.ndarray  # bool[0x110000]: its lower-cased NFKC form is not the character itself
    lower_offsets: np.ndarray  # int64[0x110001]: that form is lower_forms[lower_offsets[c]:...]
    lower_forms: np.ndarray  # UTF-8 bytes
    has_sigma: np.ndarray  # bool[0x110000]: its NFKC form holds a Σ, which lower-cases by context


@functools.cache
def nfkc_table() -> CharacterForms:
    """The tables of ``CharacterForms``, made once a process (0.8 s), with polars' NFKC and
    lower-casing.

    ``alone[c]``: NFKC treats c as the start of a segment of its own, so that a text made only
    of such characters normalises character by character. That holds when c is assigned (in
    Python's Unicode data: polars' may be newer) and the first character of its compatibility
    decomposition (c itself if it has none) is a starter (canonical combining class 0) that
    never combines with a character before it (it is not the second of a two-character
    canonical decomposition, nor a Hangul vowel or trailing consonant jamo): nothing before it
    then composes or reorders with what follows (UAX #15, the boundaries ICU's normaliser
    splits a text at)."""
    points, chars = every_character()
    one_each = pl.Series(chars)
    normal = one_each.str.normalize("NFKC")
    first = one_each.str.normalize("NFKD").str.slice(0, 1).to_list()
    combines_back = set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))  # Hangul V and T jamo
    for c in chars:
        canonical = unicodedata.decomposition(c)
        if canonical and canonical[0] != "<" and len(pair := canonical.split()) == 2:
            combines_back.add(int(pair[1], 16))
    alone = np.zeros(0x110000, dtype=np.bool_)
    alone[points] = [
        unicodedata.category(c) != "Cn" and unicodedata.combining(f) == 0 and ord(f) not in combines_back
        for c, f in zip(chars, first, strict=True)
    ]
    mapped, offsets, forms = _form_table(points, one_each, normal)
    lowered, lower_offsets, lower_forms = _form_table(points, one_each, normal.str.to_lowercase())
    has_sigma = np.zeros(0x110000, dtype=np.bool_)
    has_sigma[points] = normal.str.contains("Σ", literal=True).to_numpy()
    tables = CharacterForms(alone, mapped, offsets, forms, lowered, lower_offsets, lower_forms, has_sigma)
    for table in tables:
        table.flags.writeable = False  # one table for the whole process: nothing may change it
    return tables


def _form_table(points: np.ndarray, one_each: pl.Series, form: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(changed bool[0x110000], offsets, UTF-8 bytes): where ``form`` (one string a code point) is
    not the character itself, and the forms that are not, one after another."""
    changed = (form != one_each).to_numpy()
    marked = np.zeros(0x110000, dtype=np.bool_)
    marked[points[changed]] = True
    forms = form.filter(pl.Series(changed))
    lengths = np.zeros(0x110000, dtype=np.int64)
    lengths[points[changed]] = forms.str.len_bytes().to_numpy()
    return marked, np.r_[0, np.cumsum(lengths)], np.frombuffer("".join(forms.to_list()).encode(), dtype=np.uint8)


@numba.njit(parallel=True, cache=True, nogil=True)
def _nfkc_by_character(data, offsets, alone, mapped, form_offsets, forms, lowered, lower_offsets, lower_forms,
                       has_sigma, lower):  # fmt: skip
    """(UTF-8 bytes, offsets, lower-cased bytes, their offsets, done): each text whose characters
    are all ``alone`` as the NFKC forms of its characters and, if ``lower``, as their lower-cased
    NFKC forms (a text with a Σ in its NFKC form is not done then); ``done`` is False for the
    others (left empty)."""
    n = len(offsets) - 1
    done = np.ones(n, dtype=np.bool_)
    lengths = np.zeros(n + 1, dtype=np.int64)
    lower_lengths = np.zeros(n + 1, dtype=np.int64)
    for d in numba.prange(n):
        i, length, lower_length = offsets[d], 0, 0
        while i < offsets[d + 1]:
            if data[i] < 0x80:  # ASCII (most characters): its own NFKC form, done on its own
                length, lower_length, i = length + 1, lower_length + 1, i + 1
                continue
            point, size = utf8_character(data, i)
            if not alone[point] or (lower and has_sigma[point]):
                done[d], length, lower_length = False, 0, 0
                break
            length += form_offsets[point + 1] - form_offsets[point] if mapped[point] else size
            if lower:
                lower_length += lower_offsets[point + 1] - lower_offsets[point] if lowered[point] else size
            i += size
        lengths[d + 1] = length
        lower_lengths[d + 1] = lower_length if lower else 0
    out_offsets = np.cumsum(lengths)
    out = np.empty(out_offsets[-1], dtype=np.uint8)
    lower_out_offsets = np.cumsum(lower_lengths)
    lower_out = np.empty(lower_out_offsets[-1], dtype=np.uint8)
    for d in numba.prange(n):
        if not done[d]:
            continue
        i, at, lower_at = offsets[d], out_offsets[d], lower_out_offsets[d]
        while i < offsets[d + 1]:
            byte = data[i]
            if byte < 0x80:  # ASCII: itself, and only A-Z lower-case (to a-z)
                out[at] = byte
                if lower:
                    lower_out[lower_at] = byte + 32 if 65 <= byte <= 90 else byte
                at, lower_at, i = at + 1, lower_at + 1, i + 1
                continue
            point, size = utf8_character(data, i)
            at = _copy_form(data, i, size, mapped[point], forms, form_offsets[point], form_offsets[point + 1], out, at)
            if lower:
                lower_at = _copy_form(data, i, size, lowered[point], lower_forms, lower_offsets[point],
                                      lower_offsets[point + 1], lower_out, lower_at)  # fmt: skip
            i += size
    return out, out_offsets, lower_out, lower_out_offsets, done


@numba.njit(cache=True, nogil=True, inline="always")
def _copy_form(data, i, size, from_table, forms, start, end, out, at) -> int:
    """Copy a character's form to out[at:]: from the table, or its own bytes data[i:i + size];
    returns where the next goes. (A byte at a time: slices of a few bytes are slower.)"""
    if from_table:
        for k in range(start, end):
            out[at] = forms[k]
            at += 1
    else:
        for k in range(i, i + size):
            out[at] = data[k]
            at += 1
    return at


# --- the compiled pass over normalised texts ---------------------------------------------

OTHER, WORD, CJK_CHARACTER, SPACE = 0, 1, 2, 3  # a character's class
TOKEN_BASIS, EXACT_BASIS = np.uint64(0xCBF29CE484222325), np.uint64(0x84222325CBF29CE4)  # seeds
FNV_PRIME = np.uint64(0x100000001B3)


@functools.cache
def character_classes() -> np.ndarray:
    """uint8[0x110000], read-only: each code point's class, by polars' regex engine itself (the
    engine of WORD_PATTERN and ``\\s``; ``strip_chars`` strips the same set, Unicode's
    White_Space), so the compiled pass splits words and whitespace exactly where those would.
    A CJK character is one word even when it is not a word character (WORD_PATTERN's first
    alternative matches it). Made once a process (0.3 s)."""
    points, chars = every_character()
    found = pl.DataFrame({"c": chars}).select(
        cjk=pl.col("c").str.contains(f"^[{CJK}]$"),
        word=pl.col("c").str.contains(r"^\w$"),
        space=pl.col("c").str.contains(r"^\s$"),
    )
    classes = np.zeros(0x110000, dtype=np.uint8)
    classes[points] = np.select(
        [found["cjk"].to_numpy(), found["word"].to_numpy(), found["space"].to_numpy()],
        [CJK_CHARACTER, WORD, SPACE],
        OTHER,
    )
    classes.flags.writeable = False  # one table for the whole process: nothing may change it
    return classes


PARALLEL_FROM = 10_000  # texts: below this many, the word pass runs on one thread


def words_and_exact_keys(
    data: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(word hashes, word offsets per text, exact key hashes, exact key lengths) of texts already
    NFKC-normalised and lower-cased, given as their UTF-8 bytes and int64 offsets (text d is
    data[offsets[d]:offsets[d + 1]]): the compiled pass, ``_analyse``. With more than one numba
    thread (a dedupe's scan workers have one each), the texts are split among threads."""
    classes = character_classes()
    threads, n = numba.get_num_threads(), len(offsets) - 1
    if threads == 1 or n < PARALLEL_FROM:
        return _analyse(data, offsets, classes)
    bounds = np.linspace(0, n, threads + 1).astype(np.int64)
    with ThreadPoolExecutor(threads) as pool:  # (the pass holds no GIL)
        parts = list(
            pool.map(lambda k: _analyse(data, offsets[bounds[k] : bounds[k + 1] + 1], classes), range(threads))
        )
    word_counts = np.cumsum([0] + [len(words) for words, _, _, _ in parts])
    word_offsets = np.concatenate(
        [[0]] + [offs[1:] + base for (_, offs, _, _), base in zip(parts, word_counts[:-1], strict=True)]
    )
    return (
        np.concatenate([words for words, _, _, _ in parts]),
        word_offsets,
        np.concatenate([key for _, _, key, _ in parts]),
        np.concatenate([length for _, _, _, length in parts]),
    )


@numba.njit(cache=True, nogil=True, inline="always")
def utf8_character(data: np.ndarray, i: int) -> tuple[int, int]:
    """(code point, byte length) of the UTF-8 character at byte i (the text is valid UTF-8)."""
    b = np.int64(data[i])
    if b < 0x80:
        return b, 1
    if b < 0xE0:
        return ((b & 0x1F) << 6) | (data[i + 1] & 0x3F), 2
    if b < 0xF0:
        return ((b & 0x0F) << 12) | ((data[i + 1] & 0x3F) << 6) | (data[i + 2] & 0x3F), 3
    return ((b & 0x07) << 18) | ((data[i + 1] & 0x3F) << 12) | ((data[i + 2] & 0x3F) << 6) | (data[i + 3] & 0x3F), 4


@numba.njit(cache=True, nogil=True, inline="always")
def _fnv(h: np.uint64, data: np.ndarray, start: int, end: int) -> np.uint64:
    for k in range(start, end):
        h = (h ^ np.uint64(data[k])) * FNV_PRIME
    return h


@numba.njit(cache=True, nogil=True, inline="always")
def _finish(h: np.uint64) -> np.uint64:
    """MurmurHash3's 64-bit finalizer: FNV-1a alone leaves its last bytes poorly mixed."""
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


@numba.njit(cache=True, nogil=True)
def _walk(data, start, end, classes, out, at) -> tuple[int, np.uint64, int]:
    """One walk over the characters of the text in bytes [start, end): its words' hashes go to
    out[at:]; returns (how many words, the exact key's hash, its byte length). The exact key is
    the text with each whitespace run made one space and none at either end: the string is not
    built, only hashed."""
    count, in_word, word = 0, False, TOKEN_BASIS
    h, length, space_before, i = EXACT_BASIS, 0, False, start
    while i < end:
        point, size = utf8_character(data, i)
        kind = classes[point]
        if kind == WORD:
            if not in_word:
                word, in_word = TOKEN_BASIS, True
            word = _fnv(word, data, i, i + size)
        else:
            if in_word:  # the word ends here
                out[at + count] = _finish(word)
                count, in_word = count + 1, False
            if kind == CJK_CHARACTER:  # a word on its own
                out[at + count] = _finish(_fnv(TOKEN_BASIS, data, i, i + size))
                count += 1
        if kind == SPACE:
            space_before = length > 0  # a run at the start is dropped
        else:
            if space_before:
                h, length, space_before = (h ^ np.uint64(32)) * FNV_PRIME, length + 1, False
            h, length = _fnv(h, data, i, i + size), length + size
        i += size
    if in_word:
        out[at + count] = _finish(word)
        count += 1
    return count, _finish(h), length  # a whitespace run at the end was never written


@numba.njit(cache=True, nogil=True)
def _analyse(data, offsets, classes):
    """Every text's words (hashes, offsets) and exact key (hash, length), in one walk over each
    text (_walk: 1.3x faster than a walk to count the words, one for the exact key and one to
    hash the words into place). The words go straight into one array, one text after another.
    A text of b bytes holds at most b // 2 + 1 words (a word and what ends it take 2 bytes or
    more), so before each text the array is grown (doubled) unless that many fit; it starts
    with room for a word every 4 bytes, more than typical texts need. (Room for every text's
    most, made up front, was 4 bytes for each byte of text: fresh memory each call, whose page
    faults made the pass 1.45x slower on a scan's block of 32 MB, Intel Xeon with AMX.) One
    thread: ``words_and_exact_keys`` splits the texts among threads."""
    n = len(offsets) - 1
    words = np.empty((offsets[n] - offsets[0]) // 4 + 16, dtype=np.uint64)
    word_offsets = np.zeros(n + 1, dtype=np.int64)
    exact_key = np.empty(n, dtype=np.uint64)
    exact_length = np.empty(n, dtype=np.uint32)
    count = 0
    for d in range(n):
        most = count + (offsets[d + 1] - offsets[d]) // 2 + 1
        if most > len(words):
            grown = np.empty(max(2 * len(words), most), dtype=np.uint64)
            grown[:count] = words[:count]
            words = grown
        found, exact_key[d], exact_length[d] = _walk(data, offsets[d], offsets[d + 1], classes, words, count)
        count += found
        word_offsets[d + 1] = count
    return words[:count], word_offsets, exact_key, exact_length
