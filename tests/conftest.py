"""Shared test helpers. The real fixtures ship with the repository in tests/fixtures/ (SOURCES.md there)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
FORMATS_DIR = FIXTURES / "formats"

if not FORMATS_DIR.is_dir():  # fail loudly: a skipped fixture test would prove nothing
    raise RuntimeError(f"test fixtures not found at {FORMATS_DIR}; they ship with the repository in tests/fixtures/")


def fixture_path(relative: str) -> Path:
    """A format fixture under tests/fixtures/formats/ (e.g. "axolotl/conversation.json")."""
    return _shipped(FORMATS_DIR / relative)


def bench_path(relative: str) -> Path:
    """A benchmark-data fixture under tests/fixtures/bench/ (e.g. "gsm8k/train.jsonl")."""
    return _shipped(FIXTURES / "bench" / relative)


def _shipped(path: Path) -> Path:
    if not path.exists():  # an error, never a skip
        raise FileNotFoundError(f"test fixture not found: {path} (see tests/fixtures/SOURCES.md)")
    return path


def load_rows(path: Path) -> list[dict]:
    """The raw rows of a JSON / JSONL fixture, read with the standard library (not datakit)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    value = json.loads(text)
    return value if isinstance(value, list) else [value]


def load_arrow_rows(path: Path) -> list[dict]:
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all().to_pylist()


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def pairs(tmp_path: Path) -> Path:
    """Five short Alpaca pairs (LLaMA-Factory's demo set), for synth against a real server."""
    rows = [
        r for r in json.loads(fixture_path("llama-factory/alpaca_en_demo.json").read_text()) if len(r["output"]) < 300
    ]
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(rows[:5]))
    return path


# The two-node Ray cluster fixture (tests marked ray; opt in). Defined once here: a session
# fixture imported into two test modules would be two fixtures, and start two clusters.
from ray_cluster import ray_cluster  # noqa: E402, F401
