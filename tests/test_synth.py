"""synth against a real OpenAI-compatible server on loopback serving the embedded SmolLM2-135M.

The real ``openai`` client talks to a real model. Faults (429, 500, hangs, broken bodies)
are produced by the same server on purpose. Checks are invariants a 135M model can meet:
valid records, provenance, a reason for every drop, token totals, and resume after SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import ROOT

import datakit
from datakit.synth.parse import RougePool, parse_score, parse_tasks


@pytest.fixture(scope="module")
def chat_model():
    from datakit.serve import ChatModel

    return ChatModel("smollm2-135m")


@pytest.fixture
def server(chat_model, tmp_path):
    from datakit.serve import start

    server, _ = start(chat_model, log=tmp_path / "requests.jsonl")
    yield server
    server.shutdown()


def synth(method: str, source: Path, out: Path, server, tmp_path: Path, cache: str = "cache.sqlite", **options):
    """The synth step against the test server; its report."""
    options = {"concurrency": 2, "timeout": 20, "backoff": 0.05, **options}
    return datakit.run("synth", source, out, method=method, base_url=server.url, model="smollm2-135m",
                       cache=str(tmp_path / cache), **options).report  # fmt: skip


def usage(report) -> dict[str, int]:
    return {key.removeprefix("requests "): n for key, n in report.figures.items() if key.startswith("requests ")}


def cached_usage(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM answer").fetchone()[0]


def test_judge_scores_with_reasons_provenance_and_token_totals(server, pairs, tmp_path) -> None:
    out = tmp_path / "judged.jsonl"
    summary = synth("judge", pairs, out, server, tmp_path, max_tokens=12, threshold=0)
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    dropped = [json.loads(line) for line in Path(summary.side_outputs["rejects"]).read_text().splitlines()]
    assert summary.read == 5 == len(kept) + len(dropped) == summary.figures["generated"]
    for record in kept:
        assert 0 <= record["meta"]["score"] <= 5
        assert record["meta"]["judge"]["method"] == "judge" and record["meta"]["judge"]["model"] == "smollm2-135m"
    assert all(d["reason"] for d in dropped)
    assert summary.figures["parse failures"] == sum(d["reason"].startswith("unreadable judge answer") for d in dropped)
    # token totals are the sum of what the server reported, answer by answer
    u = usage(summary)
    assert u["prompt_tokens"] + u["completion_tokens"] == cached_usage(tmp_path / "cache.sqlite") > 0
    assert u["answered"] == 5 and u["failed"] == 0
    again = synth("judge", pairs, tmp_path / "again.jsonl", server, tmp_path, max_tokens=12, threshold=0)
    assert usage(again)["answered"] == 0 and usage(again)["cached"] == 5  # nothing is paid twice
    assert (tmp_path / "again.jsonl").read_text() == out.read_text()


def check_every_method(run_synth, sources: int) -> None:
    """Each generating method gives valid records with provenance and a reason for every drop.
    ``run_synth(method, out, **options)`` runs it against a server and returns its report."""
    from datakit.record import validate

    for method in ("backtranslate", "evol", "self-instruct"):
        out = run_synth(method, method + ".jsonl", max_tokens=40, rounds=1, count=3, threshold=1)
        kept = [json.loads(line) for line in Path(out.output).read_text().splitlines()]
        dropped = [json.loads(line) for line in Path(out.side_outputs["rejects"]).read_text().splitlines()]
        assert out.figures["generated"] >= out.written == len(kept), method
        assert sum(out.removed.values()) == len(dropped) and all(d["reason"] for d in dropped), method
        assert out.consumed == out.read == sources, method  # the sources are used, not passed on
        for record in kept:
            validate(record)
            assert record["meta"]["synth"]["method"] == method and record["meta"]["synth"]["model"] == "smollm2-135m"
        if method == "backtranslate":
            assert all(r["meta"]["synth"]["parent"] for r in kept)


def test_every_method_gives_valid_records_and_explains_every_drop(server, pairs, tmp_path) -> None:
    check_every_method(lambda method, out, **o: synth(method, pairs, tmp_path / out, server, tmp_path, **o), 5)


def test_retries_through_faults_and_no_retry_on_a_bad_request(chat_model, pairs, tmp_path) -> None:
    from datakit.serve import start

    server, _ = start(chat_model, faults=["429", "500", "hang", "truncated", "badjson"], hang_seconds=8)
    try:
        summary = synth("judge", pairs, tmp_path / "out.jsonl", server, tmp_path, timeout=4, concurrency=1,
                        max_retries=6, max_tokens=8, threshold=0)  # fmt: skip
        u = usage(summary)
        assert u["retries"] == 5 and u["failed"] == 0 and u["answered"] == 5
    finally:
        server.shutdown()
    server, _ = start(chat_model, faults=["400"])
    try:
        summary = synth("judge", pairs, tmp_path / "out2.jsonl", server, tmp_path, cache="other.sqlite",
                        concurrency=1, max_tokens=8, threshold=0)  # fmt: skip
        assert usage(summary)["failed"] == 1 and usage(summary)["retries"] == 0
        reasons = [
            json.loads(line)["reason"] for line in Path(summary.side_outputs["rejects"]).read_text().splitlines()
        ]
        assert any(r.startswith("judge request failed: HTTP 400") for r in reasons)
    finally:
        server.shutdown()


def test_structured_output_falls_back_when_the_server_refuses_it(server, pairs, tmp_path) -> None:
    # datakit serve cannot constrain decoding and says so (HTTP 400), as llama.cpp's server does
    # for json_schema: the client steps down to json_object, then to plain text, once each
    report = synth("judge", pairs, tmp_path / "out.jsonl", server, tmp_path, json_mode=True, max_tokens=12,
                   threshold=0, concurrency=1)  # fmt: skip
    assert report.figures["structured output"] == "text"
    assert [note.split(" refused")[0] for note in report.notes] == ["json_schema", "json_object"]
    u = usage(report)
    assert u["answered"] == 5 and u["failed"] == 0 and u["retries"] == 0 and u["sent"] == 7
    kept = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert all(0 <= r["meta"]["score"] <= 5 for r in kept) and len(kept) + report.figures["parse failures"] == 5


def test_budget_stops_and_a_rerun_finishes_from_the_cache(server, pairs, tmp_path) -> None:
    out = tmp_path / "out.jsonl"
    first = synth("judge", pairs, out, server, tmp_path, budget_tokens=600, concurrency=1, max_tokens=8, threshold=0)
    assert first.stopped and first.figures["left undone"] > 0 and "token budget" in first.stopped
    assert first.removed["not judged (stopped early)"] == first.figures["left undone"]
    second = synth("judge", pairs, out, server, tmp_path, concurrency=1, max_tokens=8, threshold=0)
    assert second.stopped is None and second.figures["left undone"] == 0
    assert usage(second)["cached"] == usage(first)["answered"]


def run_cli(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "datakit.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)  # fmt: skip


def test_resume_after_sigkill_sends_nothing_twice_and_matches_an_uninterrupted_run(server, pairs, tmp_path) -> None:
    common = ["--base-url", server.url, "--model", "smollm2-135m", "--max-tokens", "24", "--concurrency", "1",
              "--seed", "3", "--quiet"]  # fmt: skip
    reference = run_cli(["synth", "backtranslate", str(pairs), str(tmp_path / "reference.jsonl"), *common,
                         "--cache", str(tmp_path / "reference.sqlite")])  # fmt: skip
    assert reference.wait(timeout=300) == 0, reference.stderr.read()
    log = Path(server.log)
    log.write_text("")  # from here on, count what the interrupted run sends
    killed = run_cli(["synth", "backtranslate", str(pairs), str(tmp_path / "out.jsonl"), *common,
                      "--cache", str(tmp_path / "resume.sqlite")])  # fmt: skip
    deadline = time.time() + 300
    while len(log.read_text().splitlines()) < 4 and time.time() < deadline and killed.poll() is None:
        time.sleep(0.05)
    assert killed.poll() is None, "the run finished before it could be killed"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "out.jsonl").exists()  # nothing half-written
    answered_before_kill = {prompt_hash(messages) for messages in cached_requests(tmp_path / "resume.sqlite")}
    assert answered_before_kill
    resumed = run_cli(["synth", "backtranslate", str(pairs), str(tmp_path / "out.jsonl"), *common,
                       "--cache", str(tmp_path / "resume.sqlite")])  # fmt: skip
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    sent = Counter(r["prompt_sha256"] for r in map(json.loads, log.read_text().splitlines()))
    # an answer that came back before the kill is never asked for again; only the one request
    # in flight at the kill (concurrency 1), whose answer never arrived, may be sent a second time
    assert all(sent[h] == 1 for h in answered_before_kill), "an answered prompt was sent twice"
    assert sum(n - 1 for n in sent.values()) <= 1
    assert (tmp_path / "out.jsonl").read_text() == (tmp_path / "reference.jsonl").read_text()


def cached_requests(path: Path) -> list[list[list[str]]]:
    with sqlite3.connect(path) as db:
        return [json.loads(row[0]) for row in db.execute("SELECT request FROM answer")]


def prompt_hash(messages: list[list[str]]) -> str:
    """The hash the test server logs for a request's messages."""
    import hashlib

    as_sent = [{"role": role, "content": content} for role, content in messages]
    return hashlib.sha256(json.dumps(as_sent, sort_keys=True).encode()).hexdigest()


def test_parsers_and_rouge() -> None:
    assert parse_score("4.5\nbecause", 0, 5) == 4.5
    assert parse_score("I would give it 7.5", 0, 5) is None  # off the scale: a failure, not a 5
    assert parse_score("Reasoning...\nScore: 4", 1, 5) == 4
    assert parse_score("no idea", 0, 5) is None
    assert parse_tasks("Task 9: Write a haiku.\nTask 10: Name a city.") == ["Write a haiku.", "Name a city."]
    pool = RougePool()
    pool.add("Write a short poem about the sea")
    assert pool.best("Write a short poem about the sea") == pytest.approx(1.0)
    assert pool.best("List three prime numbers") < 0.3
