"""``datakit filter``: heuristic quality rules, each one named, each rejection explained.

A rule is a small function of a record that returns the reason it fails, or None. Rules are
switched on by name (``--rules``); without names the DEFAULT_RULES run. Every record is
written, or written to the rejects file with the rule and reason (``--rejects``); with
``--annotate`` nothing is dropped: each record gets ``meta["filter"]`` (the rules it failed)
and ``meta["score"]`` (the share of rules it passed), which ``select`` can rank by.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from datakit.options import StepConfig, option
from datakit.pipeline import Batch, Processed, SideOutput, Step, register
from datakit.text import detect_language

RULE_NAMES = ("empty_response", "length", "refusal", "echo", "repetition", "code_fences", "truncated", "language")
DEFAULT_RULES = RULE_NAMES[:-1]  # language detection is slow and needs to be told which languages


@dataclass
class FilterConfig(StepConfig):
    """The rules to run and the numbers they use (one field per flag and recipe key)."""

    rules: tuple[str, ...] = option(DEFAULT_RULES, "Rules to run.", choices=RULE_NAMES)
    annotate: bool = option(False, "Keep every record; add meta.filter (failed rules) and meta.score.")
    min_response_chars: int = option(2, "Shortest assistant turn, in characters.", low=0, aliases=("--min-response",))
    max_prompt: int = option(16_000, "Longest prompt, in characters (or tokens with --tokenizer).", low=1)
    max_response: int = option(16_000, "Longest response, in characters (or tokens).", low=1)
    tokenizer: str | None = option(None, "Count lengths in tokens of this Hugging Face tokenizer.")
    max_repeated_ngram_share: float = option(0.3, "repetition: most word 3-grams that may repeat.", low=0, high=1)
    echo_overlap: float = option(0.9, "echo: share of the prompt's 3-grams that makes a response an echo.",
                                 low=0, high=1)  # fmt: skip
    languages: tuple[str, ...] = option(("en",), "language: languages to keep.")


def prompt_text(record: dict[str, Any]) -> str:
    return "\n".join(m["content"] or "" for m in record["messages"] if m["role"] == "user")


def response_text(record: dict[str, Any]) -> str:
    return "\n".join(m["content"] or "" for m in record["messages"] if m["role"] == "assistant")


# --- rules ----------------------------------------------------------------------------

REFUSALS = re.compile(
    r"\b(as an ai\b|as a language model|i('m| am) (just )?an ai\b|"
    r"i('m| am) sorry,? (but )?i (can(no|')t|am (not able|unable))|"
    r"i can(no|')t (help|assist|fulfill|comply|provide) (with )?(that|this)|"
    r"i('m| am) (not able|unable) to (help|assist|provide|fulfill)|my apologies, but i can(no|')t)",
    re.IGNORECASE,
)
TRAILING_WORDS = {"and", "or", "the", "a", "an", "to", "of", "with", "for", "in", "that", "but", "because"}


def empty_response(record: dict[str, Any], limits: FilterConfig) -> str | None:
    """An assistant turn with (almost) nothing in it teaches the model to say nothing."""
    for i, m in enumerate(record["messages"]):
        if m["role"] == "assistant" and not m.get("tool_calls"):
            size = len((m["content"] or "").strip())
            if size < limits.min_response_chars:
                return f"message {i}: assistant turn has {size} characters (minimum {limits.min_response_chars})"
    return None


def length(record: dict[str, Any], limits: FilterConfig) -> str | None:
    unit = "tokens" if limits.tokenizer else "characters"
    for name, text, most in (
        ("prompt", prompt_text(record), limits.max_prompt),
        ("response", response_text(record), limits.max_response),
    ):
        size = _count(text, limits)
        if size > most:
            return f"{name} has {size} {unit} (maximum {most})"
    return None


_TOKENIZERS: dict[str, Any] = {}


def _count(text: str, limits: FilterConfig) -> int:
    if not limits.tokenizer:
        return len(text)
    if limits.tokenizer not in _TOKENIZERS:
        from transformers import AutoTokenizer

        _TOKENIZERS[limits.tokenizer] = AutoTokenizer.from_pretrained(limits.tokenizer)
    return len(_TOKENIZERS[limits.tokenizer](text, add_special_tokens=False)["input_ids"])


def refusal(record: dict[str, Any], limits: FilterConfig) -> str | None:
    match = REFUSALS.search(response_text(record))
    return f"refusal or AI disclaimer: {match.group(0)!r}" if match else None


def echo(record: dict[str, Any], limits: FilterConfig) -> str | None:
    """The response is the prompt again: nearly all the prompt's word 3-grams, and little else."""
    prompt = _words(prompt_text(record))
    response = _words(response_text(record))
    if len(prompt) < 3 or len(response) < 3 or len(response) > 1.2 * len(prompt):
        return None
    prompt_grams = {tuple(prompt[i : i + 3]) for i in range(len(prompt) - 2)}
    response_grams = {tuple(response[i : i + 3]) for i in range(len(response) - 2)}
    contained = len(prompt_grams & response_grams) / len(prompt_grams)
    if contained >= limits.echo_overlap:
        return f"response repeats the prompt ({contained:.0%} of the prompt's word 3-grams)"
    return None


def repetition(record: dict[str, Any], limits: FilterConfig) -> str | None:
    """An assistant turn that keeps repeating itself (turns are checked one by one: a later
    turn that quotes an earlier one's code is not repetition)."""
    for i, m in enumerate(record["messages"]):
        if m["role"] != "assistant":
            continue
        words = _words(m["content"] or "")
        grams = [tuple(words[j : j + 3]) for j in range(len(words) - 2)]
        if len(grams) < 10:
            continue
        repeated = sum(n - 1 for n in Counter(grams).values() if n > 1) / len(grams)
        if repeated > limits.max_repeated_ngram_share:
            most = limits.max_repeated_ngram_share
            return f"message {i}: {repeated:.0%} of its word 3-grams are repeats (maximum {most:.0%})"
    return None


def code_fences(record: dict[str, Any], limits: FilterConfig) -> str | None:
    fences = len(re.findall(r"^\s*```", response_text(record), re.MULTILINE))
    return f"unbalanced code fences ({fences} ``` lines)" if fences % 2 else None


def truncated(record: dict[str, Any], limits: FilterConfig) -> str | None:
    text = response_text(record).rstrip()
    if not text:
        return None
    if text[-1] in ",:;([{" or (text[-1] == "-" and not text.endswith("--")):
        return f"response ends mid-sentence ({text[-20:]!r})"
    last = re.findall(r"\w+", text[-20:].lower())
    if last and last[-1] in TRAILING_WORDS and text[-1].isalpha():
        return f"response ends on {last[-1]!r}"
    return None


def language(record: dict[str, Any], limits: FilterConfig) -> str | None:
    found = detect_language(prompt_text(record) + "\n" + response_text(record))
    if found is None:
        return None
    if found.split("-")[0] not in limits.languages:
        return f"language {found!r}, not {', '.join(limits.languages)}"
    return None


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


Rule = Callable[[dict[str, Any], FilterConfig], "str | None"]
RULES: dict[str, Rule] = {
    "empty_response": empty_response,
    "length": length,
    "refusal": refusal,
    "echo": echo,
    "repetition": repetition,
    "code_fences": code_fences,
    "truncated": truncated,
    "language": language,
}
assert tuple(RULES) == RULE_NAMES


def check(record: dict[str, Any], rules: tuple[str, ...], limits: FilterConfig) -> list[tuple[str, str]]:
    """(rule, reason) for every rule the record fails."""
    return [(name, reason) for name in rules if (reason := RULES[name](record, limits)) is not None]


# --- the step ---------------------------------------------------------------------------


@register
class Filter(Step):
    """Drop (or flag) records that fail heuristic quality rules, each with its reason."""

    name = "filter"
    Config = FilterConfig
    side_outputs = {"rejects": SideOutput(".rejects.jsonl", "Rejected records with rule and reason.")}

    def target_format(self, input_format: str) -> str:
        return "canonical" if self.config.annotate else input_format  # only canonical keeps meta

    def process(self, batch: Batch) -> Processed:
        config = self.config
        out = Processed(side={"rejects": []})
        for k, record in enumerate(batch.records):
            failed = check(record, config.rules, config)
            out.figures.update(f"failed {rule}" for rule, _ in failed)
            if config.annotate:
                record["meta"]["filter"] = {rule: reason for rule, reason in failed}
                record["meta"]["score"] = round(1 - len(failed) / len(config.rules), 4)
            elif failed:
                rule, reason = failed[0]
                row = {"stage": "filter", **batch.where(k), "id": record["id"], "rule": rule, "reason": reason}
                out.side["rejects"].append({**row, "failed": [r for r, _ in failed], "record": record})
                out.removed[f"failed {rule}"] += 1
                continue
            out.records.append(record)
        return out
