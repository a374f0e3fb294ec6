"""Train NLTK's Punkt sentence splitter offline and write it as ``punkt_tab`` (maintainers only).

lm-eval's ``ifeval`` metric splits sentences and words with NLTK, which needs the ``punkt_tab``
model; nltk downloads it from GitHub, which machines here cannot reach. This trains a real
Punkt model with NLTK's own unsupervised ``PunktTrainer`` on English text shipped with the
project's sources (GSM8K train questions and solutions, MIT; TruthfulQA questions and
answers, Apache-2.0; OpenAssistant English messages, Apache-2.0) and writes the four tab
files in the layout ``nltk.data.find("tokenizers/punkt_tab/english/")`` loads.

This is a maintainer script: it reads the original sources from ../shared beside the
repository root, which a clone does not have, and is not needed to install, test or run
datakit (its output ships in evals/tasks/nltk_data/).

    python evals/tasks/make_punkt.py
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from nltk.tokenize.punkt import PunktTrainer, TabEncoder

SHARED = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
OUT = Path(__file__).resolve().parent / "nltk_data" / "tokenizers" / "punkt_tab" / "english"


def corpus() -> str:
    parts = []
    for line in (SHARED / "bench" / "gsm8k" / "train.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        parts += [row["question"], row["answer"].split("####")[0]]
    with open(SHARED / "bench" / "truthfulqa" / "TruthfulQA.csv", encoding="utf-8-sig", newline="") as f:
        for row in csv.DictReader(f):
            parts += [row["Question"], row["Best Answer"], row["Correct Answers"].replace(";", "."),
                      row["Incorrect Answers"].replace(";", ".")]  # fmt: skip
    for line in (SHARED / "formats" / "open-assistant" / "en_60_tree.jsonl").read_text(encoding="utf-8").splitlines():
        stack = [json.loads(line)["prompt"]]
        while stack:
            node = stack.pop()
            if node.get("lang") == "en":
                parts.append(node["text"])
            stack += node.get("replies", [])
    return "\n\n".join(parts)


def main() -> None:
    text = corpus()
    trainer = PunktTrainer()
    trainer.INCLUDE_ALL_COLLOCS = True
    trainer.train(text, finalize=True)
    params = trainer.get_params()
    OUT.mkdir(parents=True, exist_ok=True)
    tab = TabEncoder()
    (OUT / "collocations.tab").write_text(tab.tups2tab(params.collocations), newline="")
    (OUT / "sent_starters.txt").write_text(tab.set2txt(params.sent_starters), newline="")
    (OUT / "abbrev_types.txt").write_text(tab.set2txt(params.abbrev_types), newline="")
    (OUT / "ortho_context.tab").write_text(tab.ivdict2tab(params.ortho_context), newline="")
    print(f"trained on {len(text):,} characters: {len(params.abbrev_types)} abbreviations, "
          f"{len(params.collocations)} collocations, {len(params.sent_starters)} sentence starters -> {OUT}")  # fmt: skip


if __name__ == "__main__":
    main()
