"""Near-duplicate search speed: datakit's default against datasketch's fastest path, one run.

The set: 200k instruction records built from the real fixtures shipped in tests/fixtures
(Alpaca en/zh demos, the first 500 GSM8K train problems, FastChat, identity; see
tests/fixtures/SOURCES.md), each a fixture record with 20% of its words replaced (distinct
records), or, for one record in five, a copy with 1% typos or an exact copy (duplicates).

- datasketch: word 5-gram shingles in Python, ``MinHash.bulk`` with xxhash's xxh32, then a
  ``MinHashLSH`` (threshold as datakit's default, its own bands x rows), query then insert,
  union-find over the candidates.
- datakit: the ``dedupe`` step on the records in memory, with the default settings (exact stage, then MinHash with the
  numba kernel, verification by estimated Jaccard, the value guard, union-find).

Both start from the same texts in a Parquet file; the time counted is the search alone.
Each side runs in its own process; peak memory is its resident memory.

    python benchmarks/dedupe_speed.py [--records 200000] [--million]

``--million`` also runs ``datakit dedupe`` end to end (JSONL in, JSONL out) on 1M records
and prints its time and peak memory (target: within 8 GB).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import polars as pl
from _measure import run_side

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


def fixture_texts() -> list[tuple[str, str]]:
    pairs = []
    for name in ("alpaca_en_demo.json", "alpaca_zh_demo.json", "identity.json"):
        for row in json.loads((FIXTURES / "formats/llama-factory" / name).read_text()):
            pairs.append(("\n".join(p for p in (row["instruction"], row["input"]) if p), row["output"]))
    for line in (FIXTURES / "bench/gsm8k/train.jsonl").read_text().splitlines():
        row = json.loads(line)
        pairs.append((row["question"], row["answer"]))
    for row in json.loads((FIXTURES / "formats/fastchat/dummy_conversation.json").read_text()):
        turns = row["conversations"]
        pairs.append((turns[0]["value"], turns[1]["value"]))
    return pairs


def build(records: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pool = fixture_texts()
    vocabulary = list({w for p, r in pool for w in (p + " " + r).split()})
    out = []
    for i in range(records):
        prompt, response = pool[i % len(pool)]
        roll = rng.random()
        if roll < 0.1 and out:
            out.append(out[rng.randrange(len(out))])  # an exact copy
            continue
        if roll < 0.2 and out:
            p, r = out[rng.randrange(len(out))]
            out.append((_typos(p, rng), _typos(r, rng)))  # a near copy
            continue
        words = (prompt + "\n\n" + response).split(" ")
        for k in rng.sample(range(len(words)), max(1, len(words) // 5)):
            words[k] = rng.choice(vocabulary)
        text = " ".join(words)
        prompt, _, response = text.partition("\n\n")
        out.append((prompt, response))
    return out


def _typos(text: str, rng: random.Random) -> str:
    chars = list(text)
    for _ in range(len(chars) // 100 if chars else 0):
        chars[rng.randrange(len(chars))] = rng.choice("abcdefghijklmnopqrstuvwxyz")
    return "".join(chars)


DATASKETCH_SIDE = r"""
import re, sys, time
import polars as pl, xxhash
from datasketch import MinHash, MinHashLSH
texts = pl.read_parquet(sys.argv[1])["text"].to_list()
threshold = float(sys.argv[2])
start = time.perf_counter()
word = re.compile(r"\w+")
def shingles(text):
    words = word.findall(text.lower())
    return [" ".join(words[i:i + 5]).encode() for i in range(max(1, len(words) - 4))] if words else []
sketches = MinHash.bulk([shingles(t) for t in texts], num_perm=128, hashfunc=xxhash.xxh32_intdigest)
lsh = MinHashLSH(threshold=threshold, num_perm=128)
parent = list(range(len(texts)))
def find(x):
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x
for i, sketch in enumerate(sketches):
    for j in lsh.query(sketch):
        parent[find(i)] = find(j)
    lsh.insert(i, sketch)
removed = len(texts) - len({find(i) for i in range(len(texts))})
print("removed", removed, file=sys.stderr)
print(time.perf_counter() - start)
"""

DATAKIT_SIDE = r"""
import sys, time
import polars as pl
import datakit
from datakit.minhash import shingle_hashes, signatures
signatures(*shingle_hashes(["warm up the compiled kernels once"]))
frame = pl.read_parquet(sys.argv[1])
records = [datakit.new_record([datakit.message("user", t)], id=i) for i, t in zip(frame["id"], frame["text"])]
start = time.perf_counter()
result = datakit.run("dedupe", records)
print(result.report.text(), file=sys.stderr)
print(time.perf_counter() - start)
"""

END_TO_END = r"""
import sys, time
import datakit
start = time.perf_counter()
report = datakit.run("dedupe", sys.argv[1], sys.argv[2]).report
print(report.text(), file=sys.stderr)
print(time.perf_counter() - start)
"""


def main() -> None:
    from datakit.dedupe import DEFAULT_JACCARD

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--workdir", default="/tmp/datakit-bench")
    parser.add_argument("--million", action="store_true", help="also dedupe 1M records end to end")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"dedupe_{args.records}.parquet"
    if not data.exists():
        pairs = build(args.records)
        pl.DataFrame(
            {"id": [str(i) for i in range(len(pairs))], "text": [p + "\n" + r for p, r in pairs]}
        ).write_parquet(data)
    print(f"{args.records:,} records; MinHash threshold {DEFAULT_JACCARD}, 128 permutations, 5-word shingles")
    ds_s, ds_mb = run_side(DATASKETCH_SIDE, str(data), str(DEFAULT_JACCARD))
    dk_s, dk_mb = run_side(DATAKIT_SIDE, str(data))
    print(f"{'side':<40}{'seconds':>9}{'records/s':>12}{'peak MB':>10}")
    print(f"{'datasketch (MinHash.bulk + LSH)':<40}{ds_s:>9.1f}{args.records / ds_s:>12,.0f}{ds_mb:>10,.0f}")
    print(f"{'datakit default (exact + minhash)':<40}{dk_s:>9.1f}{args.records / dk_s:>12,.0f}{dk_mb:>10,.0f}")
    print(f"speed ratio datakit / datasketch: {ds_s / dk_s:.1f}x (target >= 4x)")
    if args.million:
        big = work / "dedupe_1m.jsonl"
        if not big.exists():
            with open(big, "w", encoding="utf-8") as f:
                for prompt, response in build(1_000_000, seed=1):
                    f.write(json.dumps({"instruction": prompt, "input": "", "output": response}, ensure_ascii=False))
                    f.write("\n")
        seconds, peak = run_side(END_TO_END, str(big), str(work / "dedupe_1m.out.jsonl"))
        print(f"datakit dedupe, 1M records end to end: {seconds:.0f}s, peak memory {peak:,.0f} MB (target <= 8 GB)")


if __name__ == "__main__":
    main()
