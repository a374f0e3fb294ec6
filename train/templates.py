"""Chat templates, and which characters of a rendered conversation the model learns.

A template turns a canonical record into one text plus the character spans of what is
trained: every assistant turn's content and the end-of-turn token after it (EOS), or only
the last turn. Labels then follow from the tokenizer's offsets (train.labels), so they are
exact for any tokenizer.

- ``tokenizer``: the tokenizer's own chat template (Jinja). The spans are found by rendering
  the conversation with and without each assistant turn and taking the difference (the way
  Axolotl does), so no ``{% generation %}`` markers are needed.
- ``chatml``, ``alpaca`` (Stanford's two prompts), ``vicuna`` (v1.1), ``llama2`` (``[INST]``)
  and ``plain`` are written here, so their spans are known as the text is built.

The template name is saved with an adapter so evaluation renders prompts the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from datakit.errors import DatakitError

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


class TemplateError(DatakitError, ValueError):
    """A record the template cannot render, or a tokenizer template that is not prefix-stable."""


@dataclass
class Rendered:
    text: str
    spans: list[tuple[int, int]] = field(default_factory=list)  # [start, end) characters to train on


def assistant_text(message: dict[str, Any]) -> str:
    """An assistant turn as text; tool calls are written as <tool_call>{json}</tool_call>."""
    parts = [message["content"]] if message.get("content") else []
    for call in message.get("tool_calls") or []:
        try:
            arguments = json.loads(call["arguments"])
        except (TypeError, ValueError):
            arguments = call["arguments"]
        parts.append(
            f"<tool_call>{json.dumps({'name': call['name'], 'arguments': arguments}, ensure_ascii=False)}</tool_call>"
        )
    return "\n".join(parts)


class _Builder:
    """Appends text, recording the spans that are trained."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.spans: list[tuple[int, int]] = []

    def add(self, text: str, train: bool = False) -> None:
        if train and text:
            self.spans.append((self.size, self.size + len(text)))
        self.parts.append(text)
        self.size += len(text)

    def done(self) -> Rendered:
        return Rendered("".join(self.parts), self.spans)


def _turns(record: dict[str, Any], allowed: tuple[str, ...]) -> list[dict[str, Any]]:
    for i, m in enumerate(record["messages"]):
        if m["role"] not in allowed:
            raise TemplateError(f"message {i}: this template has no place for a {m['role']} turn")
    return record["messages"]


def chatml(record: dict[str, Any], eos: str) -> Rendered:
    out = _Builder()
    if record.get("system"):
        out.add(f"<|im_start|>system\n{record['system']}<|im_end|>\n")
    for m in record["messages"]:
        if m["role"] == "assistant":
            out.add("<|im_start|>assistant\n")
            out.add(assistant_text(m) + "<|im_end|>", train=True)
            out.add("\n")
        else:
            out.add(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
    return out.done()


def alpaca(record: dict[str, Any], eos: str) -> Rendered:
    out = _Builder()
    input_text = (record.get("meta") or {}).get("alpaca_input")
    for m in _turns(record, ("user", "assistant")):
        if m["role"] == "user":
            content = m["content"]
            if input_text and content.endswith(input_text) and len(record["messages"]) == 2:
                instruction = content[: len(content) - len(input_text)].rstrip("\n")
                out.add(ALPACA_WITH_INPUT.format(instruction=instruction, input=input_text))
            else:
                out.add(ALPACA_NO_INPUT.format(instruction=content))
        else:
            out.add(assistant_text(m) + eos, train=True)
            out.add("\n\n")
    return out.done()


def vicuna(record: dict[str, Any], eos: str) -> Rendered:
    out = _Builder()
    out.add((record.get("system") or VICUNA_SYSTEM) + " ")
    for m in _turns(record, ("user", "assistant")):
        if m["role"] == "user":
            out.add(f"USER: {m['content']} ASSISTANT:")
        else:  # the space before the answer is trained: BPE tokenizers fold it into the first word
            out.add(" " + assistant_text(m) + eos, train=True)
    return out.done()


def llama2(record: dict[str, Any], eos: str) -> Rendered:
    out = _Builder()
    system = f"<<SYS>>\n{record['system']}\n<</SYS>>\n\n" if record.get("system") else ""
    for i, m in enumerate(_turns(record, ("user", "assistant"))):
        if m["role"] == "user":
            out.add(f"[INST] {system if i == 0 else ''}{m['content']} [/INST]")
        else:  # as in vicuna, the space before the answer goes with the answer's first token
            out.add(" " + assistant_text(m) + eos, train=True)
            out.add(" ")
    return out.done()


def plain(record: dict[str, Any], eos: str) -> Rendered:
    out = _Builder()
    if record.get("system"):
        out.add(record["system"] + "\n\n")
    for m in _turns(record, ("user", "assistant")):
        if m["role"] == "user":
            out.add(m["content"] + "\n")
        else:
            out.add(assistant_text(m) + eos, train=True)
            out.add("\n")
    return out.done()


def from_tokenizer(record: dict[str, Any], tokenizer: Any) -> Rendered:
    """The tokenizer's own template; spans by rendering with and without each assistant turn."""
    messages = to_chat_messages(record)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    eos = tokenizer.eos_token or ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not full.startswith(upto) or not upto.startswith(before):
            raise TemplateError("the tokenizer's chat template is not prefix-stable; pick a named template")
        start = len(before)
        if not upto[start:].startswith(m["content"]):
            raise TemplateError(f"message {i}: the template changes the assistant text; pick a named template")
        end = start + len(m["content"])
        if eos and upto[end:].startswith(eos):
            end += len(eos)  # the end-of-turn token is trained, so the model learns to stop
        spans.append((start, end))
    return Rendered(full, spans)


def to_chat_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    """The record as plain role/content messages, for a tokenizer's chat template."""
    out = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    for m in record["messages"]:
        content = assistant_text(m) if m["role"] == "assistant" else (m["content"] or "")
        out.append({"role": m["role"], "content": content})
    return out


NAMED: dict[str, Callable[[dict[str, Any], str], Rendered]] = {
    "chatml": chatml,
    "alpaca": alpaca,
    "vicuna": vicuna,
    "llama2": llama2,
    "plain": plain,
}
TEMPLATES = ("tokenizer", *NAMED)


def render(record: dict[str, Any], template: str, tokenizer: Any, train_on: str = "all") -> Rendered:
    """The record as text with its trained spans; ``train_on`` "last" keeps only the last turn's."""
    if template == "tokenizer":
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError("the tokenizer has no chat template; pick one of " + ", ".join(NAMED))
        rendered = from_tokenizer(record, tokenizer)
    elif template in NAMED:
        rendered = NAMED[template](record, tokenizer.eos_token or "")
    else:
        raise TemplateError(f"unknown template {template!r}; templates: {', '.join(TEMPLATES)}")
    if train_on == "last":
        rendered.spans = rendered.spans[-1:]
    elif train_on != "all":
        raise TemplateError(f"train_on must be all or last, not {train_on!r}")
    return rendered


_SENTINEL = "\ue000"  # a private-use character: never in real text, marks where the answer would start


def prompt(record: dict[str, Any], template: str, tokenizer: Any) -> str:
    """The text a model continues to answer the record's last user turn (for generation and evals)."""
    if template == "tokenizer":
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError("the tokenizer has no chat template; pick one of " + ", ".join(NAMED))
        return tokenizer.apply_chat_template(to_chat_messages(record), tokenize=False, add_generation_prompt=True)
    if template not in NAMED:
        raise TemplateError(f"unknown template {template!r}; templates: {', '.join(TEMPLATES)}")
    with_answer = {**record, "messages": [*record["messages"], {"role": "assistant", "content": _SENTINEL}]}
    rendered = NAMED[template](with_answer, tokenizer.eos_token or "")
    start = rendered.text.rindex(_SENTINEL)
    if rendered.spans and rendered.spans[-1][0] < start:  # vicuna/llama2 train the space before the answer
        start = rendered.spans[-1][0]
    return rendered.text[:start]
