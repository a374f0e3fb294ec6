"""Shared test helpers. The real fixtures live in ../shared beside the project root."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FORMATS_DIR = SHARED / "fixtures" / "formats"

if not FORMATS_DIR.is_dir():  # fail loudly: a skipped fixture test would prove nothing
    raise RuntimeError(f"test fixtures not found at {FORMATS_DIR}; the tests read ../shared beside the project root")


def fixture_path(relative: str) -> Path:
    return FORMATS_DIR / relative


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
