"""Selection on real fixtures with the real embedding model: coverage, diversity, balance, seeds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import fixture_path

import datakit
from datakit.embed import Embedder
from datakit.errors import OptionError, StepError
from datakit.select import SelectConfig, cluster, covering_radius, deita, kcenter, kcenter_plain, random_sample
from datakit.text import record_text

ALPACA = fixture_path("llama-factory/alpaca_en_demo.json")
RADIUS = "covering radius (cosine distance to the nearest chosen record)"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("embedding-cache")


@pytest.fixture(autouse=True)
def offline_cache(cache_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("DATAKIT_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def vectors(cache_dir: Path) -> np.ndarray:
    import os

    os.environ["DATAKIT_CACHE_DIR"] = str(cache_dir)
    texts = [record_text(r) for r in list(datakit.read_records(ALPACA))[:400]]
    return Embedder()(texts)


def test_kcenter_covers_better_than_random(vectors: np.ndarray) -> None:
    for k in (10, 40, 100):
        chosen = kcenter(vectors, k, seed=0)
        assert chosen.radius == pytest.approx(covering_radius(vectors, chosen.chosen), abs=1e-5)
        for seed in range(5):
            assert chosen.radius <= covering_radius(vectors, random_sample(len(vectors), k, seed).chosen)


def test_kcenter_matches_the_textbook_loop(vectors: np.ndarray) -> None:
    fast = kcenter(vectors, 150, seed=3, shortlist=64)  # a short list forces many refreshes
    plain = kcenter_plain(vectors, 150, seed=3)
    assert (fast.chosen == plain.chosen).mean() >= 0.99
    assert fast.radius == pytest.approx(plain.radius, abs=1e-5)


def test_deita_keeps_no_two_records_closer_than_the_threshold(vectors: np.ndarray) -> None:
    scores = np.random.default_rng(0).random(len(vectors))
    chosen = deita(vectors, scores, 120, threshold=0.6).chosen
    sims = vectors[chosen] @ vectors[chosen].T
    np.fill_diagonal(sims, -1)
    assert sims.max() < 0.6
    # score first: every record skipped above the last chosen score was too close to a kept one
    last = scores[chosen].min()
    for index in np.flatnonzero(scores > last):
        if index not in set(chosen.tolist()):
            assert (vectors[chosen] @ vectors[index]).max() >= 0.6


def test_cluster_takes_an_even_share_from_each_cluster(vectors: np.ndarray) -> None:
    result = cluster(vectors, 60, None, n_clusters=6, seed=0)
    per_cluster = np.bincount(result.clusters[result.chosen], minlength=6)
    sizes = np.bincount(result.clusters, minlength=6)
    assert per_cluster.sum() == 60
    # round robin: a cluster has at most one more than any other, unless the other ran out
    most = per_cluster.max()
    assert all(p >= min(size, most - 1) for p, size in zip(per_cluster, sizes, strict=True))


def test_same_seed_same_selection_and_k_too_large(tmp: Path) -> None:
    rows = json.loads(ALPACA.read_text())[:120]
    path = tmp / "in.json"
    path.write_text(json.dumps(rows))
    outputs = []
    for run in range(2):
        out = tmp / f"run{run}.jsonl"
        datakit.run("select", path, out, k=30, method="random", seed=5)
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1]
    datakit.run("select", path, tmp / "other.jsonl", k=30, method="random", seed=6)
    assert (tmp / "other.jsonl").read_text() != outputs[0]
    with pytest.raises(StepError, match="k: 500 is more than the 120 records"):
        datakit.run("select", path, tmp / "too.jsonl", k=500)
    assert not (tmp / "too.jsonl").exists()
    with pytest.raises(OptionError, match="score: deita ranks by a score"):
        SelectConfig(k=10, method="deita")


def test_select_writes_why_and_a_plot(tmp: Path) -> None:
    rows = json.loads(ALPACA.read_text())[:150]
    path = tmp / "in.json"
    path.write_text(json.dumps(rows))
    summary = datakit.run("select", path, tmp / "half.jsonl", k=0.5, side_paths={"plot": tmp / "half.png"}).report
    chosen = [json.loads(line) for line in (tmp / "half.jsonl").read_text().splitlines()]
    assert summary.written == len(chosen) == 75 and summary.removed == {"not selected": 75}
    assert sorted(c["meta"]["select"]["rank"] for c in chosen) == list(range(75))
    assert all(c["meta"]["select"]["nearest"] and -1 <= c["meta"]["select"]["nearest_similarity"] <= 1 for c in chosen)
    assert [c["meta"]["source"]["index"] for c in chosen] == sorted(c["meta"]["source"]["index"] for c in chosen)
    assert (tmp / "half.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 0 < summary.figures[RADIUS] < 1 and "covering radius" in summary.text()
    assert summary.side_outputs["plot"] == str(tmp / "half.png")
