"""Near-duplicate quality on a labelled set built from the real fixtures shipped in tests/fixtures.

Originals: Alpaca records (LLaMA-Factory's alpaca_en_demo) and GSM8K train problems with
their solutions (the first 500 of GSM8K train ship in tests/fixtures/bench; where a run asks
for more GSM8K originals than that, the rest are shipped problems again with every number
changed, as the hard negatives below are, so that each is a distinct problem). Each original
gets copies made with two of these perturbations:

    typo1, typo3   1% / 3% of letters substituted, inserted or deleted
    reorder        the sentences of the response shuffled
    trunc30        the last 30% of the response's words cut
    case_ws        words' case flipped, spaces doubled, line breaks moved
    template       the prompt put into another template ("Instruction: ...", "Q: ... A:")

Hard negatives (not duplicates, and must not be merged): each GSM8K problem again with
every number changed (question and solution), and Alpaca records that name a country
again with another country throughout.

For each method it prints pairwise precision, recall and F1 (pairs that share a cluster
vs pairs that share an original), recall per perturbation kind, and the share of hard
negatives merged with their original; and the same for datasketch's defaults
(MinHashLSH(threshold=0.8, num_perm=128): its own bands x rows, candidates taken as
duplicates without verification, as text-dedup does), on the same shingles.

    python benchmarks/dedupe_quality.py [--originals 600] [--semantic] [--thresholds 0.5,0.6,0.7,0.8]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np
import polars as pl

import datakit
from datakit.minhash import shingle_hashes
from datakit.record import message, new_record
from datakit.text import record_text

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
KINDS = ["typo1", "typo3", "reorder", "trunc30", "case_ws", "template"]
COUNTRIES = ["France", "Germany", "Japan", "China", "India", "Brazil", "Canada", "Italy", "Spain", "Mexico",
             "Russia", "Australia", "Egypt", "Kenya", "Nigeria", "Argentina", "Chile", "Peru", "Sweden", "Norway",
             "Greece", "Turkey", "Iran", "Vietnam", "Thailand", "Korea", "England", "Ireland", "Poland", "Portugal",
             "America", "United States", "Netherlands", "Switzerland", "Austria", "Belgium", "Denmark"]  # fmt: skip
COUNTRY = re.compile(r"\b(" + "|".join(COUNTRIES) + r")\b")


def originals(n: int, rng: random.Random) -> list[tuple[str, str, str]]:
    """(source, prompt, response) pairs: half Alpaca, half GSM8K, exact duplicates dropped."""
    alpaca = json.loads((FIXTURES / "formats/llama-factory/alpaca_en_demo.json").read_text())
    gsm8k = [json.loads(line) for line in (FIXTURES / "bench/gsm8k/train.jsonl").read_text().splitlines()]
    chosen = []
    seen = set()
    for row in alpaca:
        prompt = "\n".join(p for p in (row["instruction"], row["input"]) if p)
        if prompt not in seen and len(row["output"].split()) >= 8:
            seen.add(prompt)
            chosen.append(("alpaca", prompt, row["output"]))
    chosen = chosen[: n // 2]
    wanted = n - len(chosen)
    if wanted <= len(gsm8k):
        chosen += [("gsm8k", r["question"], r["answer"]) for r in rng.sample(gsm8k, wanted)]
        return chosen
    # more than the shipped problems: all of them, then shipped problems with other numbers
    chosen += [("gsm8k", r["question"], r["answer"]) for r in gsm8k]
    for i in range(wanted - len(gsm8k)):
        r = gsm8k[i % len(gsm8k)]
        chosen.append(("gsm8k", *other_numbers(r["question"], r["answer"], rng)))
    return chosen


def typos(text: str, rate: float, rng: random.Random) -> str:
    chars = list(text)
    letters = [i for i, c in enumerate(chars) if c.isalpha()]
    for i in sorted(rng.sample(letters, max(1, round(len(letters) * rate))), reverse=True):
        op = rng.choice("sid")
        if op == "s":
            chars[i] = rng.choice("abcdefghijklmnopqrstuvwxyz")
        elif op == "i":
            chars.insert(i, rng.choice("abcdefghijklmnopqrstuvwxyz"))
        else:
            del chars[i]
    return "".join(chars)


def reorder(text: str, rng: random.Random) -> str:
    sentences = re.split(r"(?<=[.!?])\s+|\n+", text.strip())
    if len(sentences) < 2:
        return text
    original = list(sentences)
    while sentences == original:
        rng.shuffle(sentences)
    return " ".join(sentences)


def case_ws(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    out = []
    for w in words:
        roll = rng.random()
        out.append(w.upper() if roll < 0.15 else w.lower() if roll < 0.4 else w)
    return ("  " if rng.random() < 0.5 else " \n").join(out).replace("\n", " ") + "\n"


def perturb(kind: str, prompt: str, response: str, rng: random.Random) -> tuple[str, str]:
    if kind == "typo1":
        return typos(prompt, 0.01, rng), typos(response, 0.01, rng)
    if kind == "typo3":
        return typos(prompt, 0.03, rng), typos(response, 0.03, rng)
    if kind == "reorder":
        return prompt, reorder(response, rng)
    if kind == "trunc30":
        words = response.split(" ")
        return prompt, " ".join(words[: max(1, round(len(words) * 0.7))])
    if kind == "case_ws":
        return case_ws(prompt, rng), case_ws(response, rng)
    if kind == "template":
        template = rng.choice(["Instruction: {}", "Q: {}\nA:", "Please help with the following.\n{}", "### Task\n{}"])
        return template.format(prompt), response
    raise ValueError(kind)


def other_numbers(prompt: str, response: str, rng: random.Random) -> tuple[str, str]:
    mapping: dict[str, str] = {}

    def swap(match: re.Match) -> str:
        number = match.group(0)
        if number not in mapping:
            mapping[number] = str(int(number) + rng.randint(1, 9) * (1 + int(number) // 10))
        return mapping[number]

    return re.sub(r"\d+", swap, prompt), re.sub(r"\d+", swap, response)


def other_country(prompt: str, response: str, rng: random.Random) -> tuple[str, str] | None:
    named = set(COUNTRY.findall(prompt + " " + response))
    if not named:
        return None
    mapping = {c: rng.choice([x for x in COUNTRIES if x not in named]) for c in named}
    return COUNTRY.sub(lambda m: mapping[m.group(0)], prompt), COUNTRY.sub(lambda m: mapping[m.group(0)], response)


def build(n: int, seed: int = 0) -> tuple[list[dict], list[int], list[str]]:
    """(records, group of each record, kind of each record); a group is an original and its copies."""
    rng = random.Random(seed)
    records, groups, kinds = [], [], []

    def add(prompt: str, response: str, group: int, kind: str) -> None:
        records.append(new_record([message("user", prompt), message("assistant", response)]))
        groups.append(group)
        kinds.append(kind)

    next_group = 0
    for source, prompt, response in originals(n, rng):
        group = next_group
        next_group += 1
        add(prompt, response, group, "original")
        for kind in rng.sample(KINDS, 2):
            add(*perturb(kind, prompt, response, rng), group, kind)
        negative = other_numbers(prompt, response, rng) if source == "gsm8k" else other_country(prompt, response, rng)
        if negative and negative != (prompt, response):
            add(*negative, next_group, f"hardneg:{group}")
            next_group += 1
    return records, groups, kinds


# --- predictions and scores -----------------------------------------------------------


def predicted_labels(n: int, links: list[tuple[int, int]]) -> np.ndarray:
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in links:
        parent[find(a)] = find(b)
    return np.array([find(i) for i in range(n)])


def datakit_labels(records: list[dict], settings: dict) -> np.ndarray:
    clusters = datakit.run("dedupe", records, **settings).side["clusters"]
    links = [(c["kept_index"], r["index"]) for c in clusters for r in c["removed"]]
    return predicted_labels(len(records), links)


def datasketch_default_labels(texts: pl.Series) -> np.ndarray:
    from datasketch import MinHash, MinHashLSH

    hashes, offsets = shingle_hashes(texts, 5)
    docs = [hashes[offsets[d] : offsets[d + 1]].tolist() for d in range(len(texts))]
    sketches = MinHash.bulk(docs, num_perm=128, hashfunc=lambda x: x)
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    links = []
    for i, sketch in enumerate(sketches):
        links += [(i, j) for j in lsh.query(sketch)]
        lsh.insert(i, sketch)
    return predicted_labels(len(texts), links)


def score(labels: np.ndarray, groups: list[int], kinds: list[str]) -> dict[str, float]:
    members = defaultdict(list)
    for i, label in enumerate(labels):
        members[label].append(i)
    predicted = {pair for group in members.values() for pair in combinations(sorted(group), 2)}
    by_group = defaultdict(list)
    for i, g in enumerate(groups):
        by_group[g].append(i)
    truth = {pair for group in by_group.values() for pair in combinations(sorted(group), 2)}
    hits = len(predicted & truth)
    precision = hits / len(predicted) if predicted else 1.0
    recall = hits / len(truth)
    out = {"precision": precision, "recall": recall, "f1": 2 * precision * recall / (precision + recall or 1)}
    original_of = {groups[i]: i for i, k in enumerate(kinds) if k == "original"}
    for kind in KINDS:
        copies = [i for i, k in enumerate(kinds) if k == kind]
        out[kind] = sum(labels[i] == labels[original_of[groups[i]]] for i in copies) / len(copies)
    negatives = [(i, original_of[int(k.split(":")[1])]) for i, k in enumerate(kinds) if k.startswith("hardneg")]
    out["hardneg_merged"] = sum(labels[a] == labels[b] for a, b in negatives) / len(negatives)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--originals", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--thresholds", default="0.5,0.6,0.8", help="extra MinHash thresholds to compare")
    parser.add_argument("--ngrams", default="5", help="shingle sizes for the extra MinHash runs")
    parser.add_argument("--semantic", action="store_true", help="also run the semantic and all methods (embeds)")
    args = parser.parse_args()

    records, groups, kinds = build(args.originals, args.seed)
    texts = pl.Series([record_text(r, "all") for r in records])
    n_neg = sum(k.startswith("hardneg") for k in kinds)
    print(f"{len(records)} records: {args.originals} originals, {len(records) - args.originals - n_neg} copies, "
          f"{n_neg} hard negatives")  # fmt: skip

    runs: list[tuple[str, callable]] = [
        ("exact", lambda: datakit_labels(records, dict(method="exact"))),
        ("minhash (default)", lambda: datakit_labels(records, dict(method="minhash"))),
        ("minhash, no guard", lambda: datakit_labels(records, dict(method="minhash", value_guard=False))),
    ]
    for t in (float(x) for x in args.thresholds.split(",") if x):
        for n in (int(x) for x in args.ngrams.split(",")):
            settings = dict(method="minhash", threshold=t, ngram=n)
            runs.append((f"minhash t={t} n={n}", lambda s=settings: datakit_labels(records, s)))
    if args.semantic:
        runs.append(("semantic (cos 0.95)", lambda: datakit_labels(records, dict(method="semantic"))))
        runs.append(("all", lambda: datakit_labels(records, dict(method="all"))))
    runs.append(("datasketch defaults", lambda: datasketch_default_labels(texts)))

    header = (
        f"{'method':<22}{'prec':>6}{'recall':>7}{'F1':>6}"
        + "".join(f"{k:>9}" for k in KINDS)
        + f"{'hardneg':>9}{'sec':>6}"
    )
    print(header)
    for name, run in runs:
        started = time.perf_counter()
        s = score(run(), groups, kinds)
        row = f"{name:<22}{s['precision']:>6.3f}{s['recall']:>7.3f}{s['f1']:>6.3f}"
        row += (
            "".join(f"{s[k]:>9.2f}" for k in KINDS)
            + f"{s['hardneg_merged']:>9.3f}{time.perf_counter() - started:>6.1f}"
        )
        print(row)
    print("targets (default settings): precision >= 0.98, hard negatives merged <= 0.05, "
          "recall >= 0.9 on typo1, case_ws and reorder")  # fmt: skip


if __name__ == "__main__":
    main()
