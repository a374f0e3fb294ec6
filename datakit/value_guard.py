"""The value guard: near duplicates differ by edits, not by swapped values.

Near duplicates (typos, re-spacing, reordering, truncation, another template) differ by
edits, insertions or deletions. When a number in one text was replaced by another number
("what is 17+25" / "what is 38+4"), or a name by another name ("the capital of France" /
"... of Germany"), the texts are different records, however similar. A value counts as
swapped only when both texts have values the other lacks and no typo explains them.

The rule, for two texts' sets of values (lower-cased):

- when only one of the two texts has values the other lacks, nothing is swapped (a
  truncation, a template);
- numbers only in each text are swapped;
- otherwise, names only in each text are swapped, unless a typo explains every name on one
  side: two names are a typo apart when deleting a character or two from each (one from a
  name under 6 characters) gives the same string.

Dedupe asks this of millions of similar pairs (13M at 10M records), so:

- ``candidates`` finds the runs of word characters that may be values in compiled code (dedupe's
  scan keeps them for every record); ``candidate_rows`` keeps the values among them, vectorised
  (polars, a part of the input at a time), and ``Values.from_rows`` numbers them: each text
  becomes a sorted run of value ids (a CSR array);
- ``keep_apart`` walks the pairs in compiled code (numba): two sorted runs are compared in
  one merge, and the typo check is a longest common subsequence of the two names' characters
  (the deletions agree exactly when it leaves at most that many characters of each out).

tests/test_properties.py checks the compiled rule against a plain Python statement of it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numba
import numpy as np
import polars as pl

from datakit.io import buffers_of, series_of_buffers
from datakit.text import every_character, normalise_nfkc, utf8_character

# A value is a number (a token with a digit) or a name (a capitalised word: "France").
VALUE_PATTERN = r"\w*\d\w*|\b\p{Lu}[\p{Ll}\p{Lt}\p{Lm}\p{Lo}\p{Mn}]+\b"
# Its matches are whole runs of word characters (a match cannot start or end inside one), so
# they are found as the runs with a digit or a capital (CANDIDATE), kept when they have a digit
# or are a capitalised word (NAME). Polars' regex engine cannot run a Unicode \b on its fast
# path; this way is 2.6x faster on the benchmark's texts, with the same values (a property test
# compares the two on random texts). The runs are found by a compiled pass over a table of
# characters that polars' regex engine made (``candidates``), not by the regex itself.
CANDIDATE = r"\w*[\d\p{Lu}]\w*"
NAME = r"^\p{Lu}[\p{Ll}\p{Lt}\p{Lm}\p{Lo}\p{Mn}]+$"
DIGIT = r"\d"  # a value with a digit is a number (see VALUE_PATTERN)


@dataclass
class Values:
    """Some texts' values as ids: text k's distinct values are ``ids[offsets[k]:offsets[k + 1]]``,
    sorted; ``strings[id]`` is the value (lower-cased) and ``is_number[id]`` whether it has a digit."""

    offsets: np.ndarray  # int64[texts + 1]
    ids: np.ndarray  # int64[sum of distinct values per text]
    strings: list[str]
    is_number: np.ndarray  # bool[len(strings)]

    @classmethod
    def from_rows(cls, rows: pl.DataFrame, texts: int) -> Values:
        """From rows (text, value): the value ``value`` was found in text number ``text``."""
        # a value's id is its rank among the distinct values: polars' hashed unique, a sort of the
        # distinct ones and a hash join, 7x faster than a dense rank of every row (5M rows)
        distinct = rows["value"].unique().sort()
        numbering = pl.DataFrame({"value": distinct, "id": pl.int_range(len(distinct), dtype=pl.Int64, eager=True)})
        rows = rows.join(numbering, on="value", how="left", maintain_order="left")
        strings = distinct.to_list()
        # the distinct (text, id) in order, as one integer key: polars' hashed unique and a
        # sort of what is left, 4x faster than sorting rows by two columns
        keys = (rows["text"] * max(len(strings), 1) + rows["id"]).unique().sort().to_numpy()
        text, ids = np.divmod(keys, max(len(strings), 1))
        return cls(
            offsets=np.r_[0, np.cumsum(np.bincount(text, minlength=texts))].astype(np.int64),
            ids=ids.astype(np.int64),
            strings=strings,
            is_number=distinct.str.contains(DIGIT).to_numpy(),
        )


def value_rows(texts: pl.Series | list[str], first: int = 0, nfkc: bool = False) -> pl.DataFrame:
    """Rows (text, value) of each text's values, found in the NFKC text and lower-cased; texts are
    numbered from ``first``, so the rows of several slices can be put together. ``nfkc``: the
    texts are NFKC already (NFKC of NFKC is the same text)."""
    series = pl.Series("text", texts, dtype=pl.String).fill_null("")
    return candidate_rows(candidates(series if nfkc else normalise_nfkc(series)), first)


def candidates(normalised: pl.Series) -> pl.Series:
    """Each NFKC text's CANDIDATE matches, joined by spaces: the runs of word characters with a
    digit or a capital (see CANDIDATE), found by a compiled pass (``_candidates``). Dedupe's scan
    keeps these, not the texts: a fifth of the bytes (on its benchmark's records), which reduce
    reads back for the records in similar pairs."""
    data, offsets = buffers_of(normalised)
    found, found_offsets = _candidates(data, offsets, candidate_classes())
    return series_of_buffers(normalised.name, found, found_offsets, pl.String)


def candidate_rows(found: pl.Series, first: int = 0) -> pl.DataFrame:
    """Rows (text, value) from each text's ``candidates``: those that are values (NAME or DIGIT),
    lower-cased; texts numbered from ``first``."""
    value = pl.col("value")
    # one query per core: polars runs a query's string work on one thread otherwise
    size = max(1, -(-len(found) // pl.thread_pool_size()))
    queries = [
        pl.LazyFrame([found.slice(i, size).alias("found")])
        .select(
            text=pl.int_range(first + i, first + i + pl.len(), dtype=pl.Int64), value=pl.col("found").str.split(" ")
        )
        .explode("value")
        .filter(value.str.contains(DIGIT) | value.str.contains(NAME))
        .with_columns(value.str.to_lowercase())
        for i in range(0, len(found), size)
    ]
    rows = pl.collect_all(queries)
    return pl.concat(rows) if rows else pl.DataFrame(schema={"text": pl.Int64, "value": pl.String})


def guard_values(texts: pl.Series | list[str]) -> Values:
    """Each text's values: its numbers and names."""
    return Values.from_rows(value_rows(texts), len(texts))


def changed_values(a: str, b: str) -> bool:
    """Whether the value guard keeps two texts apart (values swapped, not edited)."""
    return bool(keep_apart(guard_values([a, b]), np.array([[0, 1]]), np.array([0]))[0])


def keep_apart(values: Values, pairs: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Which pairs (int64[m, 2] of text numbers in ``values``) the guard keeps apart (bool[m]).

    Pairs are taken in ``order`` (most similar first), and a pair whose two texts are already
    joined through earlier pairs is not checked: it cannot change the clusters.
    """
    lengths = np.array([len(s) for s in values.strings], dtype=np.int64)
    chars = np.frombuffer("".join(values.strings).encode("utf-32-le"), dtype=np.uint32)  # code points
    apart = np.zeros(len(pairs), dtype=bool)
    order, pairs = np.ascontiguousarray(order, dtype=np.int64), np.ascontiguousarray(pairs, dtype=np.int64)
    _walk(order, pairs, values.offsets, values.ids, values.is_number, chars, np.r_[0, np.cumsum(lengths)], apart)
    return apart


# --- compiled ------------------------------------------------------------------------------


WORD_CHARACTER, VALUE_CHARACTER = 1, 2  # bits of a character's entry in candidate_classes()


@functools.cache
def candidate_classes() -> np.ndarray:
    """uint8[0x110000], read-only: for each code point, WORD_CHARACTER if polars' regex engine
    (CANDIDATE's) finds it a ``\\w``, and VALUE_CHARACTER if it is a ``[\\d\\p{Lu}]``. Made once a
    process (0.3 s)."""
    points, chars = every_character()
    found = pl.DataFrame({"c": chars}).select(
        word=pl.col("c").str.contains(r"^\w$"), value=pl.col("c").str.contains(r"^[\d\p{Lu}]$")
    )
    classes = np.zeros(0x110000, dtype=np.uint8)
    classes[points] = found["word"].to_numpy() * WORD_CHARACTER + found["value"].to_numpy() * VALUE_CHARACTER
    classes.flags.writeable = False  # one table for the whole process: nothing may change it
    return classes


@numba.njit(parallel=True, cache=True, nogil=True)
def _candidates(data, offsets, classes):
    """(UTF-8 bytes, offsets): each text's runs of word characters that hold a value character,
    joined by a space. CANDIDATE's matches are exactly these runs: a match cannot start or end
    inside a run (both ends are \\w*, and a value character is a word character), and from a
    run's first character it reaches the run's last. Each text's runs go first into room of the
    text's own size (runs are separated in the text by at least one character), then are packed."""
    n, base = len(offsets) - 1, offsets[0]
    room = np.empty(offsets[-1] - base, dtype=np.uint8)
    lengths = np.zeros(n + 1, dtype=np.int64)
    for d in numba.prange(n):
        begin, end = offsets[d] - base, offsets[d + 1]
        at, i, start, run = begin, offsets[d], offsets[d], np.int64(0)
        while i < end:
            point, size = utf8_character(data, i)
            kind = np.int64(classes[point])
            word = kind & WORD_CHARACTER
            if word == 0 and run & VALUE_CHARACTER:  # a run with a value character ends here
                at = _append_run(room, at, begin, data, start, i)
            # the classes of the run so far, 0 between runs (arithmetic: a branch here mispredicts)
            run = (run | kind) * word
            i += size
            start = start if word else i
        if run & VALUE_CHARACTER:  # the text ends in one
            at = _append_run(room, at, begin, data, start, end)
        lengths[d + 1] = at - begin
    out_offsets = np.cumsum(lengths)
    out = np.empty(out_offsets[-1], dtype=np.uint8)
    for d in numba.prange(n):
        begin = offsets[d] - base
        out[out_offsets[d] : out_offsets[d + 1]] = room[begin : begin + lengths[d + 1]]
    return out, out_offsets


@numba.njit(cache=True, nogil=True, inline="always")
def _append_run(room, at: int, begin: int, data, start: int, end: int) -> int:
    """Append bytes [start, end) of ``data`` at ``room[at]``, after a space unless at ``begin``."""
    if at > begin:
        room[at] = 32
        at += 1
    for k in range(start, end):  # (a byte at a time: slices of a few bytes are slower)
        room[at] = data[k]
        at += 1
    return at


@numba.njit(cache=True, nogil=True)
def _walk(order, pairs, offsets, ids, is_number, chars, starts, apart) -> None:
    """Union-find over the pairs in ``order``, joining a pair unless its values are swapped."""
    parent = np.arange(len(offsets) - 1)
    longest = np.max(offsets[1:] - offsets[:-1]) if len(offsets) > 1 else 0
    # scratch for one pair, side 0 text i and side 1 text j: the names only in that side's text,
    # how many, and whether it has a number the other lacks
    names, counts, numbers = np.empty((2, longest), dtype=np.int64), np.zeros(2, np.int64), np.zeros(2, np.bool_)
    for k in order:
        a, b = _root(parent, pairs[k, 0]), _root(parent, pairs[k, 1])
        if a == b:
            continue
        if _swapped(offsets, ids, is_number, chars, starts, pairs[k, 0], pairs[k, 1], names, counts, numbers):
            apart[k] = True
        else:
            parent[a] = b


@numba.njit(cache=True, nogil=True)
def _root(parent: np.ndarray, x: int) -> int:
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@numba.njit(cache=True, nogil=True)
def _swapped(offsets, ids, is_number, chars, starts, i: int, j: int, names, counts, numbers) -> bool:
    """The rule for texts i and j: one merge of their sorted runs of value ids."""
    a, a_end, b, b_end = offsets[i], offsets[i + 1], offsets[j], offsets[j + 1]
    counts[:] = 0
    numbers[:] = False
    while a < a_end or b < b_end:
        if a < a_end and b < b_end and ids[a] == ids[b]:  # in both texts
            a += 1
            b += 1
            continue
        side = 0 if b == b_end or (a < a_end and ids[a] < ids[b]) else 1  # the text it is only in
        value = ids[a] if side == 0 else ids[b]
        a, b = a + 1 - side, b + side
        if is_number[value]:
            numbers[side] = True
        else:
            names[side, counts[side]] = value
            counts[side] += 1
    if not (numbers[0] or counts[0]) or not (numbers[1] or counts[1]):
        return False  # values only added or removed
    if numbers[0] and numbers[1]:
        return True
    # names on both sides are swapped when some name on each side is no typo of any on the other
    only_i, only_j = names[0, : counts[0]], names[1, : counts[1]]
    return _untypo(only_i, only_j, chars, starts) and _untypo(only_j, only_i, chars, starts)


@numba.njit(cache=True, nogil=True)
def _untypo(names, others, chars, starts) -> bool:
    """Whether some name in ``names`` is no typo of any in ``others``."""
    for x in names:
        explained = False
        for y in others:
            if _typo_apart(chars[starts[x] : starts[x + 1]], chars[starts[y] : starts[y + 1]]):
                explained = True
                break
        if not explained:
            return True
    return False


@numba.njit(cache=True, nogil=True)
def _typo_apart(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether deleting up to k characters from each (2 from a name of 6+, else 1) can give the
    same string: exactly when their longest common subsequence leaves out at most k of each."""
    need = max(len(a) - (2 if len(a) >= 6 else 1), len(b) - (2 if len(b) >= 6 else 1))
    if need > min(len(a), len(b)):
        return False
    row = np.zeros(len(b) + 1, dtype=np.int64)  # LCS of a[:i] and b[:j], one row at a time
    for i in range(len(a)):
        diagonal = 0
        for j in range(len(b)):
            above = row[j + 1]
            row[j + 1] = diagonal + 1 if a[i] == b[j] else max(row[j], above)
            diagonal = above
    return row[len(b)] >= need
