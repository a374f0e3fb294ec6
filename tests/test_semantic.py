"""Semantic dedupe with the real embedded model (all-MiniLM-L6-v2 from its PyPI wheel), offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import fixture_path

import datakit
from datakit.embed import Embedder


@pytest.fixture
def cache(tmp: Path, monkeypatch) -> Path:
    monkeypatch.setenv("DATAKIT_CACHE_DIR", str(tmp / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp / "cache"


def test_semantic_stage_merges_reworded_copies_and_caches_embeddings(cache: Path, tmp: Path) -> None:
    originals = [r for r in json.loads(fixture_path("llama-factory/alpaca_en_demo.json").read_text())[:40]]
    rows = [{"id": f"o{i}", **r} for i, r in enumerate(originals)]
    # the same request and answer, said with other words around them (MinHash cannot see these)
    for i, r in enumerate(originals[:8]):
        rows.append({"id": f"c{i}", "instruction": f"Please help me with this: {r['instruction']}", "input": r["input"],
                     "output": f"Sure! {r['output']}"})  # fmt: skip
    path = tmp / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    embedder = Embedder()
    summary = datakit.run(
        "dedupe", path, tmp / "out.jsonl", method="semantic", threshold=0.9, resources={"embedder": embedder}
    ).report
    removed = {r["id"]: c["kept"] for line in Path(summary.side_outputs["clusters"]).read_text().splitlines()
               for c in [json.loads(line)] for r in c["removed"]}  # fmt: skip
    assert sum(removed.get(f"c{i}") == f"o{i}" for i in range(8)) >= 7
    assert all(k.startswith("c") for k in removed)
    assert embedder.embedded == len(rows)
    # a second run, a new process's worth of state: everything comes from the disk cache
    again = Embedder()
    datakit.run("dedupe", path, tmp / "out2.jsonl", method="semantic", threshold=0.9, resources={"embedder": again})
    assert again.embedded == 0
    assert (tmp / "out.jsonl").read_text() == (tmp / "out2.jsonl").read_text()


def test_embeddings_are_normalised_and_match_sentence_transformers(cache: Path) -> None:
    from sentence_transformers import SentenceTransformer

    from datakit.embed import resolve_model

    texts = ["A cat sat on the mat.", "Quantum computers use qubits.", "A cat sat on the mat.", "Hi"]
    reference = SentenceTransformer(resolve_model(None), device="cpu").encode(texts, normalize_embeddings=True)
    torch_vectors = Embedder(cache=False, backend="torch")(texts)
    assert torch_vectors.shape == (4, 384)
    assert np.allclose(torch_vectors, reference, atol=1e-5)
    auto = Embedder(cache=False)  # OpenVINO in bfloat16 where the CPU has it, else torch
    vectors = auto(texts)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert (vectors * reference).sum(axis=1).min() > 0.999
    assert auto.cache_tag.endswith("|openvino-bf16") == auto._use_openvino()


def test_blocked_search_equals_brute_force_and_partitions_keep_planted_pairs() -> None:
    from datakit.dedupe import _kmeans_partitions, cosine_pairs

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(30, 48))
    base = centres[rng.integers(0, 30, 3000)] + rng.normal(scale=0.6, size=(3000, 48))
    near = base[:60] + rng.normal(scale=0.03, size=(60, 48))  # 60 planted near copies
    vectors = np.vstack([base, near]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    pairs, sims = cosine_pairs(vectors, 0.97, block=500)
    full = vectors @ vectors.T
    i, j = np.nonzero(np.triu(full >= 0.97, k=1))
    assert sorted(map(tuple, pairs.tolist())) == sorted(zip(i.tolist(), j.tolist(), strict=True))
    assert np.allclose(sims, full[pairs[:, 0], pairs[:, 1]], atol=1e-5)

    planted = {(k, 3000 + k) for k in range(60)}
    found = set()
    for members in _kmeans_partitions(vectors, per_partition=500):
        p, _ = cosine_pairs(vectors[members], 0.97)
        found |= {tuple(sorted(x)) for x in members[p].tolist()}
    assert len(planted & found) >= 57  # a pair split across partitions is the documented miss
