"""synth throughput against a real server, and datakit's own overhead per request.

Starts a server for the embedded SmolLM2-135M-Instruct: ``datakit serve``'s own (``--engine
transformers``, one request at a time, in this process) or vLLM's (``--engine vllm``, which
batches concurrent requests); or use ``--base-url`` for any other OpenAI-compatible server. Then:

1. sends the same judge-style requests through datakit's Client at each concurrency (a fresh
   cache each time), and straight through the ``openai`` client with a thread pool of the same
   size, the anchor, side by side: requests/s and completion tokens/s;
2. replays them from the cache and times datakit's overhead per request (hashing the
   request, reading SQLite, parsing the score), and times storing an answer.
Target: datakit's overhead under 2 ms per request.

    python benchmarks/synth_throughput.py [--engine vllm] [--concurrency 1,8,32] [--requests 64]
        [--max-tokens 128] [--base-url URL --model NAME]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _measure import cpu_name

from datakit.synth.client import Answer, Cache, Client, ClientSettings, Request
from datakit.synth.parse import parse_score

FIXTURE = Path(__file__).resolve().parents[1] / "tests/fixtures/formats/llama-factory/alpaca_en_demo.json"


def requests_for(n: int, max_tokens: int) -> list[Request]:
    rows = json.loads(FIXTURE.read_text())[:n]
    return [
        Request(
            "bench",
            (("user", f"Rate this answer from 0 to 5.\nQ: {r['instruction']}\nA: {r['output'][:400]}"),),
            max_tokens=max_tokens,
            temperature=0.0,
            seed=i,
        )  # fmt: skip
        for i, r in enumerate(rows)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--base-url", default=None)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--engine", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument("--concurrency", default="1,2,4", help="comma-separated (vllm: try 1,8,32)")
    args = parser.parse_args()
    server = vllm = None
    base_url = args.base_url
    if base_url is None and args.engine == "vllm":
        from datakit.models import resolve_llm
        from datakit.vllm import VllmServer

        # no prefix caching: the anchor sends the same prompts again and must not find them cached
        vllm = VllmServer(resolve_llm(args.model), args.model, extra_args=["--no-enable-prefix-caching"]).start()
        base_url = vllm.url
    elif base_url is None:
        from datakit.serve import ChatModel, start

        server, _ = start(ChatModel(args.model))
        base_url = server.url
    requests = requests_for(args.requests, args.max_tokens)
    work = Path(tempfile.mkdtemp(prefix="synth-bench-"))
    print(f"CPU: {cpu_name()}; {len(requests)} requests, max_tokens {args.max_tokens}, {args.engine} server {base_url}")

    from openai import OpenAI

    api = OpenAI(base_url=base_url, api_key="not-needed", max_retries=0)

    def plain(request: Request) -> int:
        response = api.chat.completions.create(
            model=args.model, messages=[{"role": r, "content": c} for r, c in request.messages],
            max_tokens=request.max_tokens, temperature=request.temperature, seed=request.seed)  # fmt: skip
        return response.usage.completion_tokens

    print("| concurrency | datakit requests/s | tokens/s | openai client alone requests/s | tokens/s | ratio |")
    print("|---|---|---|---|---|---|")
    for concurrency in (int(c) for c in args.concurrency.split(",")):
        client = Client(
            ClientSettings(base_url, args.model, concurrency=concurrency, cache=work / f"c{concurrency}.sqlite")
        )
        started = time.perf_counter()
        answers = client.ask(requests)
        seconds = time.perf_counter() - started
        tokens = sum(a.completion_tokens for a in answers)
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            plain_tokens = sum(pool.map(plain, requests))
        plain_seconds = time.perf_counter() - started
        print(f"| {concurrency} | {len(requests) / seconds:.2f} | {tokens / seconds:.1f} | "
              f"{len(requests) / plain_seconds:.2f} | {plain_tokens / plain_seconds:.1f} | {plain_seconds / seconds:.2f} |",
              flush=True)  # fmt: skip

    client = Client(ClientSettings(base_url, args.model, cache=work / "c1.sqlite"))
    rounds = 20
    started = time.perf_counter()
    for _ in range(rounds):
        for answer in client.ask(requests):
            parse_score(answer.text, 0, 5)
    replay_ms = (time.perf_counter() - started) / (rounds * len(requests)) * 1000
    cache = Cache(work / "store.sqlite")
    started = time.perf_counter()
    for i, request in enumerate(requests * 5):
        cache.put(f"{request.key(args.model)}-{i}", request, Answer("Score: 4", 100, 10))
    store_ms = (time.perf_counter() - started) / (5 * len(requests)) * 1000
    print(f"datakit overhead per request: cached replay with parsing {replay_ms:.3f} ms; storing an answer {store_ms:.3f} ms "
          f"(target: under 2 ms)")  # fmt: skip
    if server is not None:
        server.shutdown()
    if vllm is not None:
        vllm.stop()


if __name__ == "__main__":
    main()
