"""A small OpenAI-compatible chat server over a transformers model (``datakit serve``).

It exists so that ``datakit synth`` can be tested, and tried, against a real model on any
machine: the embedded SmolLM2-135M-Instruct by default. It serves ``GET /v1/models`` and
``POST /v1/chat/completions`` (``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``;
``n`` is ignored, as llama.cpp's and vLLM's servers ignore it) and reports ``usage``. It cannot
constrain decoding, so a ``response_format`` other than text is refused (HTTP 400), not ignored.
One generation runs at a time; a seeded request gives the same answer every time.

For tests it can misbehave on purpose: ``faults`` is a list applied to the first requests,
one each: ``429`` and ``500`` (an error status), ``hang`` (sleep past the client's timeout),
``truncated`` (half a JSON body), ``badjson`` (a body that is not JSON), ``400`` (an
invalid request). ``log`` records every request that reached the model (a JSONL line each).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

FAULTS = ("429", "500", "400", "hang", "truncated", "badjson")


class ChatModel:
    """A causal LM with its chat template, generating one request at a time."""

    def __init__(self, model: str = "smollm2-135m", threads: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from datakit.models import resolve_llm

        if threads:
            torch.set_num_threads(threads)
        self.name = model
        path = resolve_llm(model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path).eval()
        self.lock = threading.Lock()

    def generate(self, messages: list[dict[str, Any]], max_tokens: int = 128, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None, stop: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
        import torch

        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)["input_ids"]  # fmt: skip
        sample = temperature > 0
        with self.lock, torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                do_sample=sample,
                temperature=temperature if sample else None,
                top_p=top_p if sample else None,
                top_k=None,
                pad_token_id=self.tokenizer.eos_token_id,
            )
        new = out[0][ids.shape[1] :]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        finish = "stop" if len(new) < max_tokens or new[-1] == self.tokenizer.eos_token_id else "length"
        for marker in stop or []:
            if marker and marker in text:
                text, finish = text[: text.index(marker)], "stop"
        return {"text": text, "prompt_tokens": int(ids.shape[1]), "completion_tokens": int(len(new)),
                "finish_reason": finish}  # fmt: skip


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], model: ChatModel, faults: list[str] | None = None,
                 log: str | Path | None = None, hang_seconds: float = 30.0):  # fmt: skip
        super().__init__(address, _Handler)
        self.chat_model = model
        self.faults = list(faults or [])
        unknown = [f for f in self.faults if f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown fault {', '.join(unknown)}; faults: {', '.join(FAULTS)}")
        self.log = Path(log) if log else None
        self.hang_seconds = hang_seconds
        self.count = 0
        self.count_lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):  # a client that gave up
            super().handle_error(request, client_address)

    def next_fault(self) -> str | None:
        with self.count_lock:
            index = self.count
            self.count += 1
        return self.faults[index] if index < len(self.faults) else None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: ChatServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read the JSONL log instead
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._send(status, json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode())

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            body = {"object": "list", "data": [{"id": self.server.chat_model.name, "object": "model"}]}
            self._send(200, json.dumps(body).encode())
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._error(404, f"no route {self.path}")
        try:
            request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            messages = request["messages"]
        except (ValueError, KeyError) as exc:
            return self._error(400, f"bad request: {exc}")
        response_format = (request.get("response_format") or {}).get("type", "text")
        if response_format != "text":  # refused, as servers without constrained decoding do; never ignored
            return self._error(400, f"response_format {response_format} is not supported by this server")
        fault = self.server.next_fault()
        if fault in ("429", "500", "400"):
            return self._error(int(fault), f"injected fault {fault}")
        if fault == "hang":
            time.sleep(self.server.hang_seconds)
            return self._error(504, "injected hang")
        result = self.server.chat_model.generate(
            messages,
            max_tokens=int(request.get("max_tokens") or 128),
            temperature=float(request.get("temperature") or 0.0),
            top_p=float(request.get("top_p") or 1.0),
            seed=request.get("seed"),
            stop=[request["stop"]] if isinstance(request.get("stop"), str) else request.get("stop"),
        )
        if self.server.log:
            digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
            with self.server.count_lock, open(self.server.log, "a") as f:
                f.write(json.dumps({"prompt_sha256": digest, "seed": request.get("seed"), "fault": fault}) + "\n")
        body = {
            "id": f"chatcmpl-{self.server.count}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.server.chat_model.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result["text"]},
                    "finish_reason": result["finish_reason"],
                }
            ],  # fmt: skip
            "usage": {
                "prompt_tokens": result["prompt_tokens"],
                "completion_tokens": result["completion_tokens"],
                "total_tokens": result["prompt_tokens"] + result["completion_tokens"],
            },
        }
        encoded = json.dumps(body).encode()
        if fault == "truncated":
            encoded = encoded[: len(encoded) // 2]
        elif fault == "badjson":
            encoded = b"<html>upstream error</html>"
        self._send(200, encoded)


def start(
    model: ChatModel, host: str = "127.0.0.1", port: int = 0, **options: Any
) -> tuple[ChatServer, threading.Thread]:
    """Serve in a background thread (port 0 picks a free port); returns the server and its thread."""
    server = ChatServer((host, port), model, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread
