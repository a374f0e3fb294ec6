"""``datakit dedupe``: exact, MinHash-LSH and semantic deduplication with a review file.

Stages run in order on the records that the previous stage kept:

- ``exact``: the chosen text, normalised (NFKC, lower case, whitespace collapsed; digits and
  punctuation kept), hashed; equal hashes are one cluster.
- ``minhash``: word n-gram shingles, MinHash signatures, LSH with bands x rows chosen for
  recall >= 0.9 at the threshold, candidates verified by estimated Jaccard (datakit.minhash).
- ``semantic``: sentence embeddings, pairs with cosine >= the threshold, found by an exact
  blocked search, or within k-means partitions for large sets (SemDeDup).

``--method exact`` runs the first stage; ``minhash`` and ``semantic`` run exact first, then
theirs; ``all`` runs the three. Similar pairs are joined into clusters (connected components,
i.e. union-find); each cluster keeps one record by the keep policy and removes the rest. The
clusters file (JSONL, one cluster a line) names the kept record, every removed one, its
similarity to the kept one and the pair that linked it, and the stage, so a merge can be
reviewed and reversed. Every input record is either written or listed as removed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import breadth_first_order, connected_components

from datakit import minhash
from datakit.errors import OptionError
from datakit.io import buffers_of, series_of_buffers
from datakit.options import StepConfig, option
from datakit.pipeline import Batch, Processed, SideOutput, Step, Tables, read_ahead, register
from datakit.record import meta_scores, to_frame
from datakit.text import ON_CHOICES, Texts, record_text
from datakit.value_guard import Values, candidate_rows, candidates, keep_apart

METHODS = {"exact": ("exact",), "minhash": ("exact", "minhash"), "semantic": ("exact", "semantic"),
           "all": ("exact", "minhash", "semantic")}  # fmt: skip
DEFAULT_JACCARD = 0.45  # with 5-word shingles: measured in benchmarks/dedupe_quality.py
DEFAULT_COSINE = 0.95
EXACT_SEARCH_LIMIT = 20_000  # above this many records, semantic search runs within k-means partitions


KEEP_HELP = "Which record of a cluster stays: first, longest or score:KEY (highest meta[KEY])."


@dataclass
class DedupeConfig(StepConfig):
    method: str = option("minhash", "exact; minhash or semantic (each after exact); all three.",
                         choices=tuple(METHODS))  # fmt: skip
    on: str = option("all", "Which turns make the text compared.", choices=ON_CHOICES)
    threshold: float | None = option(None, f"Jaccard for minhash (default {DEFAULT_JACCARD}); cosine for "
                                     f"method semantic (default {DEFAULT_COSINE}).", low=0, high=1, open_range=True)  # fmt: skip
    cosine: float = option(DEFAULT_COSINE, "Semantic threshold with method all.", low=0, high=1, open_range=True)
    keep: str = option("first", KEEP_HELP)
    ngram: int = option(5, "MinHash shingle size in words.", low=1, high=1000)
    num_perm: int = option(128, "MinHash permutations.", low=8, high=1024)
    backend: str = option("numpy", "MinHash signatures: datakit's vectorised kernel, or datasketch (the reference).",
                          choices=("numpy", "datasketch"))  # fmt: skip
    model: str | None = option(None, "Embedding model name or path (default: embedded all-MiniLM-L6-v2).")
    value_guard: bool = option(True, "Keep apart similar texts whose numbers or names were swapped.")

    def check(self) -> None:
        if not (self.keep in ("first", "longest") or (self.keep.startswith("score:") and len(self.keep) > 6)):
            raise OptionError("keep", f"must be first, longest or score:KEY, not {self.keep!r}")
        if "minhash" in METHODS[self.method]:
            try:
                minhash.choose_lsh_params(self.jaccard, self.num_perm)
            except ValueError as exc:
                raise OptionError("threshold", f"{exc} (raise threshold or num_perm)") from None

    @property
    def jaccard(self) -> float:
        return self.threshold if self.threshold is not None and self.method != "semantic" else DEFAULT_JACCARD

    @property
    def cosine_threshold(self) -> float:
        return self.threshold if self.threshold is not None and self.method == "semantic" else self.cosine


# --- stages: each returns similar pairs (i < j, input positions) ------------------------


@dataclass
class StageResult:
    pairs: np.ndarray  # int64[m, 2], i < j; each record's pairs in ascending order of the other record
    similarity: np.ndarray  # float32[m]
    # for pairs the stage did not list (each kept record with the ones it removed): i[k], j[k]
    similarity_of: Callable[[np.ndarray, np.ndarray], np.ndarray]
    note: str | None = None


def exact_pairs(keys: pl.DataFrame) -> StageResult:
    """Records with equal normalised text: each joined to the first of its group."""
    pairs = (
        keys.group_by("exact_key", "exact_length", maintain_order=True)
        .agg(pl.col("position"))
        .filter(pl.col("position").list.len() > 1)
        # each group's first member with each of the others, groups in order, without a list a group
        .select(first=pl.col("position").list.first(), other=pl.col("position").list.slice(1))
        .explode("other")
    )
    found = np.stack([pairs["first"].to_numpy(), pairs["other"].to_numpy()], axis=1).astype(np.int64)
    return StageResult(found, np.ones(len(found), dtype=np.float32), lambda i, j: np.ones(len(i)))


def minhash_pairs(tables: Tables, alive: np.ndarray, config: DedupeConfig, values: Callable) -> StageResult:
    """Candidates from each bucket of band keys (records still alive), verified by estimated Jaccard."""
    params = minhash.choose_lsh_params(config.jaccard, config.num_perm)
    if config.backend == "datasketch":  # the reference path: every signature in memory
        positions, sigs = _signatures(tables, None, len(alive))
        has_shingles = tables.scan("signatures").select("position", "has_shingles").sort("position").collect()
        eligible = alive[positions] & has_shingles["has_shingles"].to_numpy()
        pairs = positions[minhash.candidate_pairs_datasketch(sigs, eligible, params)]
    else:
        still_alive = _alive(alive)  # made once, not per bucket: a literal of n values (28 ms at 10M)
        # the next bucket is read while this one's pairs are made (both release the GIL)
        buckets = read_ahead(bucket.filter(still_alive).collect() for bucket in tables.each_bucket("bands"))
        with closing(buckets):
            found = [minhash.bucket_pairs(bucket) for bucket in buckets]
        keys = np.concatenate(found) if found else np.zeros(0, dtype=np.uint64)
        del found  # (the buckets' arrays: as much memory again as keys)
        pairs = minhash.unique_pairs(keys)
        del keys
    involved, local = renumber(pairs, len(alive))
    positions, sigs = _signatures(tables, involved, len(alive))
    if not np.array_equal(positions, involved):  # local indexes sigs only if every one is there
        raise RuntimeError("a record in a candidate pair has no MinHash signature")
    similarity = minhash.estimated_jaccard(sigs, local)
    keep = similarity >= params.threshold
    note = f"{params.describe()}; {len(pairs)} candidate pairs, {int(keep.sum())} at or above the threshold"
    pairs, similarity = pairs[keep], similarity[keep]
    pairs, similarity, guard_note = apply_value_guard(pairs, similarity, values, config)

    def similarity_of(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        found = np.stack([np.searchsorted(involved, i), np.searchsorted(involved, j)], 1)
        return minhash.estimated_jaccard(sigs, found, np.float64)  # float64, as the clusters file always had

    return StageResult(pairs, similarity, similarity_of, note + guard_note)


def renumber(pairs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct records in ``pairs`` (positions below n), sorted; ``pairs`` as indices into
    them): what np.unique(pairs, return_inverse=True) gives, by marking the n records instead of
    sorting every end of every pair (14x faster for 3M pairs among 1M records)."""
    marked = np.zeros(n, dtype=bool)
    marked[pairs.ravel()] = True
    return np.flatnonzero(marked), (np.cumsum(marked) - 1)[pairs]


def _alive(alive: np.ndarray) -> pl.Expr:
    """A filter on rows whose record (by position) is marked in the mask ``alive``."""
    return pl.lit(pl.Series(alive)).gather(pl.col("position"))


def _signatures(tables: Tables, positions: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted positions, their signatures): the ones asked for, or all ``n``. Read a part at a
    time into one array made up front: the wanted ones of the whole set are held once."""
    wanted = None
    if positions is not None:
        wanted = np.zeros(n, dtype=bool)
        wanted[positions] = True
    room = n if wanted is None else int(wanted.sum())
    at, sigs, count = np.empty(room, dtype=np.int64), None, 0
    # the next parts are read while this one is copied: at 10M records the scan's tables outgrow
    # the page cache, and each part is read from disk
    parts = read_ahead(_wanted_rows(part, wanted) for part in tables.each_part("signatures"))
    with closing(parts):
        for frame in parts:
            part_at, part_sigs = frame["position"].to_numpy().astype(np.int64), signature_array(frame["signature"])
            if count + len(part_at) > room:
                raise RuntimeError("the signatures table has more rows than records")
            if sigs is None:
                sigs = np.empty((room, part_sigs.shape[1]), dtype=np.uint32)
            at[count : count + len(part_at)], sigs[count : count + len(part_at)] = part_at, part_sigs
            count += len(part_at)
    if sigs is None:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 1), dtype=np.uint32)
    at, sigs = at[:count], sigs[:count]
    if len(at) > 1 and not (at[1:] > at[:-1]).all():  # parts come in position order; in case not
        order = np.argsort(at, kind="stable")
        at, sigs = at[order], sigs[order]
    return at, sigs


def _wanted_rows(part: pl.LazyFrame, wanted: np.ndarray | None) -> pl.DataFrame:
    """A part's rows whose record (by position) is marked in ``wanted`` (all of them if None)."""
    frame = part.collect()
    if wanted is None:
        return frame
    return frame.filter(pl.Series(wanted[frame["position"].to_numpy()]))


def signature_column(sigs: np.ndarray) -> pl.Series:
    """MinHash signatures uint32[n, permutations] as a Binary column, a signature a value: read
    back 5x faster than polars' Array column (0.18 against 0.9 us a row)."""
    sigs = np.ascontiguousarray(sigs, dtype="<u4")
    size = sigs.shape[1] * 4
    return series_of_buffers(
        "signature", sigs.view(np.uint8).ravel(), np.arange(0, len(sigs) * size + 1, size), pl.Binary
    )


def signature_array(column: pl.Series) -> np.ndarray:
    """The signatures of a ``signature_column`` as uint32[n, permutations]."""
    if len(column) == 0:
        return np.zeros((0, 1), dtype=np.uint32)
    data, offsets = buffers_of(column)
    return data[offsets[0] : offsets[-1]].view("<u4").reshape(len(column), -1)


def apply_value_guard(
    pairs: np.ndarray, similarity: np.ndarray, values: Callable[[np.ndarray], Values], config: DedupeConfig
) -> tuple[np.ndarray, np.ndarray, str]:
    """Drop pairs whose texts differ by swapped numbers or names (datakit.value_guard).

    Pairs are taken most similar first, and a pair whose two records are already joined
    through other pairs is kept without a check: it cannot change the clusters, so the
    guard only runs where it decides something. ``values(positions)`` gives the records' values.
    """
    if not config.value_guard or len(pairs) == 0:
        return pairs, similarity, ""
    involved, local = renumber(pairs, int(pairs.max()) + 1)
    apart = keep_apart(values(involved), local, np.argsort(-similarity, kind="stable"))
    return pairs[~apart], similarity[~apart], f"; {int(apart.sum())} kept apart by the value guard"


def semantic_pairs(tables: Tables, alive: np.ndarray, config: DedupeConfig, values: Callable, embedder) -> StageResult:
    """Pairs of records still alive whose embeddings have cosine >= the threshold."""
    frame = tables.scan("vectors").filter(_alive(alive)).sort("position").collect()
    index = frame["position"].to_numpy().astype(np.int64)
    vectors = frame["vector"].to_numpy()
    threshold = config.cosine_threshold
    if len(vectors) <= EXACT_SEARCH_LIMIT:
        groups = [np.arange(len(vectors))]
        how = "exact blocked search"
    else:
        groups = _kmeans_partitions(vectors)
        how = f"search within {len(groups)} k-means partitions"
    pairs, sims = [], []
    for members in groups:
        p, s = cosine_pairs(vectors[members], threshold)
        pairs.append(members[p])
        sims.append(s)
    found = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
    found.sort(axis=1)
    note = f"semantic: {embedder.model_name}, cosine >= {threshold}, {how}; {embedder.embedded} texts embedded"
    note += f" now (the rest from the cache); {len(found)} pairs"
    found, similarity, guard_note = apply_value_guard(index[found], np.concatenate(sims), values, config)

    def similarity_of(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        # one dot product a pair, in float32, as the clusters file has always had them (a batched
        # einsum may sum in another order and round the fourth decimal the other way)
        return np.array(
            [
                float(vectors[a] @ vectors[b])
                for a, b in zip(np.searchsorted(index, i), np.searchsorted(index, j), strict=True)
            ]
        )

    return StageResult(found, similarity, similarity_of, note + guard_note)


def cosine_pairs(vectors: np.ndarray, threshold: float, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j) with cosine >= threshold, by blocks of rows against the rest."""
    pairs, sims = [], []
    for start in range(0, len(vectors), block):
        scores = vectors[start : start + block] @ vectors[start:].T
        rows, cols = np.nonzero(np.triu(scores >= threshold, k=1))
        pairs.append(np.stack([rows + start, cols + start], axis=1))
        sims.append(scores[rows, cols])
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.float32)
    return np.concatenate(pairs).astype(np.int64), np.concatenate(sims).astype(np.float32)


def _kmeans_partitions(vectors: np.ndarray, per_partition: int = 5_000) -> list[np.ndarray]:
    from sklearn.cluster import MiniBatchKMeans

    k = max(2, len(vectors) // per_partition)
    labels = MiniBatchKMeans(n_clusters=k, random_state=0, n_init=3, batch_size=4096).fit_predict(vectors)
    return [np.flatnonzero(labels == c) for c in range(k) if (labels == c).any()]


# --- clusters and the keep policy ------------------------------------------------------


def clusters_from_pairs(n: int, pairs: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Connected components (union-find) of the similarity graph with 2+ members, each as
    (member positions, indices of the pairs inside it)."""
    if len(pairs) == 0:
        return []
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    involved, _ = renumber(pairs, n)
    members = _split_by(labels[involved], involved)
    pair_groups = _split_by(labels[pairs[:, 0]], np.arange(len(pairs)))
    return [(members[label], pair_groups[label]) for label in pair_groups]


def _split_by(labels: np.ndarray, values: np.ndarray) -> dict[int, np.ndarray]:
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    return {int(sorted_labels[s]): values[group] for s, group in zip(starts, np.split(order, starts[1:]), strict=True)}


def keep_rank(config: DedupeConfig, records: pl.DataFrame) -> np.ndarray:
    """A rank per record (by position): in each cluster the record with the lowest rank is kept."""
    position = np.arange(records.height, dtype=np.float64)
    if config.keep == "first":
        return position
    if config.keep == "longest":
        return np.lexsort((position, -records["length"].to_numpy().astype(np.float64))).argsort()
    scores = records["score"].to_numpy().astype(np.float64)
    return np.lexsort((position, -np.nan_to_num(scores, nan=-np.inf))).argsort()


def _links(n: int, kept: np.ndarray, pairs: np.ndarray, similarity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each record in a cluster, the record it was linked through on a path from the kept one
    of its cluster, and that pair's similarity: one breadth-first search over the n records from
    a node joined to every kept one, neighbours in position order (each record's pairs come in
    that order from every stage, so this is the search a cluster at a time that it replaced)."""
    source, m = n, len(pairs)
    ends = np.empty((2, 2 * m + len(kept)), dtype=np.int32 if n < 2**31 - 1 else np.int64)
    ends[0, :m], ends[0, m : 2 * m], ends[0, 2 * m :] = pairs[:, 0], pairs[:, 1], source
    ends[1, :m], ends[1, m : 2 * m], ends[1, 2 * m :] = pairs[:, 1], pairs[:, 0], kept
    # float64 edges: the search would convert any other type to it, a copy of the whole graph
    graph = coo_matrix((np.ones(ends.shape[1]), (ends[0], ends[1])), shape=(n + 1, n + 1)).tocsr()
    del ends
    graph.sort_indices()
    _, via = breadth_first_order(graph, source, directed=True, return_predecessors=True)
    del graph
    # each link's similarity, looked up by the pair's key among the stage's sorted pair keys
    keys = pairs[:, 0] * (n + 1) + pairs[:, 1]  # i < j in every pair
    by_key = np.argsort(keys)
    linked = np.flatnonzero((via >= 0) & (via != source))
    wanted = np.minimum(linked, via[linked]) * (n + 1) + np.maximum(linked, via[linked])
    via_similarity = np.zeros(n + 1, dtype=similarity.dtype)
    via_similarity[linked] = similarity[by_key[np.searchsorted(keys, wanted, sorter=by_key)]]
    return via, via_similarity


@dataclass
class StageClusters:
    """One stage's clusters, kept compact until the review file is written."""

    stage: str
    result: StageResult
    clusters: list[tuple[int, np.ndarray, np.ndarray]]  # (kept position, member positions, pair indices)


def review_rows(found: list[StageClusters], id_column: pl.Series) -> Iterator[dict[str, Any]]:
    """The clusters file, a cluster a line: the kept record, and each removed one with its
    similarity to the kept one and the pair that linked it."""
    n = len(id_column)
    in_a_cluster = np.zeros(n, dtype=bool)  # marked, not sorted as np.unique would (0.25 s at 1M records)
    in_a_cluster[np.concatenate([m for stage in found for _, m, _ in stage.clusters] or [np.zeros(0, int)])] = True
    clustered = np.flatnonzero(in_a_cluster)
    ids = dict(
        zip(clustered.tolist(), id_column.gather(clustered).to_list(), strict=True)
    )  # one gather, not one a cluster
    for stage in found:
        if not stage.clusters:
            continue
        result = stage.result
        kept = np.array([k for k, _, _ in stage.clusters], dtype=np.int64)
        via, via_similarity = _links(n, kept, result.pairs, result.similarity)
        # every cluster's removed records at once, by cluster and then position: numpy calls for
        # the stage, not for each of its clusters (hundreds of thousands at 10M records)
        members = np.concatenate([m for _, m, _ in stage.clusters])
        cluster = np.repeat(np.arange(len(kept)), [len(m) for _, m, _ in stage.clusters])
        removed_ones = members != kept[cluster]
        removed, cluster = members[removed_ones], cluster[removed_ones]
        order = np.lexsort((removed, cluster))
        removed, cluster = removed[order], cluster[order]
        ends = np.cumsum(np.bincount(cluster, minlength=len(kept))).tolist()
        columns = (
            removed.tolist(),
            result.similarity_of(kept[cluster], removed).tolist(),
            via[removed].tolist(),
            via_similarity[removed].tolist(),
        )
        start = 0
        for k, end in zip(kept.tolist(), ends, strict=True):
            rows = [
                {
                    "id": ids[m],
                    "index": m,
                    "similarity": round(s, 4),
                    "linked_to": ids[linked],
                    "link_similarity": round(link, 4),
                }
                for m, s, linked, link in zip(*(column[start:end] for column in columns), strict=True)
            ]
            start = end
            yield {"stage": stage.stage, "kept": ids[k], "kept_index": k, "removed": rows}


# --- the step -----------------------------------------------------------------------------


@register
class Dedupe(Step):
    """Remove exact and near duplicates, writing a clusters file to review.

    scan: per batch, each record's exact key, MinHash signature and LSH band keys (and its
    embedding for the semantic stage). The band keys are shuffled into buckets by key, so
    records that share a band bucket land in the same bucket file. reduce: candidate pairs
    bucket by bucket, verified by estimated Jaccard and the value guard; union-find (connected
    components) over the verified pairs; the keep policy picks one record per cluster. Only
    the pairs and a few numbers per record are held. process: drop the removed records.
    """

    name = "dedupe"
    Config = DedupeConfig
    side_outputs = {"clusters": SideOutput(".clusters.jsonl", "Review file: one cluster a line.")}
    shuffle = {"bands": "key"}

    def __init__(self, config: DedupeConfig, paths=None, **resources: Any):
        super().__init__(config, paths, **resources)
        self.stages = METHODS[config.method]
        if "minhash" in self.stages:  # (the threshold only matters to the minhash stage)
            self.params = minhash.choose_lsh_params(config.jaccard, config.num_perm)
        self.removed_by = np.zeros(0, dtype=np.int8)  # per position: 0 kept, else 1 + stage number
        self.found: list[StageClusters] = []
        self.ids = pl.Series("id", [], dtype=pl.String)

    @property
    def embedder(self):
        if "embedder" not in self.resources:
            from datakit.embed import Embedder

            self.resources["embedder"] = Embedder(self.config.model, progress=self.resources.get("progress", False))
        return self.resources["embedder"]

    def allows_scan_workers(self) -> bool:
        return "semantic" not in self.stages  # each worker would load the embedding model

    def scan(self, batch: Batch) -> dict[str, pl.DataFrame]:
        config = self.config
        raw = [record_text(r, config.on) for r in batch.records]
        guarded = config.value_guard and self.stages != ("exact",)  # the guard reads the texts of pairs
        texts = Texts.of(raw, keep_nfkc=guarded)
        text = texts.raw
        position = pl.Series("position", np.arange(batch.start, batch.start + len(batch), dtype=np.uint64))
        records = pl.DataFrame(
            {
                "position": position,
                "id": [r["id"] for r in batch.records],
                "exact_key": texts.column("exact_key"),
                "exact_length": texts.column("exact_length"),
                "length": text.str.len_chars(),
            }
        )
        if config.keep.startswith("score:"):
            records = records.with_columns(score=pl.Series(meta_scores(to_frame(batch.records), config.keep[6:])))
        tables = {"records": records}
        if guarded:  # the runs that may be values, not the texts: a fifth of the bytes to store and read back
            tables["values"] = pl.DataFrame({"position": position, "candidates": candidates(texts.nfkc)})
        if "minhash" in self.stages:
            hashes, offsets = minhash.shingle_hashes(texts, config.ngram)
            texts.drop_words()
            sigs = (minhash.signatures if config.backend == "numpy" else minhash.signatures_datasketch)(
                hashes, offsets, config.num_perm
            )
            has_shingles = np.diff(offsets) > 0
            tables["signatures"] = pl.DataFrame(
                {"position": position, "signature": signature_column(sigs), "has_shingles": has_shingles}
            )
            keys = minhash.band_keys(sigs, self.params)[has_shingles]
            tables["bands"] = minhash.band_rows(keys, position.to_numpy()[has_shingles])
        if "semantic" in self.stages:
            tables["vectors"] = pl.DataFrame({"position": position, "vector": self.embedder(raw)})
        return tables

    def reduce(self, tables: Tables) -> None:
        columns = ["position", "id", "exact_key", "exact_length", "length", "score"]
        records = tables.scan("records")
        if records is None:  # an empty input: nothing to compare
            return
        records = records.select([c for c in columns if c in records.collect_schema()]).sort("position").collect()
        n = records.height
        self.ids = records["id"]
        rank = keep_rank(self.config, records)
        alive = np.ones(n, dtype=bool)
        self.removed_by = np.zeros(n, dtype=np.int8)

        def values(positions: np.ndarray) -> Values:
            """The value guard's values of these records (sorted positions), found now from the
            candidates the scan kept: only records in pairs need them. They are read a part at a
            time (parts come in position order, as the write phase reads them)."""
            wanted = np.zeros(n, dtype=bool)
            wanted[positions] = True
            rows, found = [], 0
            parts = read_ahead(_wanted_rows(part, wanted).sort("position") for part in tables.each_part("values"))
            with closing(parts):
                for part in parts:
                    rows.append(candidate_rows(part["candidates"], first=found))
                    found += part.height
            return Values.from_rows(pl.concat(rows), found)

        keys = records.select("position", "exact_key", "exact_length")
        for number, stage in enumerate(self.stages, 1):
            if alive.sum() < 2:
                continue
            if stage == "exact":
                result = exact_pairs(keys)
            elif stage == "minhash":
                result = minhash_pairs(tables, alive, self.config, values)
            else:
                result = semantic_pairs(tables, alive, self.config, values, self.embedder)
            if result.note:
                self.notes.append(result.note)
            clusters = []
            for members, pair_index in clusters_from_pairs(n, result.pairs):
                kept = int(members[np.argmin(rank[members])])
                clusters.append((kept, members, pair_index))
                gone = members[members != kept]
                alive[gone] = False
                self.removed_by[gone] = number
            self.found.append(StageClusters(stage, result, clusters))
            self.figures[f"{stage} clusters"] = len(clusters)

    def decision(self) -> np.ndarray:
        return self.removed_by

    def take_decision(self, decision: np.ndarray) -> None:
        self.removed_by = decision

    def removals(self, start: int, count: int) -> tuple[np.ndarray, list[str]]:
        return self.removed_by[start : start + count], [f"{stage} duplicate" for stage in self.stages]

    def process(self, batch: Batch) -> Processed:
        return Processed.keeping(batch.records, *self.removals(batch.start, len(batch)))

    def finish(self) -> Processed:
        return Processed(side={"clusters": review_rows(self.found, self.ids)})
