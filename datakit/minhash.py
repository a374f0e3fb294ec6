"""MinHash near-duplicate detection, in stages that can each run per partition.

    texts --shingle_hashes--> (hashes, offsets)        per shard
          --signatures------> uint32[n, num_perm]      per shard
          --band_keys-------> uint64[n, bands]         per shard
          --candidate_pairs-> (i, j)                   a shuffle by (band, key), then per bucket
          --verify----------> (i, j, estimated J)      per pair
          --> union-find (datakit.dedupe.components)

Shingles are word n-grams of the normalised text (NFKC, lower case, words of letters and
digits; digits are kept, so "17+25" and "38+4" stay apart). A text shorter than n words
is one shingle. Each shingle is a 32-bit hash built from 64-bit word hashes.

Signatures use datasketch 2.0's default permutation scheme ("affine32": the MurmurHash3
finalizer, then h -> a*h + b mod 2^32 with datasketch's seeded a and b), so the vectorised
backend here and the datasketch backend (its MinHash for signatures, its MinHashLSH for
candidates) give the same signatures and the same candidate pairs; only the speed differs.
The numba kernel runs the documents in parallel across cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
import polars as pl

from datakit.text import Texts

FMIX32 = (16, 0x85EBCA6B, 13, 0xC2B2AE35, 16)  # MurmurHash3's 32-bit finalizer (datasketch's _fmix)
EMPTY = np.uint32(0xFFFFFFFF)  # the signature value of a text with no shingles


@dataclass(frozen=True)
class LshParams:
    """Bands x rows for a Jaccard threshold, chosen so that recall at the threshold is >= min_recall."""

    threshold: float
    num_perm: int
    bands: int
    rows: int

    def recall_at(self, jaccard: float) -> float:
        """Chance that a pair with this Jaccard similarity shares at least one band."""
        return 1.0 - (1.0 - jaccard**self.rows) ** self.bands

    def describe(self) -> str:
        return (
            f"MinHash LSH: {self.bands} bands x {self.rows} rows of {self.num_perm} permutations; "
            f"a pair at Jaccard {self.threshold:.2f} is a candidate with chance {self.recall_at(self.threshold):.3f}"
        )


def choose_lsh_params(threshold: float, num_perm: int = 128, min_recall: float = 0.9) -> LshParams:
    """The bands x rows (bands * rows <= num_perm) with recall >= min_recall at the threshold that
    lets the fewest dissimilar pairs through (least area under the S-curve below the threshold)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"the MinHash threshold must be between 0 and 1, got {threshold}")
    grid = np.linspace(0.0, threshold, 200)
    best = None
    for rows in range(1, num_perm + 1):
        for bands in range(1, num_perm // rows + 1):
            params = LshParams(threshold, num_perm, bands, rows)
            if params.recall_at(threshold) < min_recall:
                continue
            false_positives = float(np.trapezoid([params.recall_at(s) for s in grid], grid))
            if best is None or false_positives < best[0]:
                best = (false_positives, params)
    if best is None:
        raise ValueError(f"no bands x rows within {num_perm} permutations reach recall {min_recall} at {threshold}")
    return best[1]


def permutations(num_perm: int = 128, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters (a odd), from the same seeded generator."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


# --- shingles -------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _shingles(words: np.ndarray, offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    n_docs = offsets.shape[0] - 1
    out_offsets = np.zeros(n_docs + 1, dtype=np.int64)
    for d in range(n_docs):
        length = offsets[d + 1] - offsets[d]
        out_offsets[d + 1] = out_offsets[d] + (max(length - n + 1, 1) if length > 0 else 0)
    out = np.empty(out_offsets[-1], dtype=np.uint32)
    k = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier: order matters in a shingle
    for d in range(n_docs):
        start, end = offsets[d], offsets[d + 1]
        pos = out_offsets[d]
        for s in range(start, max(end - n + 1, start + 1) if end > start else start):
            h = np.uint64(0)
            for w in range(s, min(s + n, end)):
                h = h * k + words[w]
            h ^= h >> np.uint64(29)
            out[pos] = np.uint32(h >> np.uint64(32)) ^ np.uint32(h & np.uint64(0xFFFFFFFF))
            pos += 1
    return out, out_offsets


def shingle_hashes(texts: Texts | Sequence[str], n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(uint32 hash of every word n-gram shingle, offsets per text); a text under n words is one shingle.

    For a Texts view, the shingles of the whole set it belongs to.
    """
    if not isinstance(texts, Texts):
        texts = Texts.of(list(texts))
    words, offsets = texts.all_words()
    return _shingles(words, offsets, n)


# --- signatures -----------------------------------------------------------------------


@numba.njit(cache=True, nogil=True, inline="always")
def _fmix32(value: np.uint32) -> np.uint32:
    """MurmurHash3's 32-bit finalizer (FMIX32) of one value, as datasketch's _fmix computes it."""
    s1, m1, s2, m2, s3 = FMIX32
    v = np.uint32(value)
    v = np.uint32(v ^ (v >> np.uint32(s1)))
    v = np.uint32(v * np.uint32(m1))
    v = np.uint32(v ^ (v >> np.uint32(s2)))
    v = np.uint32(v * np.uint32(m2))
    return np.uint32(v ^ (v >> np.uint32(s3)))


@numba.njit(parallel=True, cache=True, nogil=True)
def _signatures(hashes: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    n_docs = offsets.shape[0] - 1
    num_perm = a.shape[0]
    out = np.full((n_docs, num_perm), EMPTY, dtype=np.uint32)
    for d in numba.prange(n_docs):
        lowest = out[d]
        for i in range(offsets[d], offsets[d + 1]):
            # each shingle's hash mixed here, not by numpy beforehand (five arrays the size of them all)
            h = np.uint64(_fmix32(hashes[i]))
            # the inner loop runs over the permutations with a branch-free min, so LLVM makes it
            # SIMD (16 permutations an instruction with AVX-512): 6x faster than a loop over the
            # shingles per permutation with `if v < lowest`, which stays scalar
            for p in range(num_perm):
                v = np.uint32((a[p] * h + b[p]) & np.uint64(0xFFFFFFFF))  # a*h + b mod 2^32
                lowest[p] = min(lowest[p], v)
    return out


def signatures(hashes: np.ndarray, offsets: np.ndarray, num_perm: int = 128, seed: int = 1) -> np.ndarray:
    """uint32[n_docs, num_perm] MinHash signatures of uint32 shingle hashes, equal to datasketch's
    MinHash(scheme='affine32')."""
    a, b = permutations(num_perm, seed)
    return _signatures(hashes.astype(np.uint32, copy=False), offsets, a, b)


def signatures_datasketch(hashes: np.ndarray, offsets: np.ndarray, num_perm: int = 128, seed: int = 1) -> np.ndarray:
    """The same signatures through datasketch itself (the reference backend)."""
    from datasketch import MinHash

    docs = [hashes[offsets[d] : offsets[d + 1]].tolist() for d in range(len(offsets) - 1)]
    sketches = MinHash.bulk(docs, num_perm=num_perm, seed=seed, hashfunc=_identity, scheme="affine32")
    return np.stack([m.hashvalues for m in sketches]).astype(np.uint32) if docs else np.zeros((0, num_perm), np.uint32)


def _identity(value: int) -> int:
    return value


# --- LSH: band keys, candidate pairs, verification ------------------------------------


def band_keys(sigs: np.ndarray, params: LshParams) -> np.ndarray:
    """uint64[n, bands]: one hash per band of ``rows`` signature values, a sum weighted by powers
    of FNV's 64-bit prime (mod 2**64) started from a number of its band's own, folded. Two
    records share a band bucket when they have the same key there: bands start from different
    numbers, so equal values in two different bands give different keys (but for a chance of one
    in 2**64), and the key alone names the bucket."""
    if sigs.ndim != 2 or sigs.shape[1] < params.bands * params.rows:  # (the compiled loop does not check)
        raise ValueError(f"band_keys needs signatures of {params.bands * params.rows} values or more, got {sigs.shape}")
    weights = np.uint64(0x100000001B3) ** np.arange(params.rows, dtype=np.uint64)
    starts = np.arange(1, params.bands + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)  # golden-ratio steps
    return _band_keys(sigs, params.bands, params.rows, weights, starts)


@numba.njit(cache=True, nogil=True)
def _band_keys(sigs: np.ndarray, bands: int, rows: int, weights: np.ndarray, starts: np.ndarray) -> np.ndarray:
    # one pass, where numpy made three uint64 arrays of every value it sums (33 MB each for a
    # scan's block of 40k records; 0.8 us a record against 0.04 here, Intel Xeon with AMX)
    keys = np.empty((len(sigs), bands), dtype=np.uint64)
    for d in range(len(sigs)):
        for band in range(bands):
            key = starts[band]
            for r in range(rows):
                key += np.uint64(sigs[d, band * rows + r]) * weights[r]
            keys[d, band] = key ^ (key >> np.uint64(31))
    return keys


MAX_BUCKET_PAIRS = 64  # a bucket larger than this is checked as a chain plus a star, not all pairs


def bucket_pairs(frame: pl.DataFrame) -> np.ndarray:
    """The pairs of records that share a band bucket, from rows (key, position): all of one band
    key's rows must be in ``frame``. Each pair (i < j, maybe repeated) is one uint64, its pair
    key i << 32 | j: half the memory of two int64, and sorted as one number (``unique_pairs``).

    A bucket of k <= MAX_BUCKET_PAIRS records yields all its pairs; a bigger one (many copies
    of one text) yields each member with the first and with its neighbour, which is enough to
    connect the copies (every pair is still verified before it counts).
    """
    # most rows are alone in their bucket (4 in 5 in benchmarks/dedupe_scale.py): a compiled pass
    # over a table of bits drops nearly all of them before the rest are sorted, 4x faster than
    # counting every row's bucket with polars (25M rows: 0.3 s against 1.9 s)
    key = frame["key"].to_numpy()
    frame = frame.filter(pl.Series(_maybe_shared(key, _bits_for(len(key))))).sort("key", "position")
    return _pairs_in_buckets(frame["key"].to_numpy(), frame["position"].to_numpy(), MAX_BUCKET_PAIRS)


def _bits_for(rows: int) -> int:
    """Size of the table of bits (a power of two) for ``rows`` rows: 32 bits a row, so that a row
    alone in its bucket shares its bit with another row's about 3 times in 100."""
    return max(16, int(rows * 32 - 1).bit_length())


@numba.njit(cache=True, nogil=True)
def _maybe_shared(key: np.ndarray, bits: int) -> np.ndarray:
    """bool[rows]: True for every row whose key another row has too, and for a few that are
    alone but whose bit another row's bucket hashes to (the caller's grouping finds them alone).
    Each bucket sets its bit once seen, and a second bit once seen twice."""
    seen = np.zeros((1 << bits) >> 6, dtype=np.uint64)
    twice = np.zeros_like(seen)
    shift = np.uint64(64 - bits)
    for i in range(len(key)):
        slot = _slot(key[i], shift)
        word, bit = slot >> np.uint64(6), np.uint64(1) << (slot & np.uint64(63))
        if seen[word] & bit:
            twice[word] |= bit
        seen[word] |= bit
    shared = np.empty(len(key), dtype=np.bool_)
    for i in range(len(key)):
        slot = _slot(key[i], shift)
        shared[i] = (twice[slot >> np.uint64(6)] >> (slot & np.uint64(63))) & np.uint64(1)
    return shared


@numba.njit(cache=True, nogil=True, inline="always")
def _slot(key: np.uint64, shift: np.uint64) -> np.uint64:
    """The bit of a key: multiplicative hashing, the top bits of an odd multiple."""
    return (key * np.uint64(0xBF58476D1CE4E5B9)) >> shift


@numba.njit(cache=True, nogil=True)
def _pairs_in_buckets(key: np.ndarray, members: np.ndarray, most: int) -> np.ndarray:
    """The pair keys of each bucket (a run of equal keys; rows sorted by key, position, so a
    bucket's members rise): all of a bucket of up to ``most`` rows, else a star on the first and
    a chain."""
    pairs = np.empty(_pair_count(key, most), dtype=np.uint64)
    at, start, high = 0, 0, np.uint64(32)
    while start < len(members):
        end = _bucket_end(key, start)
        if end - start <= most:
            for i in range(start, end):
                for j in range(i + 1, end):
                    pairs[at] = (np.uint64(members[i]) << high) | np.uint64(members[j])
                    at += 1
        else:
            first = np.uint64(members[start]) << high
            for j in range(start + 1, end):
                pairs[at] = first | np.uint64(members[j])
                pairs[at + 1] = (np.uint64(members[j - 1]) << high) | np.uint64(members[j])
                at += 2
        start = end
    return pairs


@numba.njit(cache=True, nogil=True)
def _pair_count(key: np.ndarray, most: int) -> int:
    count, start = 0, 0
    while start < len(key):
        end = _bucket_end(key, start)
        size = end - start
        count += size * (size - 1) // 2 if size <= most else 2 * (size - 1)
        start = end
    return count


@numba.njit(cache=True, nogil=True, inline="always")
def _bucket_end(key: np.ndarray, start: int) -> int:
    end = start + 1
    while end < len(key) and key[end] == key[start]:
        end += 1
    return end


def unique_pairs(keys: np.ndarray) -> np.ndarray:
    """The distinct pairs of pair keys uint64[m] (i << 32 | j, as ``bucket_pairs`` makes them) as int64[k, 2]
    (smaller, larger), sorted. ``keys`` is sorted in place: at 10M records it is the reduce's
    largest array, and a copy would be fresh memory for the kernel to zero."""
    if keys.ndim != 1 or keys.dtype != np.uint64:
        raise TypeError(
            f"unique_pairs takes pair keys uint64[m] (see bucket_pairs), got {keys.dtype}{list(keys.shape)}"
        )
    # one sort of every pair as one integer (numpy's vectorised sort: 0.35 s for 11M candidates
    # from 1M records, against 0.55-1.0 s for polars' hashed unique and a sort), then one pass
    # that writes each distinct pair once, without the temporaries of numpy's unique
    keys.sort()
    return _distinct_pairs(keys)


@numba.njit(cache=True, nogil=True)
def _distinct_pairs(keys: np.ndarray) -> np.ndarray:
    """Sorted pair keys: each distinct one once, as (key >> 32, key & 0xFFFFFFFF)."""
    count = 0
    for i in range(len(keys)):
        if i == 0 or keys[i] != keys[i - 1]:
            count += 1
    pairs = np.empty((count, 2), dtype=np.int64)
    at, low = 0, np.uint64(0xFFFFFFFF)
    for i in range(len(keys)):
        if i == 0 or keys[i] != keys[i - 1]:
            pairs[at, 0], pairs[at, 1] = keys[i] >> np.uint64(32), keys[i] & low
            at += 1
    return pairs


def band_rows(keys: np.ndarray, positions: np.ndarray) -> pl.DataFrame:
    """Band keys uint64[n, bands] of the records at ``positions`` as rows (key, position). A
    position is a uint32 (12 bytes a row, not 18 with a band number and a uint64): at 10M
    records these rows are the largest table a scan writes. A pair key holds two positions of
    32 bits, so larger ones are refused here, before they could wrap."""
    if len(positions) and int(positions.max()) >= 1 << 32:  # (4 billion records)
        raise ValueError("band_rows takes positions below 2**32")
    return pl.DataFrame({"key": keys.ravel(), "position": np.repeat(positions.astype(np.uint32), keys.shape[1])})


def candidate_pairs(keys: np.ndarray, eligible: np.ndarray | None = None) -> np.ndarray:
    """int64[m, 2] distinct pairs (i < j) of documents that share a band bucket (all in memory)."""
    index = np.arange(len(keys), dtype=np.int64)
    if eligible is not None:
        index = index[eligible]
    return unique_pairs(bucket_pairs(band_rows(keys[index], index)))


def estimated_jaccard(sigs: np.ndarray, pairs: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Share of equal signature values for each pair (the MinHash estimate of Jaccard)."""
    equal = _equal_values(sigs, np.ascontiguousarray(pairs, dtype=np.int64))
    return (equal / sigs.shape[1]).astype(dtype, copy=False)  # the share in float64, then as asked


@numba.njit(parallel=True, cache=True, nogil=True)
def _equal_values(sigs: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    # compiled: numpy would copy both signatures of every pair first (5x slower)
    out = np.empty(len(pairs), dtype=np.int32)
    for k in numba.prange(len(pairs)):
        same = 0
        for p in range(sigs.shape[1]):
            same += sigs[pairs[k, 0], p] == sigs[pairs[k, 1], p]
        out[k] = same
    return out


def candidate_pairs_datasketch(sigs: np.ndarray, eligible: np.ndarray, params: LshParams, seed: int = 1) -> np.ndarray:
    """The reference path for candidates: datasketch's MinHashLSH index with the same bands x
    rows, each signature queried and then inserted."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(num_perm=params.num_perm, params=(params.bands, params.rows))
    found = []
    for i in np.flatnonzero(eligible).tolist():
        sketch = MinHash(num_perm=params.num_perm, seed=seed, hashvalues=sigs[i], scheme="affine32")
        found += [(j, i) for j in lsh.query(sketch)]
        lsh.insert(i, sketch)
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    return np.array(sorted(found), dtype=np.int64)
