"""Property tests: random valid records round-trip through every format and file type that can
hold them; random garbage gives a reason, never a crash or a silent drop."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import datakit
from datakit.formats import FORMATS, Read, ReadOptions, Rejected, Skipped, Used
from datakit.io import SourceRow
from datakit.record import message, new_record, tool_call

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
nonblank = text.filter(lambda t: t.strip() == t and t != "")  # P3 strips surrounding whitespace


@st.composite
def records(draw, tools: bool, system: bool, turns: int | None = None, words=text) -> dict:
    n = turns or draw(st.integers(1, 3))
    messages = []
    for i in range(n):
        messages.append(message("user", draw(words)))
        if tools and draw(st.booleans()):
            args = json.dumps({"q": draw(text)}, ensure_ascii=False)
            messages.append(message("assistant", None, tool_calls=[tool_call(f"f{i}", args)]))
            messages.append(message("tool", draw(words)))
        messages.append(message("assistant", draw(words)))
    sys_prompt = draw(st.one_of(st.none(), words.filter(bool))) if system else None
    schemas = [{"type": "function", "function": {"name": "f0", "parameters": {}}}] if tools else None
    return new_record(messages, system=sys_prompt, tools=schemas)


STRATEGIES = {
    "canonical": records(tools=True, system=True),
    "openai": records(tools=True, system=True),
    "sharegpt": records(tools=True, system=True),
    "alpaca": records(tools=False, system=True),
    "oasst": records(tools=False, system=False),
    "p3": records(tools=False, system=False, turns=1, words=nonblank),
}


def conversation(record: dict) -> tuple:
    turns = tuple(
        (m["role"], m["content"], tuple((c["name"], c["arguments"]) for c in m["tool_calls"] or ()))
        for m in record["messages"]
    )
    return record["system"], turns, json.dumps(record["tools"])


def round_trip(fmt: str, container: str, batch: list[dict], tmp: Path) -> None:
    path = tmp / f"data.{container}"
    datakit.write_records(batch, path, to=fmt)
    back = list(datakit.read_records(path, fmt))
    assert [conversation(r) for r in back] == [conversation(r) for r in batch]


def make_test(fmt: str):
    @SETTINGS
    @given(
        batch=st.lists(STRATEGIES[fmt], min_size=1, max_size=4),
        container=st.sampled_from(["jsonl", "parquet", "csv", "json"]),
    )
    def test(batch, container, tmp_path_factory):
        round_trip(fmt, container, batch, tmp_path_factory.mktemp(fmt))

    test.__name__ = f"test_random_records_round_trip_through_{fmt}"
    return test


for _fmt in STRATEGIES:
    globals()[f"test_random_records_round_trip_through_{_fmt}"] = make_test(_fmt)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)
# rows that look half like a real format: the right keys with anything in them
garbage_rows = st.dictionaries(
    st.sampled_from(
        [
            "instruction",
            "input",
            "output",
            "history",
            "system",
            "conversations",
            "messages",
            "tools",
            "id",
            "inputs_pretokenized",
            "targets_pretokenized",
            "is_correct",
            "message_tree_id",
            "prompt",
            "meta",
            "message_id",
            "parent_id",
            "role",
            "text",
            "from",
            "value",
            "content",
            "tool_calls",
        ]
    )
    | text,
    json_values,
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(garbage_rows, min_size=1, max_size=5), fmt=st.sampled_from(list(FORMATS)))
def test_garbage_gives_a_reason_never_a_crash(rows: list[dict], fmt: str) -> None:
    source = [SourceRow(row, "garbage.jsonl", i, i + 1) for i, row in enumerate(rows)]
    outcomes = list(FORMATS[fmt].read(source, ReadOptions()))
    accounted = set()
    for outcome in outcomes:
        assert isinstance(outcome, (Read, Used, Rejected, Skipped))
        accounted.add(outcome.row.index)
        if isinstance(outcome, (Rejected, Skipped)):
            assert isinstance(outcome.reason, str) and outcome.reason
        if isinstance(outcome, Read):
            datakit.validate(outcome.record)
            for target in FORMATS.values():  # writing either works or names a reason
                try:
                    target.write(outcome.record, datakit.formats.WriteOptions(lossy=True))
                except datakit.RecordError as exc:
                    assert str(exc)
    assert accounted == set(range(len(rows)))  # no row silently dropped


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.binary(max_size=60), min_size=1, max_size=8))
def test_random_bytes_lines_are_all_accounted_for(lines: list[bytes], tmp_path_factory) -> None:
    lines = [line.replace(b"\n", b" ").replace(b"\r", b" ") for line in lines]
    path = tmp_path_factory.mktemp("bytes") / "noise.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    summary = datakit.convert(
        path, path.with_suffix(".out.jsonl"), to="canonical", from_format="alpaca", on_error="skip"
    )
    assert summary.rows_read == sum(1 for line in lines if line.strip())
    assert summary.rows_read == summary.rows_converted + summary.rows_rejected + summary.rows_skipped


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.lists(st.binary(max_size=12), max_size=12).map(b"\n".join), size=st.integers(1, 40))
def test_blocks_of_lines_are_size_bytes_and_the_rest_of_their_last_line(
    data: bytes, size: int, tmp_path_factory
) -> None:
    """The scan's blocks of lines, of a plain file (byte ranges) and of its gzip (bytes): each
    is ``size`` bytes and the rest of the line they end in, numbered by its first line, and
    together they are the whole file."""
    import gzip

    from datakit.io import line_blocks, read_block

    expected, start, first = [], 0, 1
    while start < len(data):
        end = data.find(b"\n", start + size) + 1 or len(data) if start + size < len(data) else len(data)
        expected.append((data[start:end], first))
        first += data[start:end].count(b"\n")
        start = end
    folder = tmp_path_factory.mktemp("blocks")
    (folder / "a.jsonl").write_bytes(data)
    (folder / "a.jsonl.gz").write_bytes(gzip.compress(data))
    plain = [
        (read_block(str(folder / "a.jsonl"), block), first)
        for block, first in line_blocks(str(folder / "a.jsonl"), size)
    ]
    assert plain == expected
    assert list(line_blocks(str(folder / "a.jsonl.gz"), size)) == expected


# --- dedupe's kernels against their plain definitions ---------------------------------------

words = st.text("abcdeéß中", min_size=1, max_size=9)


def deletions(word: str) -> set[str]:
    """The word with up to one character deleted (two for words of 6+ characters)."""
    found, frontier = {word}, {word}
    for _ in range(2 if len(word) >= 6 else 1):
        frontier = {w[:i] + w[i + 1 :] for w in frontier for i in range(len(w))}
        found |= frontier
    return found


def code_points(word: str):
    import numpy as np

    return np.frombuffer(word.encode("utf-32-le"), dtype=np.uint32)


@settings(max_examples=400, deadline=None)
@given(a=words, b=words)
def test_two_names_are_a_typo_apart_exactly_when_they_share_a_deletion(a: str, b: str) -> None:
    """The compiled check (a longest common subsequence) answers what the deletions define."""
    from datakit.value_guard import _typo_apart

    assert _typo_apart(code_points(a), code_points(b)) == (not deletions(a).isdisjoint(deletions(b)))


def swapped(values_i: frozenset[str], values_j: frozenset[str]) -> bool:
    """The value guard's rule, stated plainly (datakit.value_guard's docstring)."""
    only_i, only_j = values_i - values_j, values_j - values_i
    if not only_i or not only_j:
        return False
    numbers_i = {v for v in only_i if any(c.isdecimal() for c in v)}  # \d: a decimal digit
    numbers_j = {v for v in only_j if any(c.isdecimal() for c in v)}
    if numbers_i and numbers_j:
        return True
    names_i, names_j = only_i - numbers_i, only_j - numbers_j

    def typo(a: str, b: str) -> bool:
        return not deletions(a).isdisjoint(deletions(b))

    return any(not any(typo(v, u) for u in names_j) for v in names_i) and any(
        not any(typo(v, u) for u in names_i) for v in names_j
    )


def _plain_hash(data: bytes, basis: int) -> int:
    """FNV-1a over the bytes, then MurmurHash3's 64-bit finalizer: the compiled pass's hash, in plain Python."""
    mask = (1 << 64) - 1
    h = basis
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & mask
    for shift, multiplier in ((33, 0xFF51AFD7ED558CCD), (33, 0xC4CEB9FE1A85EC53)):
        h = ((h ^ (h >> shift)) * multiplier) & mask
    return h ^ (h >> 33)


# word characters of several scripts and cases, CJK (東, ひ, カ, 한, and 𠀀 of 4 bytes) with CJK
# punctuation that is no word character (。), a 4-byte letter (𐐨), a combining mark, digits, the
# underscore; whitespace of 1, 2 and 3 bytes that NFKC keeps (\x85, \u1680, \u2028) and some it
# makes a space; \x1c, which Python calls whitespace and Unicode does not; an emoji
WORDY = "aZéǅİ東ひカ한\U00020000。\U00010428\u0301٣2_-.,  \t\n\r\x0b\x85\u1680\u2028\u00a0\u2003\u3000\x1c\U0001f600"


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(st.text(WORDY, max_size=30), min_size=1, max_size=6))
# the most words a text of its length can hold (the pass makes room for b // 2 + 1 in b bytes)
@example(texts=["a東" * 40, "a " * 40, "a", "", "東" * 40, "a\U00020000" * 20, "é東" * 20])
def test_the_compiled_pass_finds_the_words_and_exact_key_the_patterns_define(texts: list[str]) -> None:
    """Words are WORD_PATTERN's matches in the NFKC, lower-cased text, and the exact key is that
    text with each whitespace run made one space and stripped: the compiled pass over the
    bytes must find exactly these, hashed."""
    import polars as pl

    from datakit.text import EXACT_BASIS, TOKEN_BASIS, WORD_PATTERN, Texts

    lower = pl.Series(texts).str.normalize("NFKC").str.to_lowercase()
    found = Texts.of(texts)
    hashes, offsets = found.all_words()
    for d, words in enumerate(lower.str.extract_all(WORD_PATTERN).to_list()):
        expected = [_plain_hash(w.encode(), int(TOKEN_BASIS)) for w in words]
        assert hashes[offsets[d] : offsets[d + 1]].tolist() == expected, texts[d]
    exact = lower.str.replace_all(r"\s+", " ").str.strip_chars()
    assert found.column("exact_length").to_list() == exact.str.len_bytes().to_list()
    assert found.column("exact_key").to_list() == [_plain_hash(t.encode(), int(EXACT_BASIS)) for t in exact]


# what NFKC changes alone (fullwidth ，Ａ, the ﬁ ligature, ², ①, the unit ㎏, a no-break space,
# the half-width katakana ｶ and its sound mark ﾞ, which NFKC joins into ガ) and in context (a
# decomposed é, a Hangul syllable and jamo that compose, ë with a dialytika tonos that decomposes
# into two marks, a Tibetan vowel whose decomposition starts with a mark, marks out of order),
# and a character Python's Unicode data lacks; for lower-casing, capitals (Ａ, Z, the dotted İ
# that lower-cases to two characters, the titlecase ǅ) and the Greek capital sigma, whose
# lower case depends on what is around it (ς at the end of a word), alone and as the NFKC form
# of the mathematical 𝚺
NFKC_CASES = "a，Ａﬁ²①㎏\u00a0ｶﾞe\u0301\u0344가\u1100\u1161\u11a8\u0f73\u0323\u0307東 \U0001f600\U0001fae8ZİǅΣΑ𝚺"


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(st.text(NFKC_CASES, max_size=12), min_size=1, max_size=8))
@example(texts=["e\u0301", "\u1100\u1161\u11a8", "가\u11a8", "x\u0307\u0323", "ｶﾞ", "a\u0344", "a\u0f73", "ﬁ，²"])
@example(texts=["ΑΣ", "ΑΣ Α", "Σ", "Α𝚺", "ΑΣΑ", "İZ"])
def test_nfkc_by_character_is_nfkc(texts: list[str]) -> None:
    """The table's NFKC and lower-cased NFKC (a text of characters that normalise on their own,
    copied character by character; polars for the rest) are polars' NFKC and its lower case,
    text for text."""
    import polars as pl

    from datakit.io import series_of_buffers
    from datakit.text import nfkc_and_lower, normalise_nfkc

    series = pl.Series(texts)
    expected = series.str.normalize("NFKC")
    assert normalise_nfkc(series, table_from=0).to_list() == expected.to_list()
    normal, (lower, offsets) = nfkc_and_lower(series, table_from=0)
    assert normal.to_list() == expected.to_list()
    assert series_of_buffers("", lower, offsets, pl.String).to_list() == expected.str.to_lowercase().to_list()


def test_nfkc_by_character_holds_for_every_code_point() -> None:
    """Every code point alone, doubled, between a letter and a combining mark, before a Hangul
    trailing consonant, after a leading one, between capitals, and after a Greek capital sigma
    (left to polars, whose lower case of it depends on what follows): wherever the table copies
    a character's NFKC form and its lower case, that is what NFKC and lower-casing make of it
    there."""
    import numpy as np
    import polars as pl

    from datakit.io import series_of_buffers
    from datakit.text import nfkc_and_lower

    one_each = pl.Series([chr(p) for p in np.r_[0:0xD800, 0xE000:0x110000].tolist()])
    for texts in (one_each, one_each + one_each, "x" + one_each + "\u0301", one_each + "\u11a8", "\u1100" + one_each,
                  "Ab" + one_each + "Z", "ΑΣ" + one_each):  # fmt: skip
        expected = texts.str.normalize("NFKC")
        found, (lower, offsets) = nfkc_and_lower(texts, table_from=0)
        wrong = (found != expected).arg_true()
        assert wrong.len() == 0, [texts[i] for i in wrong.head(5).to_list()]
        wrong = (series_of_buffers("", lower, offsets, pl.String) != expected.str.to_lowercase()).arg_true()
        assert wrong.len() == 0, [texts[i] for i in wrong.head(5).to_list()]


def test_the_word_pass_split_among_threads_is_the_pass_on_one(monkeypatch) -> None:
    """With more than one numba thread the texts are split among threads and the parts joined:
    the words, their offsets and the exact keys are those of one thread over all the texts."""
    import numba
    import numpy as np
    import polars as pl
    import pytest

    from datakit import text

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one numba thread: nothing to split")
    rng = np.random.default_rng(0)
    words = ["a", "bc", "東", "déf", "17", " ", "\n", ""]
    texts = ["".join(rng.choice(words, size=rng.integers(0, 40))) for _ in range(301)]
    data, offsets = text.nfkc_and_lower(pl.Series(texts), table_from=0)[1]
    one = text._analyse(data, offsets, text.character_classes())
    monkeypatch.setattr(text, "PARALLEL_FROM", 0)
    threads = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        split = text.words_and_exact_keys(data, offsets)
    finally:
        numba.set_num_threads(threads)  # (monkeypatch cannot undo it; later tests get numba as it was)
    for got, expected in zip(split, one, strict=True):
        assert got.tolist() == expected.tolist()


# letters of every case (titlecase ǅ, modifier ʰ, other Lo 東), digits of other scripts (٣) and
# a non-digit number (²), a combining mark, the underscore (a word character) and separators
TRICKY = "aZéÉǅʰ東1٣²\u0301_ -.,\n"


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(st.text(TRICKY, max_size=24), min_size=1, max_size=6))
def test_values_are_what_the_value_pattern_matches(texts: list[str]) -> None:
    """The guard finds values as runs of word characters kept by two rules (fast); they are
    exactly VALUE_PATTERN's matches (the definition), lower-cased."""
    import polars as pl

    from datakit.value_guard import VALUE_PATTERN, value_rows

    expected = (
        pl.Series(texts).str.normalize("NFKC").str.extract_all(VALUE_PATTERN).list.eval(pl.element().str.to_lowercase())
    )
    rows = value_rows(texts)
    found = [rows.filter(pl.col("text") == k)["value"].to_list() for k in range(len(texts))]
    assert found == expected.to_list()


def test_candidates_are_the_candidate_pattern_matches_for_every_code_point() -> None:
    """Every code point alone, between letters, after a capital, before a digit and between
    spaces: the compiled pass finds the runs that polars' regex finds with CANDIDATE."""
    import numpy as np
    import polars as pl

    from datakit.value_guard import CANDIDATE, candidates

    one_each = pl.Series([chr(p) for p in np.r_[0:0xD800, 0xE000:0x110000].tolist()])
    for texts in (one_each, "a" + one_each + "b", "A" + one_each, one_each + "1", " " + one_each + " x7 "):
        expected = texts.str.extract_all(CANDIDATE).list.join(" ")
        found = candidates(texts)
        wrong = (found != expected).arg_true()
        assert wrong.len() == 0, [texts[i] for i in wrong.head(5).to_list()]


# characters NFKC changes (fullwidth forms, a ligature, superscripts, circled and roman numerals,
# a unit sign, a no-break space, a decomposed accent it composes) among ones it keeps
COMPATIBLE = "ＡＢｃ１２，ﬁ²₃①Ⅻ㎏\u00a0e\u0301Zé東 1."


@settings(max_examples=50, deadline=None)  # a small alphabet: 50 examples cover it
@given(texts=st.lists(st.text(COMPATIBLE, max_size=24), min_size=1, max_size=6))
def test_the_guard_finds_the_same_values_in_the_texts_dedupe_keeps_normalised(texts: list[str]) -> None:
    """Dedupe's scan keeps the candidates of each text's NFKC form for the value guard, which
    then finds the values among them: they must be those of the texts as written."""
    from datakit.text import Texts
    from datakit.value_guard import candidate_rows, candidates, value_rows

    kept = Texts.of(texts, keep_nfkc=True).nfkc
    assert kept.to_list() == [unicodedata.normalize("NFKC", t) for t in texts]
    assert candidate_rows(candidates(kept)).equals(value_rows(texts))


VALUES = ["17", "25", "38", "4", "france", "frnace", "germany", "paris", "pari", "natalia", "natalie", "berlin"]


@settings(max_examples=200, deadline=None)
@given(
    texts=st.lists(st.sets(st.sampled_from(VALUES), max_size=5), min_size=2, max_size=10),
    links=st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), min_size=1, max_size=30),
)
def test_the_compiled_guard_keeps_apart_what_the_plain_rule_does(texts: list[set[str]], links) -> None:
    """Pairs taken in order with union-find: a pair already joined is not checked, the others
    are kept apart exactly when the plain rule says their values are swapped."""
    import numpy as np
    import polars as pl

    from datakit.value_guard import Values, keep_apart

    pairs = np.array([(i % len(texts), j % len(texts)) for i, j in links if i % len(texts) != j % len(texts)])
    if len(pairs) == 0:
        return
    rows = pl.DataFrame(
        [(k, v) for k, values in enumerate(texts) for v in sorted(values)],
        schema={"text": pl.Int64, "value": pl.String},
        orient="row",
    )
    order = np.arange(len(pairs))[::-1]
    parent = list(range(len(texts)))

    def root(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    expected = np.zeros(len(pairs), dtype=bool)
    for k in order:
        a, b = root(int(pairs[k, 0])), root(int(pairs[k, 1]))
        if a == b:
            continue
        if swapped(frozenset(texts[pairs[k, 0]]), frozenset(texts[pairs[k, 1]])):
            expected[k] = True
        else:
            parent[a] = b
    assert keep_apart(Values.from_rows(rows, len(texts)), pairs, order).tolist() == expected.tolist()


# few enough to repeat, and some that need all of a pair key's 32 bits a position
POSITIONS = st.one_of(st.integers(0, 40), st.integers(2**32 - 3, 2**32 - 1))


@settings(max_examples=100, deadline=None)
@given(pairs=st.lists(st.tuples(POSITIONS, POSITIONS).filter(lambda p: p[0] != p[1]), max_size=60))
def test_candidate_pairs_are_made_distinct_and_sorted(pairs: list[tuple[int, int]]) -> None:
    import numpy as np

    from datakit.minhash import unique_pairs

    expected = sorted({(min(p), max(p)) for p in pairs})
    keys = np.array([min(p) << 32 | max(p) for p in pairs], dtype=np.uint64)  # as bucket_pairs packs them
    got = unique_pairs(keys)
    assert [tuple(p) for p in got.tolist()] == expected


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 5)), max_size=80),
    most=st.integers(1, 4),
    bits=st.sampled_from([6, 7, None]),
    first=st.sampled_from([0, 2**32 - 100]),
)
def test_bucket_pairs_are_the_pairs_of_each_shared_bucket(rows, most: int, bits: int | None, first: int) -> None:
    """Each bucket (band, key) of up to ``most`` records gives all its pairs, a bigger one a
    star on its first record and a chain; records alone give none. ``bits`` 6 or 7 makes the
    table of bits that drops lone rows so small that many lone rows share a bit with others.
    Positions from ``first`` up: near 2**32 they need all 32 bits of their half of a pair key."""
    from unittest import mock

    import numpy as np
    import polars as pl

    from datakit import minhash

    frame = pl.DataFrame(
        {  # a key for each (band, k): an odd multiple of a distinct number, as band_keys' keys differ
            "key": np.array([(b << 8 | k) * 0x9E3779B97F4A7C15 % 2**64 for b, k in rows], dtype=np.uint64),
            "position": np.arange(first, first + len(rows), dtype=np.uint32)[::-1].copy(),  # not in row order
        }
    )
    buckets: dict = {}
    for (band, key), position in zip(rows, frame["position"].to_list(), strict=True):
        buckets.setdefault((band, key), []).append(position)
    expected = []
    for members in buckets.values():
        members.sort()
        if len(members) <= most:
            expected += [(a, b) for i, a in enumerate(members) for b in members[i + 1 :]]
        else:
            expected += [(members[0], b) for b in members[1:]] + list(zip(members, members[1:], strict=False))
    table_bits = (lambda rows: bits) if bits else minhash._bits_for
    with mock.patch.object(minhash, "MAX_BUCKET_PAIRS", most), mock.patch.object(minhash, "_bits_for", table_bits):
        got = minhash.bucket_pairs(frame)
    assert sorted((int(k) >> 32, int(k) & 0xFFFFFFFF) for k in got) == sorted(expected)


def test_band_rows_refuse_positions_a_pair_key_cannot_hold() -> None:
    """A position of 2**32 or more would not fit its half of a pair key (two records would be
    confused): refused, not wrapped; 2**32 - 1 still fits."""
    import numpy as np
    import pytest

    from datakit import minhash

    keys = np.full((2, 1), 7, dtype=np.uint64)
    with pytest.raises(ValueError, match="below 2\\*\\*32"):
        minhash.band_rows(keys, np.array([1, 2**32], dtype=np.uint64))
    rows = minhash.band_rows(keys, np.array([1, 2**32 - 1], dtype=np.uint64))
    assert minhash.bucket_pairs(rows).tolist() == [1 << 32 | 2**32 - 1]


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.integers(0, 2**32 - 1), min_size=4, max_size=4), bands=st.integers(2, 6))
def test_equal_values_in_different_bands_give_different_keys(values: list[int], bands: int) -> None:
    """A band bucket is named by its key alone, so two bands holding the same values must not
    share a key; the same values in the same band do."""
    import numpy as np

    from datakit.minhash import LshParams, band_keys

    params = LshParams(threshold=0.5, num_perm=4 * bands, bands=bands, rows=4)
    sigs = np.array([values * bands, values * bands], dtype=np.uint32)
    keys = band_keys(sigs, params)
    assert len(set(keys[0].tolist())) == bands
    assert keys[0].tolist() == keys[1].tolist()


@settings(max_examples=200, deadline=None)
@given(pairs=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=60))
def test_records_in_pairs_are_renumbered_as_unique_would(pairs: list[tuple[int, int]]) -> None:
    """The stages index their records' signatures and values through ``renumber``: the records
    in the pairs, sorted, and each pair as indices into them, as np.unique defines it."""
    import numpy as np

    from datakit.dedupe import renumber

    array = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    involved, local = renumber(array, 41)
    expected, inverse = np.unique(array, return_inverse=True)
    assert involved.tolist() == expected.tolist()
    assert local.tolist() == inverse.reshape(array.shape).tolist()
    assert (involved[local] == array).all()


@settings(max_examples=100, deadline=None)
@given(
    sigs=st.lists(st.lists(st.integers(0, 3), min_size=7, max_size=7), min_size=2, max_size=12),
    pairs=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 11)), max_size=40),
)
def test_estimated_jaccard_is_the_share_of_equal_signature_values(sigs, pairs) -> None:
    import numpy as np

    from datakit.minhash import estimated_jaccard

    pairs = [(i % len(sigs), j % len(sigs)) for i, j in pairs]
    expected = [sum(a == b for a, b in zip(sigs[i], sigs[j], strict=True)) / 7 for i, j in pairs]
    got = estimated_jaccard(np.array(sigs, dtype=np.uint32), np.array(pairs, dtype=np.int64).reshape(-1, 2))
    assert got.tolist() == np.float32(expected).tolist()
