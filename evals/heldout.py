"""``heldout_loss``: the mean per-token loss of reference responses on instructions no arm trains on.

The held-out set is checked against every arm's training data with datakit's own dedupe
(exact and MinHash near-duplicates): a held-out record that shares a cluster with any training
record is removed for all arms, so the items stay paired and no arm is scored on what it saw.
Each item's result is (summed token loss, tokens) over its assistant turns and their EOS,
rendered with the arm's template; the task's score is the token-weighted mean (lower is better).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from datakit import pipeline
from datakit.convert import read_records
from train import IGNORE, collate, prompt, token_losses, tokenize

MAX_LENGTH = 1024


def decontaminate(heldout: list[dict[str, Any]], training_files: list[Path]) -> tuple[list[int], int]:
    """(indices of held-out records to keep, how many were removed as duplicates of training data).

    One dedupe (exact, then MinHash) over the held-out records followed by every training
    record, in memory; a held-out record in a cluster with any training record is removed.
    """
    records = list(heldout)
    for file in training_files:
        records += list(read_records(file))
    clusters = pipeline.run("dedupe", records, method="minhash").side["clusters"]
    n, seen = len(heldout), set()
    for cluster in clusters:
        members = [cluster["kept_index"], *(r["index"] for r in cluster["removed"])]
        if any(m >= n for m in members):
            seen.update(m for m in members if m < n)
    keep = [i for i in range(n) if i not in seen]
    return keep, len(seen)


def load_model(model_path: str, adapter: str | None, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(model in eval mode with its adapter, tokenizer) for scoring or answering."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
        if not model.active_peft_config.is_prompt_learning:  # virtual tokens cannot be merged into weights
            model = model.merge_and_unload()  # scoring needs no separate adapter
    model.eval()
    return model, tokenizer


@torch.no_grad()
def answers(model_path: str, adapter: str | None, template: str, records: list[dict[str, Any]],
            max_new_tokens: int) -> list[str]:  # fmt: skip
    """The model's greedy answer to each record's last user turn (its reference answer dropped),
    all prompts in one batch, padded on the left so that every answer starts at the same place."""
    if not records:
        return []
    model, tokenizer = load_model(model_path, adapter)
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tokenizer.pad_token_id = pad
    texts = [prompt({**r, "messages": r["messages"][:-1]}, template, tokenizer) for r in records]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    start = batch["input_ids"].shape[1]
    return [tokenizer.decode(row[start:], skip_special_tokens=True).strip() for row in generated]


@torch.no_grad()
def score(model_path: str, adapter: str | None, template: str, records: list[dict[str, Any]],
          batch_size: int = 8, dtype: torch.dtype = torch.float32) -> list[tuple[int, float, float]]:  # fmt: skip
    """[(item index, summed token loss, tokens)] for each record with a response to score."""
    model, tokenizer = load_model(model_path, adapter, dtype)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    items = [(i, tokenize(r, tokenizer, template, max_length=MAX_LENGTH)) for i, r in enumerate(records)]
    items = [(i, ex) for i, ex in items if not isinstance(ex, str)]
    items.sort(key=lambda item: len(item[1].input_ids))  # similar lengths together: little padding
    out = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        examples = [ex for _, ex in chunk]
        batch = collate(examples, [[k] for k in range(len(examples))], pad, packing=False)
        losses, rows = token_losses(model, batch, "cpu")
        per_row = torch.zeros(len(chunk)).index_add_(0, rows, losses)
        counts = torch.bincount(rows, minlength=len(chunk))
        out += [(i, float(per_row[k]), float(counts[k])) for k, (i, _) in enumerate(chunk)]
    return sorted(out)


def score_served(served: Any, model_path: str, template: str, records: list[dict[str, Any]]) -> list[tuple[int, float, float]]:  # fmt: skip
    """``score`` through a served model (``evals.lm.Served``): the same tokens, sent as ids to
    ``/v1/completions`` with ``echo`` and ``logprobs``; the loss of a token is minus the logprob the
    server reports for it at its position in the prompt. Requests run ``served.scoring_concurrency``
    at a time."""
    from concurrent.futures import ThreadPoolExecutor

    from transformers import AutoTokenizer

    from datakit.vllm import post_json

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    items = [(i, tokenize(r, tokenizer, template, max_length=MAX_LENGTH)) for i, r in enumerate(records)]
    items = [(i, ex) for i, ex in items if not isinstance(ex, str)]

    def one(item: tuple[int, Any]) -> tuple[int, float, float]:
        i, example = item
        body = {"model": served.name, "prompt": list(example.input_ids), "max_tokens": 1, "temperature": 0,
                "echo": True, "logprobs": 0}  # fmt: skip
        logprobs = post_json(f"{served.url}/completions", body)["choices"][0]["logprobs"]["token_logprobs"]
        trained = [t for t, label in enumerate(example.labels) if t > 0 and label != IGNORE]
        return i, -sum(float(logprobs[t]) for t in trained), float(len(trained))

    with ThreadPoolExecutor(served.scoring_concurrency) as pool:
        return sorted(pool.map(one, items))
