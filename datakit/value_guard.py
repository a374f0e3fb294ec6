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

- ``value_rows`` finds the texts' values, vectorised (polars, a part of the input at a time),
  and ``Values.from_rows`` numbers them: each text becomes a sorted run of value ids (a CSR array);
- ``keep_apart`` walks the pairs in compiled code (numba): two sorted runs are compared in
  one merge, and the typo check is a longest common subsequence of the two names' characters
  (the deletions agree exactly when it leaves at most that many characters of each out).

tests/test_properties.py checks the compiled rule against a plain Python statement of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import polars as pl

# A value is a number (a token with a digit) or a name (a capitalised word: "France").
VALUE_PATTERN = r"\w*\d\w*|\b\p{Lu}[\p{Ll}\p{Lt}\p{Lm}\p{Lo}\p{Mn}]+\b"
# Its matches are whole runs of word characters (a match cannot start or end inside one), so
# they are found as the runs with a digit or a capital (CANDIDATE), kept when they have a digit
# or are a capitalised word (NAME). Polars' regex engine cannot run a Unicode \b on its fast
# path; this way is 2.6x faster on the benchmark's texts, with the same values (a property test
# compares the two on random texts).
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
    texts are NFKC already (normalising is half the work, and NFKC of NFKC is the same text)."""
    series = pl.Series("text", texts, dtype=pl.String).fill_null("")
    normalised = pl.col("text") if nfkc else pl.col("text").str.normalize("NFKC")
    value = pl.col("value")
    # one query per core: polars runs extract_all on one thread otherwise
    size = max(1, -(-len(series) // pl.thread_pool_size()))
    queries = [
        pl.LazyFrame([series.slice(i, size)])
        .select(
            text=pl.int_range(first + i, first + i + pl.len(), dtype=pl.Int64),
            value=normalised.str.extract_all(CANDIDATE),
        )
        .explode("value")
        .filter(value.str.contains(DIGIT) | value.str.contains(NAME))
        .with_columns(value.str.to_lowercase())
        for i in range(0, len(series), size)
    ]
    found = pl.collect_all(queries)
    return pl.concat(found) if found else pl.DataFrame(schema={"text": pl.Int64, "value": pl.String})


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
