"""Token ids and labels: every token that is not a trained span is -100.

The rendered text is tokenized once, with character offsets; a token is trained when it
starts inside a span from train.templates. This works for any fast tokenizer and any
template, with no ``{% generation %}`` markers. A record whose trained tokens are all cut
off by ``max_length`` is dropped and counted (it would teach nothing).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from train.templates import render

IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


@dataclass
class Tokenized:
    examples: list[Example] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)  # reason -> records
    kept: list[int] = field(default_factory=list)  # the record each example was made from (its index)


def tokenize(record: dict[str, Any], tokenizer: Any, template: str = "tokenizer", train_on: str = "all",
             max_length: int | None = None) -> Example | str:  # fmt: skip
    """The record's ids and labels, or the reason it cannot be trained on."""
    rendered = render(record, template, tokenizer, train_on)
    encoded = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    labels = [IGNORE] * len(ids)
    spans = rendered.spans
    k = 0
    for t, (start, end) in enumerate(offsets):
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        if k < len(spans) and spans[k][0] <= start < spans[k][1] and end > start:
            labels[t] = ids[t]
    if max_length is not None and len(ids) > max_length:
        ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE for label in labels):
        return "no trained token within max_length" if max_length else "no assistant turn to train on"
    return Example(ids, labels)


def tokenize_all(records: list[dict[str, Any]], tokenizer: Any, template: str = "tokenizer", train_on: str = "all",
                 max_length: int | None = None) -> Tokenized:  # fmt: skip
    out = Tokenized()
    for index, record in enumerate(records):
        result = tokenize(record, tokenizer, template, train_on, max_length)
        if isinstance(result, str):
            out.dropped[result] += 1
        else:
            out.examples.append(result)
            out.kept.append(index)
    return out


def trained_spans(example: Example) -> list[list[int]]:
    """The runs of trained token ids (for tests and inspection)."""
    runs, current = [], []
    for token, label in zip(example.input_ids, example.labels, strict=True):
        if label == IGNORE:
            if current:
                runs.append(current)
                current = []
        else:
            current.append(token)
    if current:
        runs.append(current)
    return runs
