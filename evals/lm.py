"""Scoring a model (plus an optional peft adapter) with lm-eval's Python API, per item.

- Shipped tasks come from evals.tasks (offline); ``lm:NAME`` is any lm-eval task.
- Generation tasks (gsm8k, ifeval) render prompts with the arm's chat template, through a
  small subclass whose ``apply_chat_template`` uses datakit's templates; multiple-choice
  tasks score the plain prompt, as lm-eval does by default.
- Two backends: lm-eval's transformers model in this process (the default), or a served model
  (vLLM) through lm-eval's completions client. Both tokenize here and send the same token ids;
  a served model gets even generation prompts through ``/v1/completions``, not chat-completions,
  because the server would render chat with its own template rather than the arm's.
- lm-eval's request cache is keyed by the request only, so each model+adapter pair gets its
  own cache file (``cache_prefix``), or arms would silently share answers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evals.tasks import TASKS, Task

_PUNKT = Path(__file__).resolve().parent / "tasks" / "nltk_data"


def use_shipped_punkt() -> None:
    """ifeval's metric needs NLTK's punkt_tab; use the one trained offline and shipped here."""
    import nltk

    if str(_PUNKT) not in nltk.data.path:
        nltk.data.path.insert(0, str(_PUNKT))


class _DatakitChat:
    """Chat prompts rendered with a datakit template (the one the arm trained with), for either backend."""

    datakit_template = "tokenizer"
    tokenizer: Any

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        from train import prompt

        system = "\n".join(m["content"] for m in chat_history if m["role"] == "system") or None
        messages = [{"role": m["role"], "content": m["content"]} for m in chat_history if m["role"] != "system"]
        if messages and messages[-1]["role"] == "assistant":  # a prefilled answer: continue it
            head = prompt({"system": system, "messages": messages[:-1]}, self.datakit_template, self.tokenizer)
            return head + messages[-1]["content"]
        return prompt({"system": system, "messages": messages}, self.datakit_template, self.tokenizer)

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return f"datakit:{self.datakit_template}" if chat_template else None


def _datakit_lm_class():
    from lm_eval.models.huggingface import HFLM

    class DatakitLM(_DatakitChat, HFLM):
        """lm-eval's transformers backend, in this process."""

        def __init__(self, *args: Any, template: str = "tokenizer", **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.datakit_template = template

    return DatakitLM


def _datakit_api_class():
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    class DatakitServedLM(_DatakitChat, LocalCompletionsAPI):
        """lm-eval's completions client against a served model (vLLM): prompts go as token ids, made
        by the same tokenizer and template as the transformers backend's, so both score the same
        tokens. Loglikelihood uses the prompt's logprobs (``echo``); generation is greedy."""

        def __init__(self, *args: Any, template: str = "tokenizer", **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.datakit_template = template

    return DatakitServedLM


@dataclass(frozen=True)
class Served:
    """A model behind an OpenAI-compatible server: its base URL (``.../v1``) and model name.

    ``scoring_concurrency`` bounds requests that ask for prompt logprobs (loglikelihood and
    heldout_loss): vLLM's CPU build crashes when two such requests share a step on a server whose
    LoRA wraps the LM head's logits (its CPU kernel maps adapters per request, not per prompt
    token; upstream vllm-project/vllm#29955, #16668). datakit's servers keep LoRA off the head
    unless an adapter trains it (``datakit.vllm.lora_targets``); where one does, it is 1."""

    url: str
    name: str
    concurrency: int = 8
    scoring_concurrency: int = 8


def lm_eval_task_name(name: str) -> str:
    return name[3:] if name.startswith("lm:") else TASKS[name].lm_eval_name


def evaluate(model_path: str, adapter: str | None, template: str, tasks: list[str], *, task_dir: Path,
             cache_prefix: Path, limit: int | None, batch_size: int = 16, chat: str = "auto",
             num_fewshot: dict[str, int] | None = None,
             max_gen_toks: int | None = None, served: Served | None = None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """{task: {"value": score, "metric": name, "items": [(doc_id, value)]}} for lm-eval tasks.

    With ``served``, requests go to that server (the model and adapter are already loaded there;
    ``model_path`` gives the tokenizer); otherwise lm-eval's transformers backend runs here."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from datakit.embed import has_cuda

    use_shipped_punkt()
    if served is not None:
        generates = any(TASKS[n].generate for n in tasks if n in TASKS)
        concurrency = served.concurrency if generates else served.scoring_concurrency
        model = _datakit_api_class()(
            model=served.name, base_url=f"{served.url}/completions", tokenizer=model_path, template=template,
            tokenizer_backend="huggingface", tokenized_requests=True, max_length=2048, max_retries=3, timeout=600,
            batch_size=batch_size if concurrency > 1 else 1, num_concurrent=concurrency,
        )  # fmt: skip
    else:
        model = _datakit_lm_class()(
            pretrained=model_path, peft=adapter, template=template, batch_size=batch_size, dtype="float32",
            device="cuda" if has_cuda() else "cpu",
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
