"""``datakit filter``: heuristic quality rules, each one named, each rejection explained.

A rule is a small function of a record that returns the reason it fails, or None. Rules are
switched on by name (``--rules``); without names the DEFAULT_RULES run. Every record is
written, or written to the rejects file with the rule and reason (``--rejects``); with
``--annotate`` nothing is dropped: each record gets ``meta["filter"]`` (the rules it failed)
and ``meta["score"]`` (the share of rules it passed), which ``select`` can rank by.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from datakit import formats
from datakit.convert import REJECTS_SCHEMA, open_records
from datakit.formats import Read, ReadOptions, Rejected, Skipped
from datakit.io import RowWriter
from datakit.record import RecordError


class FilterError(ValueError):
    """Bad settings for filter; the message says which."""


@dataclass
class Limits:
    """The numbers the rules use (CLI flags map onto these)."""

    min_response_chars: int = 2
    max_prompt: int = 16_000  # characters, or tokens with a tokenizer
    max_response: int = 16_000
    tokenizer: str | None = None  # count tokens of this Hugging Face tokenizer instead of characters
    max_repeated_ngram_share: float = 0.3  # share of word 3-grams that are repeats
    echo_overlap: float = 0.9  # share of the prompt's word 3-grams found again in a response not much longer
    languages: tuple[str, ...] = ("en",)


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


def empty_response(record: dict[str, Any], limits: Limits) -> str | None:
    """An assistant turn with (almost) nothing in it teaches the model to say nothing."""
    for i, m in enumerate(record["messages"]):
        if m["role"] == "assistant" and not m.get("tool_calls"):
            size = len((m["content"] or "").strip())
            if size < limits.min_response_chars:
                return f"message {i}: assistant turn has {size} characters (minimum {limits.min_response_chars})"
    return None


def length(record: dict[str, Any], limits: Limits) -> str | None:
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


def _count(text: str, limits: Limits) -> int:
    if not limits.tokenizer:
        return len(text)
    if limits.tokenizer not in _TOKENIZERS:
        from transformers import AutoTokenizer

        _TOKENIZERS[limits.tokenizer] = AutoTokenizer.from_pretrained(limits.tokenizer)
    return len(_TOKENIZERS[limits.tokenizer](text, add_special_tokens=False)["input_ids"])


def refusal(record: dict[str, Any], limits: Limits) -> str | None:
    match = REFUSALS.search(response_text(record))
    return f"refusal or AI disclaimer: {match.group(0)!r}" if match else None


def echo(record: dict[str, Any], limits: Limits) -> str | None:
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


def repetition(record: dict[str, Any], limits: Limits) -> str | None:
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


def code_fences(record: dict[str, Any], limits: Limits) -> str | None:
    fences = len(re.findall(r"^\s*```", response_text(record), re.MULTILINE))
    return f"unbalanced code fences ({fences} ``` lines)" if fences % 2 else None


def truncated(record: dict[str, Any], limits: Limits) -> str | None:
    text = response_text(record).rstrip()
    if not text:
        return None
    if text[-1] in ",:;([{" or (text[-1] == "-" and not text.endswith("--")):
        return f"response ends mid-sentence ({text[-20:]!r})"
    last = re.findall(r"\w+", text[-20:].lower())
    if last and last[-1] in TRAILING_WORDS and text[-1].isalpha():
        return f"response ends on {last[-1]!r}"
    return None


def language(record: dict[str, Any], limits: Limits) -> str | None:
    from langdetect import DetectorFactory, LangDetectException, detect

    DetectorFactory.seed = 0  # langdetect is random without a seed
    text = (prompt_text(record) + "\n" + response_text(record)).strip()
    if len(_words(text)) < 3:
        return None  # too short to tell
    try:
        found = detect(text)
    except LangDetectException:
        return None
    if found.split("-")[0] not in limits.languages:
        return f"language {found!r}, not {', '.join(limits.languages)}"
    return None


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


Rule = Callable[[dict[str, Any], Limits], "str | None"]
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
DEFAULT_RULES = ("empty_response", "length", "refusal", "echo", "repetition", "code_fences", "truncated")


def parse_rules(names: str | None) -> tuple[str, ...]:
    if not names:
        return DEFAULT_RULES
    chosen = tuple(n.strip() for n in names.split(",") if n.strip())
    unknown = [n for n in chosen if n not in RULES]
    if unknown:
        raise FilterError(f"unknown rule {', '.join(unknown)}; rules: {', '.join(RULES)}")
    return chosen


def check(record: dict[str, Any], rules: tuple[str, ...], limits: Limits) -> list[tuple[str, str]]:
    """(rule, reason) for every rule the record fails."""
    return [(name, reason) for name in rules if (reason := RULES[name](record, limits)) is not None]


# --- the file-to-file API --------------------------------------------------------------


@dataclass
class Summary:
    input: str
    output: str
    rejects_path: str | None
    rules: tuple[str, ...]
    annotate: bool
    read: int = 0
    written: int = 0
    rejected: int = 0
    by_rule: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def check(self) -> None:
        assert self.read == self.written + self.rejected, self

    def text(self) -> str:
        verb = "flagged" if self.annotate else "rejected"
        lines = [
            f"{self.input} -> {self.output}",
            f"rules: {', '.join(self.rules)}",
            f"records: read {self.read} = written {self.written} + rejected {self.rejected}",
        ]
        for rule, n in self.by_rule.most_common():
            lines.append(f"  {n:>8}  {verb} by {rule}")
        if self.rejects_path and not self.annotate:
            lines.append(f"rejects: {self.rejects_path}")
        lines.append(f"time: {self.seconds:.1f}s")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def filter_file(
    input: str | Path,
    output: str | Path,
    *,
    rules: tuple[str, ...] = DEFAULT_RULES,
    limits: Limits | None = None,
    rejects: str | Path | None = None,
    annotate: bool = False,
    to: str | None = None,
    from_format: str | None = None,
    read_options: ReadOptions | None = None,
) -> Summary:
    """Apply the rules to every record of ``input``; see the module docstring."""
    limits = limits or Limits()
    started = time.perf_counter()
    fmt, _, outcomes = open_records(input, from_format, read_options)
    # the annotations live in meta, which only the canonical record can hold
    target = formats.get(to or ("canonical" if annotate else fmt))
    rejects = rejects if rejects is not None else f"{output}.rejects.jsonl"
    summary = Summary(str(input), str(output), str(rejects), rules, annotate)
    write_options = formats.WriteOptions()
    with RowWriter(output, target.SCHEMA) as writer, RowWriter(rejects, REJECTS_SCHEMA, kind="jsonl") as bad:
        for outcome in outcomes:
            if isinstance(outcome, Rejected):
                raise FilterError(f"{outcome.row.where()}: {outcome.reason}")
            if isinstance(outcome, Skipped) or not isinstance(outcome, Read):
                continue
            record = outcome.record
            summary.read += 1
            failed = check(record, rules, limits)
            summary.by_rule.update(rule for rule, _ in failed)
            if annotate:
                record["meta"]["filter"] = {rule: reason for rule, reason in failed}
                record["meta"]["score"] = round(1 - len(failed) / len(rules), 4)
            elif failed:
                rule, reason = failed[0]
                row = {"stage": "filter", **outcome.row.location(), "rule": rule, "reason": reason}
                bad.write({**row, "failed": [r for r, _ in failed], "record": record})
                summary.rejected += 1
                continue
            try:
                writer.write(target.write(record, write_options))
            except RecordError as exc:
                raise FilterError(f"{outcome.row.where()}: cannot be written as {target.NAME}: {exc}") from None
            summary.written += 1
    summary.seconds = time.perf_counter() - started
    summary.check()
    return summary
