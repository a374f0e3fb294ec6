"""Selection speed: greedy k-center and embedding throughput, each against the plain path, one run.

1. k-center on 50k x 384 unit vectors (a Gaussian mixture of 200 centres, normalised), k = 1000:
   datakit's ``kcenter`` (lazy updates in BLAS3 blocks) against the textbook numpy loop
   (one matrix-vector product per pick). Both must pick the same records.
2. Embedding throughput of the default model (all-MiniLM-L6-v2 from its wheel) on 512 Alpaca
   texts: sentence-transformers' plain ``encode`` (its default batch of 32) against datakit's
   ``Embedder`` (cache off, so the model does the work; on a CPU with bfloat16 it runs through
   OpenVINO), with the cosine of datakit's vectors to the plain path's and how many k-center
   picks change.

    python benchmarks/select_speed.py
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from datakit.select import kcenter, kcenter_plain

FIXTURE = Path(__file__).resolve().parents[1] / "tests/fixtures/formats/llama-factory/alpaca_en_demo.json"


def mixture(n: int = 50_000, dim: int = 384, centres: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centres, dim))
    vectors = (means[rng.integers(0, centres, n)] + rng.normal(scale=0.8, size=(n, dim))).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def best_of(runs: int, fn):
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), result


def kcenter_section() -> None:
    vectors = mixture()
    plain_s, plain = best_of(2, lambda: kcenter_plain(vectors, 1000))
    fast_s, fast = best_of(2, lambda: kcenter(vectors, 1000))
    same = float((fast.chosen == plain.chosen).mean())
    print("k-center, 50,000 x 384, k = 1000 (best of 2)")
    print(f"  numpy loop (one matvec per pick)   {plain_s:6.2f} s   radius {plain.radius:.5f}")
    print(f"  datakit kcenter                    {fast_s:6.2f} s   radius {fast.radius:.5f}")
    print(f"  speed-up {plain_s / fast_s:.1f}x; same picks: {same:.1%} (target: under 3 s)")


def embedding_section() -> None:
    import json

    from sentence_transformers import SentenceTransformer

    from datakit.embed import Embedder, resolve_model
    from datakit.record import message, new_record
    from datakit.text import record_text

    rows = json.loads(FIXTURE.read_text())[:512]
    texts = [
        record_text(
            new_record(
                [message("user", f"{r['instruction']}\n{r['input']}".strip()), message("assistant", r["output"])]
            )
        )
        for r in rows
    ]
    model = SentenceTransformer(resolve_model(None), device="cpu")
    model.encode(texts[:32])  # warm up
    plain_s, reference = best_of(2, lambda: model.encode(texts, normalize_embeddings=True))
    embedder = Embedder(cache=False)
    embedder(texts[:32])  # warm up (converts the model for OpenVINO once)
    ours_s, ours = best_of(2, lambda: embedder(texts))
    cosine = (ours * reference).sum(axis=1)
    print(f"embedding {len(texts)} Alpaca texts with all-MiniLM-L6-v2 on {os.cpu_count()} cores (best of 2)")
    print(f"  sentence-transformers encode (batch 32)  {len(texts) / plain_s:7.1f} texts/s")
    backend = "openvino bf16" if embedder._use_openvino() else "torch"
    print(f"  datakit Embedder ({backend}, batch {embedder.batch_size}) {len(texts) / ours_s:7.1f} texts/s"
          f"   {plain_s / ours_s:.2f}x   cosine min {cosine.min():.6f}")  # fmt: skip
    picks_ref = kcenter(reference, 100).chosen
    picks = kcenter(ours, 100).chosen
    same = len(set(picks_ref.tolist()) & set(picks.tolist())) / 100
    print(f"  k-center (k=100) on these texts: {same:.0%} of the picks are the same with either path's vectors")
    print("  target: 1.5x the plain path")


if __name__ == "__main__":
    kcenter_section()
    embedding_section()
