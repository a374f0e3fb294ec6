"""Rebuild the shipped task data from the benchmark files in ../shared/fixtures/bench (maintainers only).

Each task's items are written in the layout of the Hugging Face dataset that lm-eval's own task
YAML reads, so the shipped tasks ``include`` lm-eval's YAML and change only where the data comes
from: prompts, choices and metrics stay lm-eval's. Subsets are the first N items of each file
(MMLU: the first items of every subject), so a re-run gives the same files. Sources and
licences: evals/tasks/SOURCES.md.

This is a maintainer script: it reads the original benchmark files from ../shared beside the
repository root, which a clone does not have, and is not needed to install, test or run
datakit (its output ships in evals/tasks/data/).

    python evals/tasks/make_data.py
"""

from __future__ import annotations

import bz2
import csv
import json
import os
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "bench"
OUT = Path(__file__).resolve().parent / "data"
N = 500


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write(name: str, rows: list[dict]) -> None:
    path = OUT / f"{name}.jsonl"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)
    print(f"{path.relative_to(OUT.parent)}: {len(rows)} items")


def arc(file: str) -> list[dict]:
    rows = []
    for i, r in enumerate(jsonl(BENCH / "arc" / file)[:N]):
        labels = [chr(ord("A") + k) for k in range(len(r["choices"]))]
        question = r["query"].removeprefix("Question: ").strip()
        rows.append({"id": str(i), "question": question, "choices": {"text": r["choices"], "label": labels},
                     "answerKey": labels[r["gold"]]})  # fmt: skip
    return rows


def piqa() -> list[dict]:
    return [
        {
            "goal": r["query"].removeprefix("Question: ").strip(),
            "sol1": r["choices"][0],
            "sol2": r["choices"][1],
            "label": r["gold"],
        }  # fmt: skip
        for r in jsonl(BENCH / "piqa" / "piqa_valid.mosaic.jsonl")[:N]
    ]


def boolq() -> list[dict]:
    rows = []
    for r in jsonl(BENCH / "boolq" / "boolq_dev.mosaic.jsonl")[:N]:
        passage, question = r["query"].removeprefix("Passage: ").rsplit("Question: ", 1)
        rows.append({"passage": passage.strip(), "question": question.strip().rstrip("?"), "label": r["gold"]})
    return rows


def hellaswag() -> list[dict]:
    lines = bz2.decompress((BENCH / "hellaswag" / "hellaswag_val_full.txt.bz2").read_bytes()).decode().splitlines()
    rows = []
    for i in range(0, min(len(lines), 6 * N), 6):
        activity, ctx = lines[i].split(": ", 1)
        # the llama.cpp layout joins ctx_a and ctx_b already; lm-eval's process_docs adds " " + ctx_b
        rows.append({"ind": i // 6, "activity_label": activity, "ctx_a": ctx, "ctx_b": "", "ctx": ctx,
                     "endings": lines[i + 2 : i + 6], "label": lines[i + 1].strip(), "split": "val"})  # fmt: skip
    return rows


def winogrande() -> list[dict]:
    rows = []
    for r in jsonl(BENCH / "winogrande" / "winogrande_dev.mosaic.jsonl")[:N]:
        a, b = r["context_options"]
        common = os.path.commonprefix([a, b])
        common = common[: common.rfind(" ") + 1] if " " in common else ""  # back off to a word boundary
        rows.append({"sentence": f"{common}_ {r['continuation']}", "option1": a[len(common):],
                     "option2": b[len(common):], "answer": str(r["gold"] + 1)})  # fmt: skip
    return rows


def mmlu(split: str, per_subject: int) -> list[dict]:
    rows = []
    for path in sorted((BENCH / "mmlu" / split).glob("*.csv")):
        subject = path.stem.removesuffix(f"_{split}")
        with open(path, newline="", encoding="utf-8") as f:
            for r in list(csv.DictReader(f))[:per_subject]:
                rows.append({"question": r["question"], "subject": subject, "subject_name": subject.replace("_", " "),
                             "choices": [r[f"choice{k}"] for k in range(4)], "answer": int(r["answer"])})  # fmt: skip
    return rows


def truthfulqa() -> list[dict]:
    def targets(d: dict) -> dict:
        return {"choices": list(d), "labels": list(d.values())}

    items = json.loads((BENCH / "truthfulqa" / "mc_task.json").read_text(encoding="utf-8"))
    return [{"question": r["question"], "mc1_targets": targets(r["mc1_targets"]), "mc2_targets": targets(r["mc2_targets"])}
            for r in items]  # fmt: skip


def main() -> None:
    OUT.mkdir(exist_ok=True)
    write("arc_easy", arc("arc_easy_test.mosaic.jsonl"))
    write("arc_challenge", arc("arc_challenge_test.mosaic.jsonl"))
    write("piqa", piqa())
    write("boolq", boolq())
    write("hellaswag", hellaswag())
    write("winogrande", winogrande())
    write("mmlu", mmlu("test", 9))
    write("mmlu_dev", mmlu("dev", 5))
    write("truthfulqa", truthfulqa())
    write("gsm8k", jsonl(BENCH / "gsm8k" / "test.jsonl")[:N])
    write("gsm8k_train", jsonl(BENCH / "gsm8k" / "train.jsonl")[:200])  # few-shot examples
    write("ifeval", jsonl(BENCH / "ifeval" / "input_data.jsonl"))


if __name__ == "__main__":
    main()
