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

A record's ``tools`` (the function schemas its calls were allowed to use) are part of the
prompt, never trained: a model must see the functions it learns to call. The tokenizer's
template gets them through ``apply_chat_template(..., tools=...)``; where that template has no
place for tools (SmolLM2's ignores them), and in the named templates, they are the
Hermes/Qwen2.5 block (``tools_block``) at the end of the system prompt (before the first
prompt in ``alpaca``, which has none), the block LLaMA-Factory's ``qwen`` tool format writes.
Assistant tool calls are written as that block asks: ``<tool_call>{json}</tool_call>``.

The template name is saved with an adapter so evaluation renders prompts the same way.
"""

from __future__ import annotations

import json
import weakref
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


TOOLS_INTRO = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
)
TOOLS_OUTRO = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>"
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


def tool_schemas(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The record's tools as OpenAI-style ``{"type": "function", "function": {...}}`` schemas
    (glaive and ShareGPT give the bare function; OpenAI gives it wrapped)."""
    return [t if isinstance(t, dict) and "function" in t else {"type": "function", "function": t}
            for t in record.get("tools") or []]  # fmt: skip


def tools_block(record: dict[str, Any]) -> str:
    """The Hermes/Qwen2.5 system-prompt block naming the record's tools ("" when it has none)."""
    schemas = tool_schemas(record)
    if not schemas:
        return ""
    return TOOLS_INTRO + "\n".join(json.dumps(t, ensure_ascii=False) for t in schemas) + TOOLS_OUTRO


def system_text(record: dict[str, Any], default: str | None = None) -> str | None:
    """The system prompt a named template writes: the record's (or the template's default),
    then the tools block."""
    system, tools = record.get("system") or default, tools_block(record)
    if not tools:
        return system
    return f"{system}\n\n{tools}" if system else tools


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
    if system := system_text(record):
        out.add(f"<|im_start|>system\n{system}<|im_end|>\n")
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
    if tools := tools_block(record):  # Alpaca's prompt has no system part: the tools come first
        out.add(tools + "\n\n")
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
    out.add(system_text(record, VICUNA_SYSTEM) + " ")
    for m in _turns(record, ("user", "assistant")):
        if m["role"] == "user":
            out.add(f"USER: {m['content']} ASSISTANT:")
        else:  # the space before the answer is trained: BPE tokenizers fold it into the first word
            out.add(" " + assistant_text(m) + eos, train=True)
    return out.done()


def llama2(record: dict[str, Any], eos: str) -> Rendered:
    out = _Builder()
    system = f"<<SYS>>\n{text}\n<</SYS>>\n\n" if (text := system_text(record)) else ""
    for i, m in enumerate(_turns(record, ("user", "assistant"))):
        if m["role"] == "user":
            out.add(f"[INST] {system if i == 0 else ''}{m['content']} [/INST]")
        else:  # as in vicuna, the space before the answer goes with the answer's first token
            out.add(" " + assistant_text(m) + eos, train=True)
            out.add(" ")
    return out.done()


def plain(record: dict[str, Any], eos: str) -> Rendered:
    out = _Builder()
    if system := system_text(record):
        out.add(system + "\n\n")
    for m in _turns(record, ("user", "assistant")):
        if m["role"] == "user":
            out.add(m["content"] + "\n")
        else:
            out.add(assistant_text(m) + eos, train=True)
            out.add("\n")
    return out.done()


def from_tokenizer(record: dict[str, Any], tokenizer: Any) -> Rendered:
    """The tokenizer's own template; spans by rendering with and without each assistant turn."""
    messages, tools = chat_input(record, tokenizer)
    full = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    spans = []
    eos = tokenizer.eos_token or ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tools=tools, tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[: i + 1], tools=tools, tokenize=False)
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


_RENDERS_TOOLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> bool


def renders_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template writes the ``tools`` it is given (many ignore them)."""
    if tokenizer not in _RENDERS_TOOLS:
        probe = [{"role": "user", "content": "hi"}]
        tool = {"type": "function", "function": {"name": "datakit_probe_tool", "description": "d", "parameters": {}}}
        try:
            text = tokenizer.apply_chat_template(probe, tools=[tool], tokenize=False)
        except Exception:  # a template that fails on tools cannot render them  # noqa: BLE001
            text = ""
        _RENDERS_TOOLS[tokenizer] = "datakit_probe_tool" in text
    return _RENDERS_TOOLS[tokenizer]


def chat_input(record: dict[str, Any], tokenizer: Any) -> tuple[list[dict[str, str]], list[dict] | None]:
    """(messages, tools) for the tokenizer's template: the tools through its own ``tools``
    argument when it renders them, else as the tools block in the system message."""
    if not record.get("tools"):
        return to_chat_messages(record), None
    if renders_tools(tokenizer):
        return to_chat_messages(record), tool_schemas(record)
    messages = to_chat_messages(record)
    if messages and messages[0]["role"] == "system":
        messages[0] = {"role": "system", "content": system_text(record)}
    else:
        messages.insert(0, {"role": "system", "content": tools_block(record)})
    return messages, None


def to_chat_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    """The record as plain role/content messages, for a tokenizer's chat template (tools not included)."""
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
        messages, tools = chat_input(record, tokenizer)
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    if template not in NAMED:
        raise TemplateError(f"unknown template {template!r}; templates: {', '.join(TEMPLATES)}")
    with_answer = {**record, "messages": [*record["messages"], {"role": "assistant", "content": _SENTINEL}]}
    rendered = NAMED[template](with_answer, tokenizer.eos_token or "")
    start = rendered.text.rindex(_SENTINEL)
    if rendered.spans and rendered.spans[-1][0] < start:  # vicuna/llama2 train the space before the answer
        start = rendered.spans[-1][0]
    return rendered.text[:start]
