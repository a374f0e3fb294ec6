"""The shipped evaluation tasks: lm-eval's own task YAMLs, pointed at local data.

Each task ``include``s the YAML of lm-eval's built-in task (so prompts, answer choices,
filters and metrics are lm-eval's) and replaces only the dataset with a JSONL file shipped in
``evals/tasks/data`` (subsets of the real benchmark files; see SOURCES.md). They run offline.
Inside lm-eval they are named ``datakit_<name>`` so they never shadow the built-in tasks that
``lm:<name>`` reaches.

``heldout_loss`` is datakit's own: the mean per-token loss of reference responses on a held-out
instruction set (see evals.heldout).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from datakit.errors import DatakitError

DATA = Path(__file__).resolve().parent / "data"
HELDOUT = "heldout_loss"


@dataclass(frozen=True)
class Task:
    name: str
    include: str | None  # lm-eval's YAML, relative to lm_eval/tasks
    files: dict[str, str]  # split -> file in DATA
    metric: str  # the headline metric, as lm-eval names it in results ("acc,none")
    generate: bool = False  # generate_until: rendered with the arm's chat template
    overrides: dict[str, Any] = field(default_factory=dict)
    about: str = ""

    @property
    def lm_eval_name(self) -> str:
        return f"datakit_{self.name}"

    @property
    def sample_key(self) -> tuple[str, str]:
        """(metric, filter) as they appear in lm-eval's logged samples."""
        metric, _, filt = self.metric.partition(",")
        return metric, filt or "none"


_NO_SPLITS = {"training_split": None, "validation_split": None, "fewshot_split": None, "test_split": "test"}

TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task("arc_easy", "arc/arc_easy.yaml", {"test": "arc_easy.jsonl"}, "acc,none", overrides=_NO_SPLITS,
             about="ARC-Easy test, 500 items, 4 choices"),
        Task("arc_challenge", "arc/arc_challenge.yaml", {"test": "arc_challenge.jsonl"}, "acc_norm,none",
             overrides=_NO_SPLITS, about="ARC-Challenge test, 500 items"),
        Task("piqa", "piqa/piqa.yaml", {"test": "piqa.jsonl"}, "acc,none", overrides=_NO_SPLITS,
             about="PIQA validation, 500 items, 2 choices"),
        Task("hellaswag", "hellaswag/hellaswag.yaml", {"test": "hellaswag.jsonl"}, "acc_norm,none",
             overrides=_NO_SPLITS, about="HellaSwag validation, 500 items, 4 endings"),
        Task("boolq", "super_glue/boolq/default.yaml", {"test": "boolq.jsonl"}, "acc,none", overrides=_NO_SPLITS,
             about="BoolQ dev, 500 items, yes/no"),
        Task("winogrande", "winogrande/default.yaml", {"test": "winogrande.jsonl"}, "acc,none", overrides=_NO_SPLITS,
             about="WinoGrande dev (xl), 500 items, partial scoring"),
        Task("mmlu", "mmlu/default/_default_template_yaml", {"test": "mmlu.jsonl", "dev": "mmlu_dev.jsonl"},
             "acc,none",
             overrides={**_NO_SPLITS, "fewshot_split": "dev", "num_fewshot": 0,
                        "description": "The following are multiple choice questions (with answers) about "
                                       "{{subject_name}}.\n\n"},
             about="MMLU test, 9 items from each of 57 subjects (513), 0-shot"),
        Task("truthfulqa_mc1", "truthfulqa/truthfulqa_mc1.yaml", {"test": "truthfulqa.jsonl"}, "acc,none",
             overrides=_NO_SPLITS, about="TruthfulQA MC1, all 817 questions"),
        Task("truthfulqa_mc2", "truthfulqa/truthfulqa_mc2.yaml", {"test": "truthfulqa.jsonl"}, "acc,none",
             overrides=_NO_SPLITS, about="TruthfulQA MC2, all 817 questions"),
        Task("gsm8k", "gsm8k/gsm8k.yaml", {"test": "gsm8k.jsonl", "train": "gsm8k_train.jsonl"},
             "exact_match,strict-match", generate=True,
             overrides={**_NO_SPLITS, "training_split": "train", "fewshot_split": "train"},
             about="GSM8K test, 500 items, 5-shot, generation"),
        Task("ifeval", "ifeval/ifeval.yaml", {"test": "ifeval.jsonl"}, "prompt_level_strict_acc,none", generate=True,
             overrides={**_NO_SPLITS, "generation_kwargs": {"until": [], "do_sample": False, "temperature": 0.0,
                                                            "max_gen_toks": 512}},
             about="IFEval, all 541 prompts, generation (max 512 new tokens)"),
    ]
}  # fmt: skip
NAMES = (*TASKS, HELDOUT)


class TaskError(DatakitError, ValueError):
    pass


def check_name(name: str) -> None:
    if name in NAMES or (name.startswith("lm:") and len(name) > 3):
        return
    raise TaskError(f"unknown task {name!r}; shipped tasks: {', '.join(NAMES)} (or lm:NAME for an lm-eval task)")


def lm_eval_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent


def materialize(folder: Path, cache_dir: Path) -> Path:
    """Write the shipped tasks' YAMLs (absolute paths to the data) into ``folder`` for TaskManager."""
    folder.mkdir(parents=True, exist_ok=True)
    builtin = lm_eval_dir()
    for task in TASKS.values():
        spec = {
            "include": str(builtin / task.include),
            "task": task.lm_eval_name,
            "tag": [],
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {
                "data_files": {split: str(DATA / file) for split, file in task.files.items()},
                "cache_dir": str(cache_dir),  # datasets' cache inside the run, not the user's home
            },
            **task.overrides,
        }
        tmp = folder / f".{task.name}.yaml.tmp"
        tmp.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
        os.replace(tmp, folder / f"{task.name}.yaml")
    return folder


def describe() -> list[tuple[str, str]]:
    rows = [(t.name, f"{t.about}; metric {t.metric.split(',')[0]}") for t in TASKS.values()]
    rows.append((HELDOUT, "mean per-token loss of reference responses on held-out instructions (lower is better)"))
    rows.append(("lm:NAME", "any lm-eval task, where its data can be loaded (offline: cached or local)"))
    return rows
