"""Requests to any OpenAI-compatible server, cached so that nothing is ever paid for twice.

Every request is keyed by a hash of (method, model, messages, parameters). Answers are
stored in SQLite as soon as they arrive (one transaction each), so a run killed at any
moment, even by SIGKILL, loses at most the requests in flight; the next run reads the rest
from the cache and sends only what is missing. Each sample is its own request with its own
seed (servers ignore ``n``). Retries with exponential backoff on 429, 5xx, timeouts,
dropped connections and unreadable bodies; no retry on other 4xx (the request itself is
wrong). Token usage is summed from the responses; ``budget_tokens`` and ``max_requests``
are hard stops. The API key is read from an environment variable and never logged.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Request:
    method: str
    messages: tuple[tuple[str, str], ...]  # (role, content)
    max_tokens: int = 256
    temperature: float = 0.7
    seed: int = 0
    json_mode: bool = False  # ask for JSON: matching ``schema`` where given, else any JSON object
    schema: str | None = None  # a JSON schema (as JSON text, so the request stays hashable)

    def key(self, model: str) -> str:
        payload = [self.method, model, self.messages, self.max_tokens, self.temperature, self.seed, self.json_mode]
        if self.schema is not None:  # appended only when set: earlier caches keep their keys
            payload.append(self.schema)
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


# Structured output, strictest first. Servers differ: vLLM follows a json_schema, llama.cpp's
# server answers it with HTTP 500 but takes json_object, datakit serve takes neither (400). A
# refusal moves the whole client one level down, once, and the same request is sent again.
RESPONSE_FORMATS = ("json_schema", "json_object", "text")
REFUSED = (400, 422, 500, 501)  # how servers say they cannot do a response_format...
ABOUT_FORMAT = ("response_format", "json_schema", "json_object", "schema", "grammar", "structured")  # ...and why


@dataclass
class Answer:
    text: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    from_cache: bool = False
    error: str | None = None  # why there is no text (after retries)
    finish_reason: str | None = None


@dataclass
class Usage:
    sent: int = 0  # requests that reached the server in this run (retries included)
    answered: int = 0  # new answers stored in this run
    cached: int = 0  # answers read from the cache
    failed: int = 0
    retries: int = 0
    prompt_tokens: int = 0  # over every answer used, cached or new
    completion_tokens: int = 0
    new_tokens: int = 0  # tokens of the answers paid for in this run
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Cache:
    """Answers by request key, in SQLite (WAL, committed per answer)."""

    def __init__(self, path: str | Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS answer (key TEXT PRIMARY KEY, request TEXT, text TEXT, "
            "prompt_tokens INTEGER, completion_tokens INTEGER, finish_reason TEXT)"
        )
        self.lock = threading.Lock()

    def get(self, key: str) -> Answer | None:
        with self.lock:
            row = self.db.execute(
                "SELECT text, prompt_tokens, completion_tokens, finish_reason FROM answer WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        return Answer(row[0], row[1], row[2], from_cache=True, finish_reason=row[3])

    def put(self, key: str, request: Request, answer: Answer) -> None:
        with self.lock:
            self.db.execute(
                "INSERT OR REPLACE INTO answer VALUES (?, ?, ?, ?, ?, ?)",
                (key, json.dumps(request.messages), answer.text, answer.prompt_tokens, answer.completion_tokens,
                 answer.finish_reason),
            )  # fmt: skip


@dataclass
class ClientSettings:
    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 2
    timeout: float = 60.0
    max_retries: int = 4
    backoff: float = 0.5  # seconds, doubled each retry
    max_requests: int | None = None
    budget_tokens: int | None = None
    price_per_million: float | None = None  # for the cost estimate
    cache: str | Path | None = None


class Client:
    """Sends requests through the ``openai`` client, with the cache, retries, limits and progress."""

    def __init__(self, settings: ClientSettings, progress: bool = False):
        from openai import OpenAI

        self.settings = settings
        key = os.environ.get(settings.api_key_env) or "not-needed"  # local servers take any key
        self.api = OpenAI(base_url=settings.base_url, api_key=key, timeout=settings.timeout, max_retries=0)
        self.cache = Cache(settings.cache) if settings.cache else None
        self.usage = Usage()
        self.progress = progress
        self._lock = threading.Lock()
        self._started = time.perf_counter()
        self.stopped: str | None = None  # why sending stopped early (a budget or request limit)
        self.response_format = 0  # index into RESPONSE_FORMATS: how far refusals have moved us down
        self.format_notes: list[str] = []  # each refusal, for the report

    def cost(self) -> float | None:
        price = self.settings.price_per_million
        return None if price is None else self.usage.new_tokens * price / 1e6

    def ask(self, requests: Sequence[Request], on_answer: Callable[[int, Answer], None] | None = None) -> list[Answer]:
        """Answers in the order of ``requests``. Once a limit is hit nothing more is sent: the
        unsent requests get an Answer with ``error`` "not sent: ...", and ``stopped`` says why."""
        answers: list[Answer | None] = [None] * len(requests)
        todo = []
        for i, request in enumerate(requests):
            cached = self.cache.get(request.key(self.settings.model)) if self.cache else None
            if cached is not None:
                answers[i] = cached
                self._account(cached)
            else:
                todo.append(i)
        stop = threading.Event()
        with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            futures = {pool.submit(self._send, requests[i], stop): i for i in todo}
            for future in as_completed(futures):
                i = futures[future]
                answers[i] = future.result()
                if on_answer:
                    on_answer(i, answers[i])
                self._show()
        if self.progress:
            print(file=sys.stderr)
        if stop.is_set():
            self.stopped = self._limit_reason()
        return answers  # type: ignore[return-value]

    def _limit_reason(self) -> str:
        s, u = self.settings, self.usage
        if s.budget_tokens is not None and u.total_tokens >= s.budget_tokens:
            return f"token budget reached: {u.total_tokens} of {s.budget_tokens}"
        return f"request limit reached: {u.sent} of {s.max_requests}"

    def _over_limit(self) -> bool:
        s, u = self.settings, self.usage
        return (s.budget_tokens is not None and u.total_tokens >= s.budget_tokens) or (
            s.max_requests is not None and u.sent >= s.max_requests
        )

    def _format(self, request: Request) -> tuple[int, dict[str, Any]]:
        """(level, the response_format arguments) for a request: none unless it asks for JSON."""
        if not request.json_mode:
            return len(RESPONSE_FORMATS) - 1, {}
        level = max(self.response_format, 0 if request.schema else 1)
        kind = RESPONSE_FORMATS[level]
        if kind == "json_schema":
            schema = {"name": request.method, "schema": json.loads(request.schema or "{}"), "strict": True}
            return level, {"response_format": {"type": "json_schema", "json_schema": schema}}
        return level, {"response_format": {"type": "json_object"}} if kind == "json_object" else {}

    def _refused(self, level: int, error: str) -> bool:
        """Whether a request sent at ``level`` can be sent again one level down (and move there)."""
        if level >= len(RESPONSE_FORMATS) - 1:
            return False
        with self._lock:
            if self.response_format <= level:
                self.response_format = level + 1
                self.format_notes.append(f"{RESPONSE_FORMATS[level]} refused ({error[:120]}); "
                                         f"using {RESPONSE_FORMATS[level + 1]}")  # fmt: skip
        return True

    def _send(self, request: Request, stop: threading.Event) -> Answer:
        from openai import APIConnectionError, APIResponseValidationError, APIStatusError, APITimeoutError

        error = "not sent"
        attempt, resent = 0, False  # resent: the same attempt again, asking for a looser format
        while attempt <= self.settings.max_retries:
            with self._lock:
                if stop.is_set() or self._over_limit():
                    stop.set()
                    return Answer(None, error="not sent: " + self._limit_reason())
                self.usage.sent += 1
                self.usage.retries += attempt > 0 and not resent
            resent = False
            level, response_format = self._format(request)
            try:
                response = self.api.chat.completions.create(
                    model=self.settings.model,
                    messages=[{"role": role, "content": content} for role, content in request.messages],
                    max_tokens=request.max_tokens,
                    temperature=request.temperature,
                    seed=request.seed,
                    **response_format,
                )
                choice = response.choices[0]
                usage = response.usage
                answer = Answer(choice.message.content or "", usage.prompt_tokens if usage else 0,
                                usage.completion_tokens if usage else 0, finish_reason=choice.finish_reason)  # fmt: skip
            except APIStatusError as exc:
                error = f"HTTP {exc.status_code}: {_message(exc)}"
                about_format = any(word in error.lower() for word in ABOUT_FORMAT)  # not a transient failure
                if response_format and exc.status_code in REFUSED and about_format and self._refused(level, error):
                    resent = True
                    continue  # the same request at once, asking for less
                if exc.status_code != 429 and exc.status_code < 500:
                    break  # the request itself is wrong: retrying cannot help
            except (APITimeoutError, APIConnectionError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            except (APIResponseValidationError, json.JSONDecodeError, ValueError, AttributeError, IndexError) as exc:
                error = f"unreadable response: {type(exc).__name__}: {str(exc)[:200]}"
            else:
                if self.cache:
                    self.cache.put(request.key(self.settings.model), request, answer)
                with self._lock:
                    self.usage.answered += 1
                    self.usage.new_tokens += answer.prompt_tokens + answer.completion_tokens
                self._account(answer)
                return answer
            time.sleep(self.settings.backoff * 2**attempt)
            attempt += 1
        with self._lock:
            self.usage.failed += 1
            kind = error.split(":")[0]
            self.usage.errors[kind] = self.usage.errors.get(kind, 0) + 1
        return Answer(None, error=error)

    def _account(self, answer: Answer) -> None:
        with self._lock:
            self.usage.prompt_tokens += answer.prompt_tokens
            self.usage.completion_tokens += answer.completion_tokens
            self.usage.cached += answer.from_cache

    def _show(self) -> None:
        if not self.progress:
            return
        u = self.usage
        elapsed = time.perf_counter() - self._started
        cost = self.cost()
        line = f"\r{u.answered} new, {u.cached} cached, {u.failed} failed  {u.sent / elapsed:.2f} req/s  {u.total_tokens:,} tokens"
        if cost is not None:
            line += f"  ${cost:.4f}"
        print(line, end="", file=sys.stderr, flush=True)


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error", {}).get("message") or body)[:200]
    return str(exc)[:200]
