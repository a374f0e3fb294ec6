"""``datakit select``: choose the best N records, with the main published strategies.

- ``kcenter``: greedy k-center (farthest point first) over cosine distance; the covering
  radius reached is reported.
- ``deita``: score first, diversity aware (DEITA): records by descending score, each kept
  only if its nearest kept record has cosine similarity below the threshold (0.9), until N.
- ``cluster``: k-means, then an even share from each cluster (highest score first when a
  score is given, else a seeded random order).
- ``random``: a seeded random sample, the baseline every ablation needs.

Embeddings come from datakit.embed (cached on disk, shared with dedupe). Each chosen record
gets ``meta["select"]``: the method, its rank in the order chosen, its nearest other chosen
record and their similarity, and its cluster where there is one. A PNG shows a 2-D
projection (PCA) of all records with the chosen ones marked.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datakit import formats
from datakit.dedupe import load
from datakit.formats import ReadOptions
from datakit.io import AtomicFile, RowWriter
from datakit.record import RecordError, from_storage_row, meta_scores
from datakit.text import ON_CHOICES

METHODS = ("kcenter", "deita", "cluster", "random")
DEITA_THRESHOLD = 0.9


class SelectError(ValueError):
    """Bad settings or input for select; the message says which."""


@dataclass
class Settings:
    k: float = 1000  # a count, or a share of the input when below 1
    method: str = "kcenter"
    score: str | None = None  # meta key (or column) to rank by
    seed: int = 0
    on: str = "all"
    model: str | None = None
    threshold: float = DEITA_THRESHOLD
    clusters: int | None = None  # k-means clusters for method "cluster" (default: about sqrt(N))

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SelectError(f"--method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.on not in ON_CHOICES:
            raise SelectError(f"--on must be one of {', '.join(ON_CHOICES)}, not {self.on!r}")
        if self.k <= 0:
            raise SelectError(f"--k must be a positive count or a share below 1, got {self.k}")
        if self.method == "deita" and not self.score:
            raise SelectError(
                "deita ranks by a score: pass --score KEY (for example the score `datakit filter --annotate` adds)"
            )

    def count(self, n: int) -> int:
        k = round(self.k * n) if self.k < 1 else int(self.k)
        if k > n:
            raise SelectError(f"--k {k} is more than the {n} records in the input")
        return max(1, k)


@dataclass
class Selection:
    chosen: np.ndarray  # record positions, in the order chosen
    clusters: np.ndarray | None = None  # cluster of every record, for method "cluster"
    radius: float | None = None  # k-center: the largest cosine distance from any record to its centre
    notes: list[str] = field(default_factory=list)


# --- k-center -------------------------------------------------------------------------


def kcenter(vectors: np.ndarray, k: int, seed: int = 0, shortlist: int = 2048) -> Selection:
    """Greedy farthest-point selection; the first centre is a seeded random record.

    The same picks as the textbook loop (kcenter_plain), with lazy updates: each record's
    similarity to its nearest centre only grows, so once the ``shortlist`` least-covered
    records are known, any record outside it stays at or above the shortlist's cut-off. New
    centres are applied to the shortlist alone while its best candidate is still below the
    cut-off; the pending centres then reach all records in one matrix-matrix product (BLAS3)
    instead of one matrix-vector product each.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(vectors)
    shortlist = min(shortlist, n)
    first = int(np.random.default_rng(seed).integers(n))
    chosen = [first]
    nearest = vectors @ vectors[first]  # each record's similarity to its nearest applied centre
    pending: list[int] = []
    while len(chosen) < k:
        if pending:  # bring every record up to date with the centres chosen since the last refresh
            np.maximum(nearest, (vectors @ vectors[pending].T).max(axis=1), out=nearest)
            pending = []
        short = np.argpartition(nearest, shortlist - 1)[:shortlist] if shortlist < n else np.arange(n)
        cutoff = nearest[short].max() if shortlist < n else np.inf
        short_nearest = nearest[short].copy()
        short_vectors = vectors[short]
        while len(chosen) < k:
            best = int(np.argmin(short_nearest))
            if short_nearest[best] > cutoff:  # a record outside the shortlist may be farther now
                break
            nxt = int(short[best])
            chosen.append(nxt)
            pending.append(nxt)
            np.maximum(short_nearest, short_vectors @ vectors[nxt], out=short_nearest)
    if pending:
        np.maximum(nearest, (vectors @ vectors[pending].T).max(axis=1), out=nearest)
    return Selection(np.array(chosen), radius=float(1.0 - nearest.min()))


def kcenter_plain(vectors: np.ndarray, k: int, seed: int = 0) -> Selection:
    """The textbook loop in numpy (the reference the benchmark times datakit against)."""
    n = len(vectors)
    first = int(np.random.default_rng(seed).integers(n))
    chosen = [first]
    distance = 1.0 - vectors @ vectors[first]
    for _ in range(1, k):
        nxt = int(np.argmax(distance))
        chosen.append(nxt)
        np.minimum(distance, 1.0 - vectors @ vectors[nxt], out=distance)
    return Selection(np.array(chosen), radius=float(distance.max()))


def covering_radius(vectors: np.ndarray, chosen: np.ndarray, block: int = 4096) -> float:
    """The largest cosine distance from any record to its nearest chosen record."""
    centres = vectors[chosen]
    worst = 0.0
    for start in range(0, len(vectors), block):
        worst = max(worst, float((1.0 - vectors[start : start + block] @ centres.T).min(axis=1).max()))
    return worst


# --- the other methods -----------------------------------------------------------------


def deita(vectors: np.ndarray, scores: np.ndarray, k: int, threshold: float = DEITA_THRESHOLD) -> Selection:
    """Highest score first; a record is kept only if no kept record is as similar as the threshold."""
    order = np.lexsort((np.arange(len(scores)), -np.nan_to_num(scores, nan=-np.inf)))
    kept = np.empty((k, vectors.shape[1]), dtype=np.float32)
    chosen: list[int] = []
    for index in order.tolist():
        if chosen and float((kept[: len(chosen)] @ vectors[index]).max()) >= threshold:
            continue
        kept[len(chosen)] = vectors[index]
        chosen.append(index)
        if len(chosen) == k:
            break
    selection = Selection(np.array(chosen, dtype=np.int64))
    if len(chosen) < k:
        selection.notes.append(
            f"deita: only {len(chosen)} records are below cosine {threshold} of each other; chose {len(chosen)} of {k}"
        )
    return selection


def cluster(
    vectors: np.ndarray, k: int, scores: np.ndarray | None, n_clusters: int | None = None, seed: int = 0
) -> Selection:
    """k-means, then an even share from each cluster (a small cluster's unused share goes to the others)."""
    from sklearn.cluster import KMeans

    n_clusters = min(len(vectors), n_clusters or max(2, round(np.sqrt(k))))
    labels = KMeans(n_clusters=n_clusters, random_state=seed, n_init=3).fit_predict(vectors)
    rng = np.random.default_rng(seed)
    queues = []
    for c in range(n_clusters):
        members = np.flatnonzero(labels == c)
        if scores is not None:
            members = members[np.lexsort((members, -np.nan_to_num(scores[members], nan=-np.inf)))]
        else:
            members = rng.permutation(members)
        queues.append(list(members))
    chosen: list[int] = []
    while len(chosen) < k:  # round robin: one from each cluster that still has records
        for queue in queues:
            if queue and len(chosen) < k:
                chosen.append(int(queue.pop(0)))
    return Selection(np.array(chosen), clusters=labels)


def random_sample(n: int, k: int, seed: int = 0) -> Selection:
    return Selection(np.random.default_rng(seed).choice(n, size=k, replace=False))


def choose(vectors: np.ndarray, settings: Settings, scores: np.ndarray | None = None) -> Selection:
    """The selection for normalised embeddings, by settings.method."""
    k = settings.count(len(vectors))
    if settings.method == "kcenter":
        return kcenter(vectors, k, settings.seed)
    if settings.method == "deita":
        return deita(vectors, scores, k, settings.threshold)
    if settings.method == "cluster":
        return cluster(vectors, k, scores, settings.clusters, settings.seed)
    return random_sample(len(vectors), k, settings.seed)


def nearest_chosen(vectors: np.ndarray, chosen: np.ndarray, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For each chosen record, its most similar other chosen record (position in ``chosen``) and the cosine."""
    centres = vectors[chosen]
    nearest = np.full(len(chosen), -1)
    similarity = np.full(len(chosen), np.nan, dtype=np.float32)
    for start in range(0, len(chosen), block):
        sims = centres[start : start + block] @ centres.T
        rows = np.arange(sims.shape[0])
        sims[rows, rows + start] = -np.inf
        if sims.shape[1] > 1:
            nearest[start : start + block] = sims.argmax(axis=1)
            similarity[start : start + block] = sims.max(axis=1)
    return nearest, similarity


# --- the file-to-file API --------------------------------------------------------------


@dataclass
class Summary:
    input: str
    output: str
    method: str
    read: int = 0
    selected: int = 0
    radius: float | None = None
    plot: str | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def text(self) -> str:
        lines = [f"{self.input} -> {self.output}", *self.notes]
        lines.append(f"{self.method}: selected {self.selected} of {self.read} records")
        if self.radius is not None:
            lines.append(f"covering radius (cosine distance to the nearest chosen record): {self.radius:.4f}")
        if self.plot:
            lines.append(f"plot: {self.plot}")
        lines.append(f"time: {self.seconds:.1f}s")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def select(
    input: str | Path,
    output: str | Path,
    *,
    settings: Settings | None = None,
    to: str | None = None,
    from_format: str | None = None,
    plot: str | Path | None = None,
    embedder=None,
    read_options: ReadOptions | None = None,
) -> Summary:
    """Select ``settings.k`` records of ``input`` into ``output``; see the module docstring."""
    from datakit.embed import Embedder

    settings = settings or Settings()
    started = time.perf_counter()
    fmt, records, texts = load(input, from_format, settings.on, read_options)
    summary = Summary(str(input), str(output), settings.method, read=records.height)
    settings.count(records.height)  # fail on a too-large k before embedding anything
    scores = meta_scores(records, settings.score) if settings.score else None
    if scores is not None and np.isnan(scores).all():
        raise SelectError(f"no record has a score under meta key {settings.score!r}")
    embedder = embedder or Embedder(settings.model, progress=True)
    vectors = embedder(texts.to_list())  # random needs none to choose, but its report does
    selection = choose(vectors, settings, scores)
    summary.notes += selection.notes
    summary.radius = selection.radius if selection.radius is not None else covering_radius(vectors, selection.chosen)
    chosen = selection.chosen
    rank = {int(index): r for r, index in enumerate(chosen.tolist())}
    nearest, similarity = nearest_chosen(vectors, chosen)
    ids = records["id"].to_list()
    target = formats.get(to or "canonical")  # meta["select"] needs the canonical record
    write_options = formats.WriteOptions()
    with RowWriter(output, target.SCHEMA) as writer:
        for index in sorted(rank):  # the input's order
            record = from_storage_row(records.row(index, named=True))
            r = rank[index]
            info: dict[str, Any] = {"method": settings.method, "rank": r}
            if nearest[r] >= 0:
                info["nearest"] = ids[int(chosen[nearest[r]])]
                info["nearest_similarity"] = round(float(similarity[r]), 4)
            if selection.clusters is not None:
                info["cluster"] = int(selection.clusters[index])
            record["meta"]["select"] = info
            try:
                writer.write(target.write(record, write_options))
            except RecordError as exc:
                raise SelectError(f"record {ids[index]} cannot be written as {target.NAME}: {exc}") from None
    summary.selected = len(chosen)
    if plot is not None:
        summary.plot = str(draw(vectors, chosen, plot, f"{settings.method}: {len(chosen)} of {len(vectors)}"))
    summary.seconds = time.perf_counter() - started
    return summary


def draw(vectors: np.ndarray, chosen: np.ndarray, path: str | Path, title: str) -> Path:
    """A PNG of the records in 2-D (the first two principal components), chosen ones marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centred = vectors - vectors.mean(axis=0)
    _, _, components = np.linalg.svd(centred[:: max(1, len(centred) // 20_000)], full_matrices=False)
    points = centred @ components[:2].T
    figure, axes = plt.subplots(figsize=(7, 6), dpi=110)
    axes.scatter(points[:, 0], points[:, 1], s=4, c="#c8c8c8", label="all records", linewidths=0)
    axes.scatter(points[chosen, 0], points[chosen, 1], s=10, c="#d62728", label="chosen", linewidths=0)
    axes.set_title(title)
    axes.set_xlabel("PC 1")
    axes.set_ylabel("PC 2")
    axes.legend(loc="best", markerscale=2)
    figure.tight_layout()
    path = Path(path)
    atomic = AtomicFile(path)
    figure.savefig(atomic.tmp_path, format="png")
    plt.close(figure)
    atomic.commit()
    return path
