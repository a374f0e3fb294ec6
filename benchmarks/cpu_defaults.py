"""Which training settings are fastest on the CPU in hand: the measurements behind datakit's CPU
defaults and the quick start's size.

The quick start's shape: LoRA (r 8, alpha 16, all linear layers) on the embedded SmolLM2-135M,
the bundled 205-record Alpaca sample, chatml, batch 4, lr 1e-3. Each setting trains in a fresh
process (the first step is a warm-up and not counted) and reports tokens/s, seconds per step and
peak memory; then one held-out scoring pass (the quick start's 40 items) is timed with fp32 and
bf16 weights. The CPU's model name and its bf16/AMX flags are printed first: state them beside
any figure you publish.

    python benchmarks/cpu_defaults.py [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _measure import run_process

from datakit.hardware import cpu_flags

SAMPLE = Path(__file__).resolve().parents[1] / "datakit" / "data" / "alpaca_sample.json"

TRAIN_SIDE = """
import json, sys
from train import TrainConfig, fit
data, out, steps, dtype, ckpt, packing, length, threads = sys.argv[1:9]
fit(TrainConfig(data=[data], out=out, max_steps=int(steps), batch_size=4, max_length=int(length), lr=1e-3,
                template="chatml", threads=int(threads), dtype=dtype, gradient_checkpointing=ckpt == "1",
                packing=packing == "1", save_every=10**6), progress=False)
rows = [json.loads(l) for l in open(out + "/loss.jsonl")][1:]
print(json.dumps({"tokens": sum(r["tokens"] for r in rows), "seconds": sum(r["seconds"] for r in rows),
                  "steps": len(rows)}))
"""

SCORE_SIDE = """
import json, sys, time, torch
import datakit
from datakit.models import resolve_llm
from evals.heldout import score
from evals.recipe import DEFAULT_HELDOUT
dtype, limit = sys.argv[1], int(sys.argv[2])
records = list(datakit.read_records(DEFAULT_HELDOUT))[:limit]
started = time.perf_counter()
items = score(resolve_llm("smollm2-135m"), None, "chatml", records, dtype=getattr(torch, dtype))
print(json.dumps({"seconds": time.perf_counter() - started, "tokens": sum(n for _, _, n in items)}))
"""

# (label, dtype, gradient checkpointing, packing, max_length, threads)
SETTINGS = [
    ("fp32", "fp32", "0", "0", "256", "2"),
    ("bf16 weights", "bf16", "0", "0", "256", "2"),
    ("fp32 + gradient checkpointing", "fp32", "1", "0", "256", "2"),
    ("fp32 + packing", "fp32", "0", "1", "256", "2"),
    ("bf16 + packing", "bf16", "0", "1", "256", "2"),
    ("fp32 + packing, max_length 128", "fp32", "0", "1", "128", "2"),
    ("fp32 + packing, 1 thread", "fp32", "0", "1", "256", "1"),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per setting (the first is not counted)")
    args = parser.parse_args()
    flags = cpu_flags()
    print(f"CPU: {flags['model']}; amx_bf16 {flags['amx_bf16']}, avx512_bf16 {flags['avx512_bf16']}")
    print(f"training: LoRA on SmolLM2-135M, {SAMPLE.name}, batch 4, {args.steps - 1} timed steps per setting")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, *setting) in enumerate(SETTINGS):
            out, peak = run_process(TRAIN_SIDE, str(SAMPLE), f"{tmp}/{i}", str(args.steps), *setting)
            r = json.loads(out.strip().splitlines()[-1])
            print(f"  {label:<34} {r['tokens'] / r['seconds']:7.1f} tokens/s  {r['seconds'] / r['steps']:6.2f} s/step"
                  f"  peak {peak / 1024:.2f} GB")  # fmt: skip
    print("held-out scoring (40 items, one model, load included):")
    for dtype in ("float32", "bfloat16"):
        out, peak = run_process(SCORE_SIDE, dtype, "40")
        r = json.loads(out.strip().splitlines()[-1])
        print(
            f"  {dtype:<34} {r['seconds']:7.1f} s  {r['tokens'] / r['seconds']:7.1f} tokens/s  peak {peak / 1024:.2f} GB"
        )


if __name__ == "__main__":
    main()
