"""Alpaca -> ShareGPT: datakit against the way LLaMA-Factory converts, same input, one run.

LLaMA-Factory loads a file with ``datasets.load_dataset("json")`` and maps a Python
function over it (``AlpacaDatasetConverter``: history pairs, then instruction and input
joined with "\\n"); here its output is written with ``Dataset.to_json``. datakit runs
``datakit convert --to sharegpt``. Each side runs in its own process; peak memory is the
resident memory of that process and its workers together, sampled every 50 ms. Input: at
least 500k records built from the Alpaca fixtures shipped in tests/fixtures (each instruction
made unique by a counter).

    python benchmarks/convert_bench.py [--records 500000] [--workdir /tmp/datakit-bench] [--big-gb 1]

Targets (issue 2): datakit at least 5x the records/s, peak memory under twice the input size.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from _measure import run_side

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "formats"
SOURCES = ["llama-factory/alpaca_en_demo.json", "llama-factory/alpaca_zh_demo.json", "llama-factory/identity.json"]


def build_input(path: Path, records: int) -> None:
    rows = []
    for name in SOURCES:
        rows += json.loads((FIXTURES / name).read_text())
    with open(path, "w", encoding="utf-8") as f:
        for i in range(records):
            row = dict(rows[i % len(rows)])
            row["instruction"] = f"{row['instruction']} ({i})"
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


LLAMA_FACTORY_SIDE = r"""
import sys, time
from datasets import load_dataset, disable_progress_bars
disable_progress_bars()
src, dst, cache = sys.argv[1], sys.argv[2], sys.argv[3]

def alpaca_to_sharegpt(example):
    # The shape of LLaMA-Factory's AlpacaDatasetConverter.__call__, writing ShareGPT turns.
    turns = []
    if isinstance(example.get("history"), list):
        for old_prompt, old_response in example["history"]:
            turns.append({"from": "human", "value": old_prompt})
            turns.append({"from": "gpt", "value": old_response})
    query = []
    if example["instruction"]:
        query.append(example["instruction"])
    if example["input"]:
        query.append(example["input"])
    turns.append({"from": "human", "value": "\n".join(query)})
    turns.append({"from": "gpt", "value": example["output"]})
    return {"conversations": turns, "system": example.get("system") or ""}

start = time.perf_counter()
ds = load_dataset("json", data_files=src, split="train", cache_dir=cache)
ds = ds.map(alpaca_to_sharegpt, remove_columns=ds.column_names)
ds.to_json(dst, force_ascii=False)
print(time.perf_counter() - start)
"""

DATAKIT_SIDE = r"""
import sys, time
from datakit import convert
start = time.perf_counter()
summary = convert(sys.argv[1], sys.argv[2], to="sharegpt", from_format="alpaca")
assert summary.written == summary.rows_read, summary.text()
print(time.perf_counter() - start)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--workdir", default="/tmp/datakit-bench")
    parser.add_argument("--big-gb", type=float, default=0, help="also stream a JSONL of this many GB (memory check)")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"alpaca_{args.records}.jsonl"
    if not src.exists():
        build_input(src, args.records)
    size_mb = src.stat().st_size / 2**20
    print(f"input: {src} ({args.records:,} records, {size_mb:.0f} MB)")

    dk_s, dk_mb = run_side(DATAKIT_SIDE, str(src), str(work / "datakit_out.jsonl"))
    lf_s, lf_mb = run_side(
        LLAMA_FACTORY_SIDE, str(src), str(work / "lf_out.jsonl"), str(work / f"hf_cache_{os.getpid()}")
    )
    lf_rate, dk_rate = args.records / lf_s, args.records / dk_s
    print(f"{'side':<34}{'seconds':>9}{'records/s':>12}{'peak MB':>10}")
    print(f"{'LLaMA-Factory (datasets.map)':<34}{lf_s:>9.1f}{lf_rate:>12,.0f}{lf_mb:>10,.0f}")
    print(f"{'datakit convert':<34}{dk_s:>9.1f}{dk_rate:>12,.0f}{dk_mb:>10,.0f}")
    print(f"speed ratio datakit / LLaMA-Factory: {dk_rate / lf_rate:.1f}x (target >= 5x)")
    print(f"datakit peak memory / input size: {dk_mb / size_mb:.2f} (target < 2)")
    if args.big_gb:
        big = work / f"alpaca_{args.big_gb:g}gb.jsonl"
        if not big.exists():
            build_input(big, int(args.records * args.big_gb * 1024 / size_mb))
        big_mb = big.stat().st_size / 2**20
        big_s, big_peak = run_side(DATAKIT_SIDE, str(big), str(work / "datakit_big_out.jsonl"))
        print(f"streaming: {big_mb:,.0f} MB JSONL in {big_s:.1f}s, datakit peak memory {big_peak:,.0f} MB")


if __name__ == "__main__":
    main()
