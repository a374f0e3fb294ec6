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

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from datakit import formats, minhash
from datakit.convert import open_records
from datakit.formats import Read, ReadOptions, Rejected
from datakit.io import RowWriter
from datakit.record import RecordError, from_storage_row, meta_scores, to_frame
from datakit.text import ON_CHOICES, Texts, ValueGuard, record_text

METHODS = {"exact": ("exact",), "minhash": ("exact", "minhash"), "semantic": ("exact", "semantic"),
           "all": ("exact", "minhash", "semantic")}  # fmt: skip
DEFAULT_JACCARD = 0.45  # with 5-word shingles: measured in benchmarks/dedupe_quality.py
DEFAULT_COSINE = 0.95
EXACT_SEARCH_LIMIT = 20_000  # above this many records, semantic search runs within k-means partitions
READ_BATCH = 50_000


class DedupeError(ValueError):
    """Bad settings or input for dedupe; the message says which."""


@dataclass
class Settings:
    method: str = "minhash"
    on: str = "all"
    threshold: float | None = None  # Jaccard for minhash, cosine for semantic (method "semantic")
    cosine: float = DEFAULT_COSINE  # the semantic threshold when method is "all"
    keep: str = "first"
    ngram: int = 5
    num_perm: int = 128
    backend: str = "numpy"
    model: str | None = None
    value_guard: bool = True  # keep apart similar texts whose numbers or names were swapped

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise DedupeError(f"--method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.on not in ON_CHOICES:
            raise DedupeError(f"--on must be one of {', '.join(ON_CHOICES)}, not {self.on!r}")
        if not (self.keep in ("first", "longest") or self.keep.startswith("score:")):
            raise DedupeError(f"--keep must be first, longest or score:KEY, not {self.keep!r}")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise DedupeError(f"--threshold must be between 0 and 1, got {self.threshold}")

    @property
    def jaccard(self) -> float:
        return self.threshold if self.threshold is not None and self.method != "semantic" else DEFAULT_JACCARD

    @property
    def cosine_threshold(self) -> float:
        return self.threshold if self.threshold is not None and self.method == "semantic" else self.cosine


@dataclass
class Summary:
    input: str
    output: str
    clusters_path: str | None
    settings: dict[str, Any]
    read: int = 0
    kept: int = 0
    removed: int = 0
    removed_by_stage: dict[str, int] = field(default_factory=dict)
    clusters_by_stage: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def check(self) -> None:
        assert self.read == self.kept + self.removed == self.kept + sum(self.removed_by_stage.values()), self

    def text(self) -> str:
        lines = [f"{self.input} -> {self.output}", *self.notes]
        lines.append(f"records: read {self.read} = kept {self.kept} + removed {self.removed}")
        for stage, n in self.removed_by_stage.items():
            lines.append(f"  {stage:<9} removed {n} in {self.clusters_by_stage[stage]} clusters")
        if self.clusters_path:
            lines.append(f"clusters: {self.clusters_path}")
        lines.append(f"time: {self.seconds:.1f}s")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- stages: each returns similar pairs (i < j, positions in the texts given) ----------


@dataclass
class StageResult:
    pairs: np.ndarray  # int64[m, 2]
    similarity: np.ndarray  # float32[m]
    similarity_of: Callable[[int, int], float]  # for pairs the stage did not list (kept vs removed)
    note: str | None = None


def exact_stage(texts: Texts, settings: Settings) -> StageResult:
    keys = pl.DataFrame([texts.column("exact_key"), texts.column("exact_length")])
    groups = (
        keys.with_row_index("i")
        .group_by("exact_key", "exact_length", maintain_order=True)
        .agg(pl.col("i"))
        .filter(pl.col("i").list.len() > 1)
    )
    pairs = [
        np.stack([np.full(len(members) - 1, members[0]), members[1:]], axis=1)
        for members in (np.asarray(m, dtype=np.int64) for m in groups["i"].to_list())
    ]
    found = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
    return StageResult(found, np.ones(len(found), dtype=np.float32), lambda i, j: 1.0)


def minhash_stage(texts: Texts, settings: Settings) -> StageResult:
    params = minhash.choose_lsh_params(settings.jaccard, settings.num_perm)
    all_sigs, all_has_shingles = _signatures_of_set(texts, settings)
    sigs, has_shingles = all_sigs[texts.index], all_has_shingles[texts.index]
    if settings.backend == "datasketch":
        pairs = minhash.candidate_pairs_datasketch(sigs, has_shingles, params)
    else:
        pairs = minhash.candidate_pairs(minhash.band_keys(sigs, params), has_shingles)
    similarity = minhash.estimated_jaccard(sigs, pairs)
    keep = similarity >= params.threshold
    pairs, similarity = pairs[keep], similarity[keep]
    note = f"{params.describe()}; {int(keep.size)} candidate pairs, {len(pairs)} at or above the threshold"
    pairs, similarity, guard_note = apply_value_guard(texts, pairs, similarity, settings)
    return StageResult(pairs, similarity, lambda i, j: float((sigs[i] == sigs[j]).mean()), note + guard_note)


def _signatures_of_set(texts: Texts, settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures of every text of the set (computed once, shared by its views), and
    which texts have shingles at all. Words and shingles are dropped as soon as they are used."""
    key = ("minhash", settings.ngram, settings.num_perm, settings.backend)
    if key not in texts.shared:
        hashes, offsets = minhash.shingle_hashes(texts, settings.ngram)
        texts.drop_words()
        if settings.backend == "datasketch":
            sigs = minhash.signatures_datasketch(hashes, offsets, settings.num_perm)
        elif settings.backend == "numpy":
            sigs = minhash.signatures(hashes, offsets, settings.num_perm)
        else:
            raise DedupeError(f"--backend must be numpy or datasketch, not {settings.backend!r}")
        texts.shared[key] = (sigs, np.diff(offsets) > 0)
    return texts.shared[key]


def apply_value_guard(
    texts: Texts, pairs: np.ndarray, similarity: np.ndarray, settings: Settings
) -> tuple[np.ndarray, np.ndarray, str]:
    """Drop pairs whose texts differ by swapped numbers or names (datakit.text.ValueGuard).

    Pairs are taken most similar first, and a pair whose two records are already joined
    through other pairs is kept without a check: it cannot change the clusters, so the
    guard only runs where it decides something.
    """
    if not settings.value_guard or len(pairs) == 0:
        return pairs, similarity, ""
    involved, local = np.unique(pairs, return_inverse=True)
    local = local.reshape(pairs.shape)
    guard = ValueGuard(texts.take(involved))
    parent = list(range(len(involved)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    keep = np.ones(len(pairs), dtype=bool)
    for k in np.argsort(-similarity, kind="stable").tolist():
        a, b = find(int(local[k, 0])), find(int(local[k, 1]))
        if a == b:
            continue
        if guard.differ(int(local[k, 0]), int(local[k, 1])) is None:
            parent[a] = b
        else:
            keep[k] = False
    return pairs[keep], similarity[keep], f"; {int((~keep).sum())} kept apart by the value guard"


def semantic_stage(texts: Texts, settings: Settings, embedder=None) -> StageResult:
    from datakit.embed import Embedder

    embedder = embedder or Embedder(settings.model, progress=True)
    vectors = embedder(texts.raw.to_list())
    threshold = settings.cosine_threshold
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
    note += f" ({len(vectors) - embedder.embedded} from cache); {len(found)} pairs"
    found, similarity, guard_note = apply_value_guard(texts, found, np.concatenate(sims), settings)
    return StageResult(found, similarity, lambda i, j: float(vectors[i] @ vectors[j]), note + guard_note)


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


STAGES = {"exact": exact_stage, "minhash": minhash_stage, "semantic": semantic_stage}


# --- clusters and the keep policy ------------------------------------------------------


def clusters_from_pairs(n: int, pairs: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Connected components (union-find) of the similarity graph with 2+ members, each as
    (member positions, indices of the pairs inside it)."""
    if len(pairs) == 0:
        return []
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    members = _split_by(labels, np.arange(n))
    pair_groups = _split_by(labels[pairs[:, 0]], np.arange(len(pairs)))
    return [(members[label], pair_groups[label]) for label in pair_groups]


def _split_by(labels: np.ndarray, values: np.ndarray) -> dict[int, np.ndarray]:
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    return {int(sorted_labels[s]): values[group] for s, group in zip(starts, np.split(order, starts[1:]), strict=True)}


def keep_order(settings: Settings, texts: pl.Series, records: pl.DataFrame) -> np.ndarray:
    """A rank per record: in each cluster the record with the lowest rank is kept."""
    n = len(texts)
    position = np.arange(n, dtype=np.float64)
    if settings.keep == "first":
        return position
    if settings.keep == "longest":
        length = texts.str.len_chars().to_numpy().astype(np.float64)
        return np.lexsort((position, -length)).argsort()
    key = settings.keep.split(":", 1)[1]
    scores = meta_scores(records, key)
    return np.lexsort((position, -np.nan_to_num(scores, nan=-np.inf))).argsort()


def _links(kept: int, pairs: np.ndarray, sims: np.ndarray) -> dict[int, tuple[int, float]]:
    """For each member, the member it was linked through on a path from the kept one, and that similarity."""
    adjacency: dict[int, list[tuple[int, float]]] = {}
    for (i, j), s in zip(pairs.tolist(), sims.tolist(), strict=True):
        adjacency.setdefault(i, []).append((j, s))
        adjacency.setdefault(j, []).append((i, s))
    links = {}
    queue = deque([kept])
    seen = {kept}
    while queue:
        node = queue.popleft()
        for other, s in adjacency.get(node, []):
            if other not in seen:
                seen.add(other)
                links[other] = (node, s)
                queue.append(other)
    return links


def dedupe_texts(
    texts: pl.Series, records: pl.DataFrame, settings: Settings, embedder=None
) -> tuple[np.ndarray, list[dict[str, Any]], list[str]]:
    """(mask of records kept, clusters for the review file, notes) for texts in input order."""
    n = len(texts)
    prepared = Texts.of(texts)
    alive = np.ones(n, dtype=bool)
    rank = keep_order(settings, texts, records)
    ids = records["id"].to_list()
    clusters: list[dict[str, Any]] = []
    notes: list[str] = []
    for stage in METHODS[settings.method]:
        index = np.flatnonzero(alive)  # stage positions -> record positions
        if len(index) < 2:
            continue
        run = STAGES[stage]
        result = (
            run(prepared.take(index), settings, embedder)
            if stage == "semantic"
            else run(prepared.take(index), settings)
        )
        if result.note:
            notes.append(result.note)
        for members, pair_index in clusters_from_pairs(len(index), result.pairs):
            kept = int(members[np.argmin(rank[index[members]])])
            links = _links(kept, result.pairs[pair_index], result.similarity[pair_index])
            removed = []
            for member in sorted(int(m) for m in members if m != kept):
                via, via_similarity = links[member]
                removed.append(
                    {
                        "id": ids[index[member]],
                        "index": int(index[member]),
                        "similarity": round(result.similarity_of(kept, member), 4),
                        "linked_to": ids[index[via]],
                        "link_similarity": round(via_similarity, 4),
                    }
                )
                alive[index[member]] = False
            clusters.append(
                {"stage": stage, "kept": ids[index[kept]], "kept_index": int(index[kept]), "removed": removed}
            )
    return alive, clusters, notes


# --- the file-to-file API --------------------------------------------------------------


def load(input: str | Path, from_format: str | None, on: str, read_options: ReadOptions | None = None):
    """(format, canonical frame, texts) of a whole input; a bad row is an error naming it."""
    fmt, _, outcomes = open_records(input, from_format, read_options)
    frames, texts = [], []
    batch = []
    for outcome in outcomes:
        if isinstance(outcome, Rejected):
            hint = "run `datakit convert --on-error skip` first to set bad rows aside"
            raise DedupeError(f"{outcome.row.where()}: {outcome.reason} ({hint})")
        if isinstance(outcome, Read):
            batch.append(outcome.record)
            if len(batch) >= READ_BATCH:
                frames.append(to_frame(batch))
                texts.append(pl.Series([record_text(r, on) for r in batch], dtype=pl.String))
                batch = []
    if batch or not frames:
        frames.append(to_frame(batch))
        texts.append(pl.Series([record_text(r, on) for r in batch], dtype=pl.String))
    return fmt, pl.concat(frames), pl.concat(texts)


def dedupe(
    input: str | Path,
    output: str | Path,
    *,
    settings: Settings | None = None,
    clusters: str | Path | None = None,
    to: str | None = None,
    from_format: str | None = None,
    embedder=None,
) -> Summary:
    """Deduplicate ``input`` into ``output`` (format ``to``, default: the input's format)."""
    settings = settings or Settings()
    started = time.perf_counter()
    fmt, records, texts = load(input, from_format, settings.on)
    target = formats.get(to or fmt)
    clusters = clusters if clusters is not None else f"{output}.clusters.jsonl"
    summary = Summary(str(input), str(output), str(clusters), asdict(settings), read=len(records))
    alive, found, notes = dedupe_texts(texts, records, settings, embedder)
    summary.notes = notes
    by_stage = Counter()
    cluster_count = Counter()
    with RowWriter(clusters, pl.Schema({"stage": pl.String}), kind="jsonl") as review:
        for cluster in found:
            review.write(cluster)
            by_stage[cluster["stage"]] += len(cluster["removed"])
            cluster_count[cluster["stage"]] += 1
    summary.removed_by_stage = {s: by_stage[s] for s in METHODS[settings.method]}
    summary.clusters_by_stage = {s: cluster_count[s] for s in METHODS[settings.method]}
    write_options = formats.WriteOptions()
    with RowWriter(output, target.SCHEMA) as writer:
        kept_rows = records.filter(pl.Series(alive))
        for row in kept_rows.iter_rows(named=True):
            try:
                writer.write(target.write(from_storage_row(row), write_options))
            except RecordError as exc:
                raise DedupeError(f"record {row['id']} cannot be written as {target.NAME}: {exc}") from None
    summary.kept = int(alive.sum())
    summary.removed = summary.read - summary.kept
    summary.seconds = time.perf_counter() - started
    summary.check()
    return summary
