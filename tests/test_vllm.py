"""synth against a real vLLM server (``pytest -m vllm``; its own CI step, as the engine is slow to start).

The server is started the way a user starts it, ``datakit serve --engine vllm`` (which finds or
creates vLLM's own environment), and stopped with Ctrl-C at the end, which must end vLLM's
processes too. The checks are test_synth.py's, against a server that batches concurrent
requests and constrains decoding for real. Faults a healthy vLLM never produces (429, 500,
hangs, broken bodies) come from a small proxy in front of it, the one stand-in here; the proxy
also logs each prompt it forwards, so a resumed run can be shown to send nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import ROOT
from test_synth import check_every_method

import datakit
from datakit.vllm import free_port

pytestmark = pytest.mark.vllm

MODEL = "smollm2-135m"


def _listening(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/models", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def _vllm_processes(port: int) -> list[int]:
    """Pids of processes still running vLLM's server on ``port``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"vllm.entrypoints.openai.api_server" in command and str(port).encode() in command:
                out.append(int(entry.name))
    return out


@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory):
    """``datakit serve --engine vllm`` in its own process; Ctrl-C at the end must stop it and vLLM."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "datakit.cli", "serve", "--engine", "vllm", "--port",
                                    str(port)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 1200  # the first run creates vLLM's environment (a few minutes)
    while not _listening(url):
        assert process.poll() is None, f"datakit serve --engine vllm exited: {log.read_text()[-2000:]}"
        assert time.time() < deadline, "vLLM did not start"
        time.sleep(2)
    yield url
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C, as a terminal sends it to the foreground group
    assert process.wait(timeout=120) == 130, log.read_text()[-2000:]
    deadline = time.time() + 30
    while _vllm_processes(port) and time.time() < deadline:
        time.sleep(0.5)
    assert not _vllm_processes(port), "vLLM's server outlived datakit serve"


class FaultProxy(ThreadingHTTPServer):
    """Forwards chat requests to ``upstream``, after answering the first ones with ``faults``."""

    daemon_threads = True

    def __init__(self, upstream: str, faults: list[str], log: Path) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream, self.faults, self.log, self.lock = upstream, list(faults), log, threading.Lock()
        log.write_text("")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self) -> FaultProxy:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


class _ProxyHandler(BaseHTTPRequestHandler):
    server: FaultProxy

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:
            fault = self.server.faults.pop(0) if self.server.faults else None
        if fault in ("429", "500"):
            return self._send(int(fault), json.dumps({"error": {"message": f"injected {fault}"}}).encode())
        if fault == "hang":
            time.sleep(8)
            return self._send(504, b"{}")
        request = urllib.request.Request(self.server.upstream + self.path.removeprefix("/v1"), body,
                                         {"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                status, answer = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, answer = exc.code, exc.read()
        if status == 200:
            messages = json.loads(body)["messages"]
            digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
            with self.server.lock, open(self.server.log, "a") as f:
                f.write(json.dumps({"prompt_sha256": digest}) + "\n")
        if fault == "truncated":
            answer = answer[: len(answer) // 2]
        elif fault == "badjson":
            answer = b"<html>upstream error</html>"
        self._send(status, answer)


def synth(method: str, source: Path, out: Path, url: str, tmp_path: Path, cache: str = "cache.sqlite", **options):
    options = {"concurrency": 4, "timeout": 120, "backoff": 0.05, **options}
    return datakit.run("synth", source, out, method=method, base_url=url, model=MODEL,
                       cache=str(tmp_path / cache), **options).report  # fmt: skip


def usage(report) -> dict[str, int]:
    return {key.removeprefix("requests "): n for key, n in report.figures.items() if key.startswith("requests ")}


def test_judge_with_a_json_schema_gives_a_score_for_every_pair(vllm_url, pairs, tmp_path) -> None:
    out = tmp_path / "judged.jsonl"
    report = synth("judge", pairs, out, vllm_url, tmp_path, max_tokens=60, threshold=0, json_mode=True)
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    # vLLM follows the schema: every answer is JSON with a score on the scale, none unreadable
    assert report.figures["structured output"] == "json_schema" and not report.notes
    assert report.figures["parse failures"] == 0 and len(kept) == report.read == 5
    for record in kept:  # JSON with the score first (its reason may be cut off by max_tokens)
        raw = record["meta"]["judge"]["raw"]
        score = re.match(r'\s*\{\s*"score"\s*:\s*([0-9.]+)', raw)
        assert score and float(score.group(1)) == record["meta"]["score"] and 0 <= record["meta"]["score"] <= 5, raw
    u = usage(report)
    assert u["answered"] == 5 and u["failed"] == 0 and u["prompt_tokens"] > 0 and u["completion_tokens"] > 0
    again = synth("judge", pairs, tmp_path / "again.jsonl", vllm_url, tmp_path, max_tokens=60, threshold=0,
                  json_mode=True)  # fmt: skip
    assert usage(again)["answered"] == 0 and usage(again)["cached"] == 5  # nothing is paid twice
    assert (tmp_path / "again.jsonl").read_text() == out.read_text()


def test_every_method_gives_valid_records_and_explains_every_drop(vllm_url, pairs, tmp_path) -> None:
    check_every_method(lambda method, out, **o: synth(method, pairs, tmp_path / out, vllm_url, tmp_path, **o), 5)


def test_retries_through_faults_and_no_retry_on_a_request_vllm_rejects(vllm_url, pairs, tmp_path) -> None:
    with FaultProxy(vllm_url, ["429", "500", "hang", "truncated", "badjson"], tmp_path / "log.jsonl") as proxy:
        report = synth("judge", pairs, tmp_path / "out.jsonl", proxy.url, tmp_path, timeout=4, concurrency=1,
                       max_retries=6, max_tokens=8, threshold=0)  # fmt: skip
    u = usage(report)
    assert u["retries"] == 5 and u["failed"] == 0 and u["answered"] == 5
    # a real rejection from vLLM: a model it does not serve is the request's fault, not retried
    report = datakit.run("synth", pairs, tmp_path / "out2.jsonl", method="judge", base_url=vllm_url,
                         model="no-such-model", cache=str(tmp_path / "other.sqlite"), max_tokens=8, threshold=0,
                         backoff=0.05).report  # fmt: skip
    reasons = [json.loads(line)["reason"] for line in Path(report.side_outputs["rejects"]).read_text().splitlines()]
    assert usage(report)["failed"] == 5 and usage(report)["retries"] == 0
    assert all(r.startswith("judge request failed: HTTP 404") for r in reasons), reasons[:1]


def test_budget_stops_and_a_rerun_finishes_from_the_cache(vllm_url, pairs, tmp_path) -> None:
    out = tmp_path / "out.jsonl"
    first = synth("judge", pairs, out, vllm_url, tmp_path, budget_tokens=700, concurrency=1, max_tokens=8, threshold=0)
    assert first.stopped and "token budget" in first.stopped and first.figures["left undone"] > 0
    second = synth("judge", pairs, out, vllm_url, tmp_path, concurrency=1, max_tokens=8, threshold=0)
    assert second.stopped is None and second.figures["left undone"] == 0
    assert usage(second)["cached"] == usage(first)["answered"]


def test_resume_after_sigkill_sends_nothing_twice(vllm_url, pairs, tmp_path) -> None:
    def run(out: str, cache: str, url: str) -> subprocess.Popen:
        args = ["synth", "backtranslate", str(pairs), str(tmp_path / out), "--base-url", url, "--model", MODEL,
                "--max-tokens", "24", "--concurrency", "1", "--seed", "3", "--quiet", "--cache", str(tmp_path / cache)]  # fmt: skip
        return subprocess.Popen([sys.executable, "-m", "datakit.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)  # fmt: skip

    reference = run("reference.jsonl", "reference.sqlite", vllm_url)
    assert reference.wait(timeout=600) == 0, reference.stderr.read()
    with FaultProxy(vllm_url, [], tmp_path / "sent.jsonl") as proxy:
        killed = run("out.jsonl", "resume.sqlite", proxy.url)
        deadline = time.time() + 300
        while len(proxy.log.read_text().splitlines()) < 4 and time.time() < deadline and killed.poll() is None:
            time.sleep(0.05)
        assert killed.poll() is None, "the run finished before it could be killed"
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        answered_before_kill = len(proxy.log.read_text().splitlines())
        assert not (tmp_path / "out.jsonl").exists()  # nothing half-written
        resumed = run("out.jsonl", "resume.sqlite", proxy.url)
        assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
        sent = Counter(json.loads(line)["prompt_sha256"] for line in proxy.log.read_text().splitlines())
    # only the one request in flight at the kill (concurrency 1) may have been sent twice
    assert answered_before_kill >= 4 and sum(n - 1 for n in sent.values()) <= 1
    assert (tmp_path / "out.jsonl").read_text() == (tmp_path / "reference.jsonl").read_text()
