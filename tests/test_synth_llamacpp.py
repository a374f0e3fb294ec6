"""Opt-in (``pytest -m llamacpp``): the synth checks against llama.cpp's own server.

Needs ``pip install 'llama-cpp-python[server]'`` (it compiles llama.cpp from source, about
14 minutes on 2 cores), so it is not part of CI. The server runs the same GGUF file as the
embedded model: ``python -m llama_cpp.server --model GGUF --host 127.0.0.1 --port PORT``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import fixture_path

import datakit

pytestmark = pytest.mark.llamacpp


@pytest.fixture(scope="module")
def llama_server():
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        pytest.fail("pytest -m llamacpp needs llama-cpp-python: pip install 'llama-cpp-python[server]'")
    from datakit.models import gguf_path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path()),
                                "--host", "127.0.0.1", "--port", str(port)])  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=30)


def test_judge_and_resume_against_llama_cpp(llama_server: str, tmp_path: Path) -> None:
    rows = json.loads(fixture_path("llama-factory/alpaca_en_demo.json").read_text())[:5]
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps(rows))
    options = {"method": "judge", "base_url": llama_server, "model": "smollm2", "cache": str(tmp_path / "cache.sqlite"),
               "max_tokens": 16, "threshold": 0}  # fmt: skip
    first = datakit.run("synth", pairs, tmp_path / "out.jsonl", **options).report
    kept = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    dropped = Path(first.side_outputs["rejects"]).read_text().splitlines()
    assert first.read == len(kept) + len(dropped) and first.figures["requests failed"] == 0
    assert first.figures["requests prompt_tokens"] > 0 and first.figures["requests completion_tokens"] > 0
    second = datakit.run("synth", pairs, tmp_path / "again.jsonl", **options).report
    assert second.figures["requests answered"] == 0 and second.figures["requests cached"] == 5
    assert (tmp_path / "again.jsonl").read_text() == (tmp_path / "out.jsonl").read_text()
