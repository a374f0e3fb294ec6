"""Scoring a model (plus an optional peft adapter) with lm-eval's Python API, per item.

- Shipped tasks come from evals.tasks (offline); ``lm:NAME`` is any lm-eval task.
- Generation tasks (gsm8k, ifeval) render prompts with the arm's chat template, through a
  small HFLM subclass whose ``apply_chat_template`` uses datakit's templates; multiple-choice
  tasks score the plain prompt, as lm-eval does by default.
- lm-eval's request cache is keyed by the request only, so each model+adapter pair gets its
  own cache file (``cache_prefix``), or arms would silently share answers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from evals.tasks import TASKS, Task

_PUNKT = Path(__file__).resolve().parent / "tasks" / "nltk_data"


def use_shipped_punkt() -> None:
    """ifeval's metric needs NLTK's punkt_tab; use the one trained offline and shipped here."""
    import nltk

    if str(_PUNKT) not in nltk.data.path:
        nltk.data.path.insert(0, str(_PUNKT))


def _datakit_lm_class():
    from lm_eval.models.huggingface import HFLM

    from train import prompt

    class DatakitLM(HFLM):
        """HFLM that renders chat prompts with a datakit template (the one the arm trained with)."""

        def __init__(self, *args: Any, template: str = "tokenizer", **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.datakit_template = template

        def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
            system = "\n".join(m["content"] for m in chat_history if m["role"] == "system") or None
            messages = [{"role": m["role"], "content": m["content"]} for m in chat_history if m["role"] != "system"]
            if messages and messages[-1]["role"] == "assistant":  # a prefilled answer: continue it
                head = prompt({"system": system, "messages": messages[:-1]}, self.datakit_template, self.tokenizer)
                return head + messages[-1]["content"]
            return prompt({"system": system, "messages": messages}, self.datakit_template, self.tokenizer)

        def chat_template(self, chat_template: bool | str = False) -> str | None:
            return f"datakit:{self.datakit_template}" if chat_template else None

    return DatakitLM


def lm_eval_task_name(name: str) -> str:
    return name[3:] if name.startswith("lm:") else TASKS[name].lm_eval_name


def evaluate(model_path: str, adapter: str | None, template: str, tasks: list[str], *, task_dir: Path,
             cache_prefix: Path, limit: int | None, batch_size: int = 16, chat: str = "auto",
             num_fewshot: dict[str, int] | None = None,
             max_gen_toks: int | None = None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """{task: {"value": score, "metric": name, "items": [(doc_id, value)]}} for lm-eval tasks."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    use_shipped_punkt()
    model = _datakit_lm_class()(
        pretrained=model_path, peft=adapter, template=template, batch_size=batch_size, dtype="float32",
        device="cuda" if _cuda() else "cpu",
    )  # fmt: skip
    manager = TaskManager(include_path=str(task_dir))
    out: dict[str, dict[str, Any]] = {}
    groups: dict[bool, list[str]] = {False: [], True: []}
    for name in tasks:
        task = TASKS.get(name)
        templated = chat == "always" or (chat == "auto" and task is not None and task.generate)
        groups[templated].append(name)
    for templated, names in groups.items():
        for name in names:  # one call per task: each task can have its own few-shot count
            fewshot = (num_fewshot or {}).get(name)
            cache_prefix.parent.mkdir(parents=True, exist_ok=True)
            results = lm_eval.simple_evaluate(
                model=model, tasks=[lm_eval_task_name(name)], task_manager=manager, limit=limit, log_samples=True,
                use_cache=str(cache_prefix), apply_chat_template=templated, num_fewshot=fewshot, bootstrap_iters=0,
                random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0,
                gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None,
            )  # fmt: skip
            out[name] = _items(name, results)
    return out


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _items(name: str, results: dict[str, Any]) -> dict[str, Any]:
    lm_name = lm_eval_task_name(name)
    task: Task | None = TASKS.get(name)
    summary = results["results"][lm_name]
    if task is not None:
        metric, filt = task.sample_key
    else:  # lm:NAME: the first metric lm-eval reports
        key = next(k for k in summary if "," in k and "_stderr" not in k)
        metric, filt = key.split(",", 1)
    samples = [s for s in results["samples"][lm_name] if s.get("filter", "none") == filt]
    items = sorted((int(s["doc_id"]), float(s[metric])) for s in samples)
    return {"value": float(summary[f"{metric},{filt}"]), "metric": metric, "items": items}


def hf_home(folder: Path) -> None:
    """Keep Hugging Face's caches inside the run folder (lm-eval's json tasks write there)."""
    os.environ["HF_HOME"] = str(folder)
    os.environ.setdefault("HF_DATASETS_CACHE", str(folder / "datasets"))
