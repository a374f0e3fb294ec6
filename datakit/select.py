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

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from datakit.errors import OptionError, StepError
from datakit.io import AtomicFile, write_text
from datakit.options import StepConfig, option
from datakit.pipeline import Batch, Processed, SideOutput, Step, Tables, register
from datakit.record import meta_scores, to_frame
from datakit.text import ON_CHOICES, record_text

METHODS = ("kcenter", "deita", "cluster", "random")
DEITA_THRESHOLD = 0.9


@dataclass
class SelectConfig(StepConfig):
    k: float | None = option(None, "How many records: a count, or a share of the input below 1.", low=0,
                             high=1e12, open_range=True, required=True)  # fmt: skip
    method: str = option("kcenter", "kcenter, deita (score first), cluster (stratified) or random.", choices=METHODS)
    score: str | None = option(None, "meta key to rank by (deita needs one; cluster uses it).")
    seed: int = option(0, "Seed of the first centre, the k-means and the random sample.", low=0, high=2**32 - 1)
    on: str = option("all", "Which turns make the text embedded.", choices=ON_CHOICES)
    model: str | None = option(None, "Embedding model name or path (default: embedded all-MiniLM-L6-v2).")
    threshold: float = option(DEITA_THRESHOLD, "deita: cosine limit between chosen records.", low=0, high=1)
    clusters: int | None = option(None, "cluster: number of k-means clusters (default about sqrt(k)).", low=1)

    def check(self) -> None:
        if self.method == "deita" and not self.score:
            raise OptionError(
                "score",
                "deita ranks by a score: pass --score KEY (for example the score `datakit filter --annotate` adds)",
            )

    def count(self, n: int) -> int:
        k = round(self.k * n) if self.k < 1 else int(self.k)
        if k > n:
            raise StepError(f"k: {k} is more than the {n} records in the input")
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


def choose(vectors: np.ndarray, settings: SelectConfig, scores: np.ndarray | None = None) -> Selection:
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


# --- the step ---------------------------------------------------------------------------


@register
class Select(Step):
    """Choose k records: k-center, DEITA-style score-first, cluster-stratified or random.

    scan: embed each batch (through the disk cache) and keep its scores. reduce: choose among
    all the vectors (held in memory: 1.5 KB a record with the default model) and draw the plot.
    process: write the chosen records, in input order, with meta["select"].
    """

    name = "select"
    Config = SelectConfig
    output_format = "canonical"  # meta["select"] needs the canonical record
    side_outputs = {
        "plot": SideOutput(".png", "PNG of the 2-D projection, chosen records marked.", rows=False),
        "map": SideOutput(".map.json", "The 2-D projection as JSON (for the HTML report).", rows=False),
    }

    def scan(self, batch: Batch) -> dict[str, pl.DataFrame]:
        config = self.config
        texts = [record_text(r, config.on) for r in batch.records]
        frame = pl.DataFrame(
            {
                "position": np.arange(batch.start, batch.start + len(batch), dtype=np.uint64),
                "id": [r["id"] for r in batch.records],
                "vector": self.embedder(texts) if texts else np.zeros((0, 1), dtype=np.float32),
            }
        )
        if config.score:
            frame = frame.with_columns(score=pl.Series(meta_scores(to_frame(batch.records), config.score)))
        return {"vectors": frame}

    @property
    def embedder(self):
        if "embedder" not in self.resources:
            from datakit.embed import Embedder

            self.resources["embedder"] = Embedder(self.config.model, progress=self.resources.get("progress", False))
        return self.resources["embedder"]

    def reduce(self, tables: Tables) -> None:
        config = self.config
        frame = tables.scan("vectors")
        if frame is None:
            raise StepError("the input has no records to select from")
        frame = frame.sort("position").collect()
        k = config.count(frame.height)
        scores = frame["score"].to_numpy() if config.score else None
        if scores is not None and np.isnan(scores).all():
            raise StepError(f"score: no record has a score under meta key {config.score!r}")
        vectors = frame["vector"].to_numpy()
        selection = choose(vectors, config, scores)
        self.notes += selection.notes
        radius = selection.radius if selection.radius is not None else covering_radius(vectors, selection.chosen)
        self.figures["covering radius (cosine distance to the nearest chosen record)"] = round(radius, 4)
        chosen = selection.chosen
        nearest, similarity = nearest_chosen(vectors, chosen)
        ids = frame["id"].to_list()
        self.chosen: dict[int, dict[str, Any]] = {}
        for r, index in enumerate(chosen.tolist()):
            info: dict[str, Any] = {"method": config.method, "rank": r}
            if nearest[r] >= 0:
                info["nearest"] = ids[int(chosen[nearest[r]])]
                info["nearest_similarity"] = round(float(similarity[r]), 4)
            if selection.clusters is not None:
                info["cluster"] = int(selection.clusters[index])
            self.chosen[int(index)] = info
        if self.paths.get("plot") or self.paths.get("map"):
            points = project(vectors)
            title = f"{config.method}: {k} of {len(vectors)}"
            if self.paths.get("plot"):
                draw(points, chosen, self.paths["plot"], title)
            if self.paths.get("map"):
                write_map(points, chosen, self.paths["map"], title)

    def decision(self) -> dict[int, dict[str, Any]]:
        return self.chosen

    def take_decision(self, decision: dict[int, dict[str, Any]]) -> None:
        self.chosen = decision

    def process(self, batch: Batch) -> Processed:
        out = Processed()
        for position, record in enumerate(batch.records, batch.start):
            info = self.chosen.get(position)
            if info is None:
                out.removed["not selected"] += 1
            else:
                record["meta"]["select"] = info
                out.records.append(record)
        return out


def project(vectors: np.ndarray) -> np.ndarray:
    """The records in 2-D: their first two principal components (fitted on at most 20k)."""
    centred = vectors - vectors.mean(axis=0)
    _, _, components = np.linalg.svd(centred[:: max(1, len(centred) // 20_000)], full_matrices=False)
    points = centred @ components[:2].T
    return np.pad(points, ((0, 0), (0, 2 - points.shape[1])))  # one or two records have fewer components


MAP_POINTS = 4000  # a page stays light: every chosen record (up to this) and a seeded sample of the rest


def write_map(points: np.ndarray, chosen: np.ndarray, path: str | Path, title: str) -> Path:
    """The projection as JSON: ``positions`` (input order), ``points`` [x, y, chosen 0/1]."""
    is_chosen = np.zeros(len(points), dtype=bool)
    is_chosen[chosen] = True
    picked = np.flatnonzero(is_chosen)[:MAP_POINTS]
    rest = np.flatnonzero(~is_chosen)
    room = MAP_POINTS - len(picked)
    if len(rest) > room:
        rest = np.sort(np.random.default_rng(0).choice(rest, size=room, replace=False))
    shown = np.sort(np.concatenate([picked, rest]))
    rows = [[round(float(points[i, 0]), 5), round(float(points[i, 1]), 5), int(is_chosen[i])] for i in shown]
    write_text(path, json.dumps({"title": title, "records": len(points), "positions": shown.tolist(), "points": rows}))
    return Path(path)


def draw(points: np.ndarray, chosen: np.ndarray, path: str | Path, title: str) -> Path:
    """A PNG of the records in 2-D (``project``), chosen ones marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
