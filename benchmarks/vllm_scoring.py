"""vLLM's prompt scoring (what lm-eval's loglikelihood tasks and heldout_loss send) by dtype and
concurrency, on the embedded SmolLM2-135M: requests/s for /v1/completions with ``echo`` and
``logprobs: 1`` (about 100-token prompts), one at a time, 4 and 16 at once, and 16 prompts per
request; and plain one-token completions for comparison. This chose ``datakit.vllm.default_dtype``.

    python benchmarks/vllm_scoring.py [--dtypes float32,bfloat16] [--prompts 64]
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _measure import cpu_name

from datakit.models import resolve_llm
from datakit.vllm import VllmServer, post_json


def measure(dtype: str, prompts: list[str]) -> None:
    """Print requests/s of each way of sending ``prompts`` to a vLLM server in ``dtype``."""
    with VllmServer(resolve_llm("smollm2-135m"), "base", dtype=dtype, log=lambda _: None) as server:
        url = server.url + "/completions"

        def scored(prompt: str | list[str]) -> dict:
            body = {"model": "base", "prompt": prompt, "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0}
            return post_json(url, body)

        def completed(prompt: str) -> dict:
            return post_json(url, {"model": "base", "prompt": prompt, "max_tokens": 1, "temperature": 0})

        def rate(label: str, work: Callable[[], object]) -> None:
            started = time.perf_counter()
            work()
            print(f"  {dtype:9} {label:34} {len(prompts) / (time.perf_counter() - started):6.2f}", flush=True)

        scored(prompts[:2])  # the first request compiles
        rate("echo+logprobs, one at a time", lambda: [scored(p) for p in prompts])
        with ThreadPoolExecutor(4) as four:
            rate("echo+logprobs, 4 at once", lambda: list(four.map(scored, prompts)))
        with ThreadPoolExecutor(16) as sixteen:
            rate("echo+logprobs, 16 at once", lambda: list(sixteen.map(scored, prompts)))
        rate(
            "echo+logprobs, 16 prompts a request",
            lambda: [scored(prompts[i : i + 16]) for i in range(0, len(prompts), 16)],
        )
        rate("1-token completion, one at a time", lambda: [completed(p) for p in prompts])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--prompts", type=int, default=64)
    args = parser.parse_args()
    words = (Path(__file__).resolve().parents[1] / "README.md").read_text().split()
    rng = random.Random(0)
    prompts = [" ".join(rng.choice(words) for _ in range(60)) for _ in range(args.prompts)]
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; {args.prompts} prompts of 60 words; requests/s")
    for dtype in args.dtypes.split(","):
        measure(dtype, prompts)


if __name__ == "__main__":
    main()
