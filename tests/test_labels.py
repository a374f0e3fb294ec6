"""Token-exact labels on real multi-turn fixtures, for every template, with the embedded model's tokenizer."""

from __future__ import annotations

import json

import pytest
from conftest import fixture_path

import datakit
from train.labels import IGNORE, tokenize, trained_spans
from train.templates import TEMPLATES, TemplateError, assistant_text

SHAREGPT = list(datakit.read_records(fixture_path("axolotl/conversation.json")))
OPENAI = list(datakit.read_records(fixture_path("openai-messages/stock_toolcall_training.jsonl")))[:20]
CHAT_TINY = list(datakit.read_records(fixture_path("torchtune/chat_tiny.json")))
ALPACA = list(datakit.read_records(fixture_path("axolotl/alpaca.json")))


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from datakit.models import resolve_llm

    return AutoTokenizer.from_pretrained(resolve_llm("smollm2-135m"))


def end_marker(template: str, tokenizer) -> str:
    return "<|im_end|>" if template in ("chatml", "tokenizer") else tokenizer.eos_token


def lead(template: str) -> str:
    """vicuna and llama2 put a space between the prompt and the answer, trained with the answer."""
    return " " if template in ("vicuna", "llama2") else ""


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("records", [SHAREGPT, CHAT_TINY, ALPACA], ids=["axolotl-sharegpt", "torchtune-chat", "alpaca"])
def test_labels_are_exactly_each_assistant_turn_plus_eos(records, template: str, tokenizer) -> None:
    for record in records:
        example = tokenize(record, tokenizer, template)
        assert len(example.input_ids) == len(example.labels)
        decoded = [tokenizer.decode(run) for run in trained_spans(example)]
        expected = [
            lead(template) + assistant_text(m) + end_marker(template, tokenizer)
            for m in record["messages"]
            if m["role"] == "assistant"
        ]
        assert decoded == expected
        # and nothing else is trained: the prompt tokens are all -100
        assert sum(label != IGNORE for label in example.labels) == sum(len(r) for r in trained_spans(example))


@pytest.mark.parametrize("template", ["tokenizer", "chatml"])
def test_tool_call_turns_are_trained_as_their_call_text(template: str, tokenizer) -> None:
    for record in OPENAI:
        decoded = [tokenizer.decode(run) for run in trained_spans(tokenize(record, tokenizer, template))]
        expected = [assistant_text(m) + "<|im_end|>" for m in record["messages"] if m["role"] == "assistant"]
        assert decoded == expected
        assert all(
            "<tool_call>" in d
            for d, m in zip(decoded, [m for m in record["messages"] if m["role"] == "assistant"], strict=True)
            if m["tool_calls"]
        )


def test_last_turn_only_and_truncation(tokenizer) -> None:
    record = SHAREGPT[0]
    last = tokenize(record, tokenizer, "chatml", train_on="last")
    assistant = [m for m in record["messages"] if m["role"] == "assistant"]
    assert [tokenizer.decode(r) for r in trained_spans(last)] == [assistant_text(assistant[-1]) + "<|im_end|>"]
    full = tokenize(record, tokenizer, "chatml")
    cut = tokenize(record, tokenizer, "chatml", max_length=len(full.input_ids) // 2)
    assert len(cut.input_ids) == len(full.input_ids) // 2 and cut.labels == full.labels[: len(cut.labels)]
    first_trained = next(i for i, label in enumerate(full.labels) if label != IGNORE)
    assert tokenize(record, tokenizer, "chatml", max_length=first_trained) == "no trained token within max_length"


def test_templates_without_tool_turns_say_so(tokenizer) -> None:
    glaive = datakit.read_records(fixture_path("llama-factory/glaive_toolcall_en_demo.json"))
    with_tool = next(r for r in glaive if any(m["role"] == "tool" for m in r["messages"]))
    decoded = [tokenizer.decode(run) for run in trained_spans(tokenize(with_tool, tokenizer, "chatml"))]
    assert len(decoded) == sum(m["role"] == "assistant" for m in with_tool["messages"])
    with pytest.raises(TemplateError, match="no place for a tool turn"):
        tokenize(with_tool, tokenizer, "alpaca")


@pytest.mark.parametrize("template", TEMPLATES)
def test_generation_prompt_is_the_rendered_text_up_to_the_last_answer(template: str, tokenizer) -> None:
    from train.templates import prompt, render

    for record in SHAREGPT + ALPACA:
        if record["messages"][-1]["role"] != "assistant":
            continue
        rendered = render(record, template, tokenizer)
        asked = prompt({**record, "messages": record["messages"][:-1]}, template, tokenizer)
        assert rendered.text.startswith(asked), template
        assert len(asked) == rendered.spans[-1][0]  # the answer (and only it) follows the prompt


# --- tools reach the prompt (issue 16): the functions a call was allowed to use are shown, never trained

GLAIVE = [r for r in datakit.read_records(fixture_path("llama-factory/glaive_toolcall_en_demo.json")) if r["tools"]]
OPENAI_TOOLS = [r for r in datakit.read_records(fixture_path("openai-messages/stock_toolcall_training.jsonl"))
                if r["tools"]]  # fmt: skip
# A chat template that renders ``tools`` itself (as Qwen2.5's and Llama 3.1's do), for the
# tokenizer path that hands the tools to ``apply_chat_template``.
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nFunctions:\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}<|im_end|>\n"
    "{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def renders_templates(record: dict) -> list[str]:
    """The templates that can render this record (only chatml and the tokenizer's have tool turns)."""
    with_tool_turns = any(m["role"] == "tool" for m in record["messages"])
    return ["tokenizer", "chatml"] if with_tool_turns else list(TEMPLATES)


def tool_texts(record: dict) -> list[str]:
    """What must be shown of each tool: its name, its description and its parameters' schema."""
    out = []
    for tool in record["tools"]:
        function = tool.get("function", tool)
        out += [function["name"], function.get("description", ""), json.dumps(function.get("parameters"))[1:-1]]
    return [t for t in out if t]


@pytest.mark.parametrize("records", [GLAIVE, OPENAI_TOOLS], ids=["glaive", "openai"])
def test_tools_are_rendered_in_the_prompt_and_never_trained(records, tokenizer) -> None:
    from train.templates import prompt, render

    checked = 0
    for record in records:
        for template in renders_templates(record):
            rendered = render(record, template, tokenizer)
            first_answer = rendered.spans[0][0]
            for text in tool_texts(record):
                assert text in rendered.text[:first_answer], (template, text)
            example = tokenize(record, tokenizer, template)
            trained = tokenizer.decode([t for t in example.labels if t != IGNORE])
            assert all(text not in trained for text in tool_texts(record) if len(text) > 30), template
            expected = [lead(template) + assistant_text(m) + end_marker(template, tokenizer)
                        for m in record["messages"] if m["role"] == "assistant"]  # fmt: skip
            assert [tokenizer.decode(run) for run in trained_spans(example)] == expected, template
            # evaluation renders the same tools: the generation prompt shows them too
            asked = prompt({**record, "messages": record["messages"][:1]}, template, tokenizer)
            assert all(text in asked for text in tool_texts(record)), template
            checked += 1
    assert checked >= len(records) * 2


def test_a_tokenizer_template_that_renders_tools_gets_them_as_its_argument(tokenizer) -> None:
    from transformers import AutoTokenizer

    from datakit.models import resolve_llm
    from train.templates import TOOLS_INTRO, render

    own = AutoTokenizer.from_pretrained(resolve_llm("smollm2-135m"))
    own.chat_template = TOOLS_TEMPLATE
    record = OPENAI_TOOLS[0]
    text = render(record, "tokenizer", own).text
    assert text.startswith("<|im_start|>system\nFunctions:\n") and TOOLS_INTRO not in text  # its own rendering
    assert all(json.dumps(t) in text for t in record["tools"])
    # SmolLM2's own template ignores tools: datakit puts its tools block in the system message instead
    assert TOOLS_INTRO in render(record, "tokenizer", tokenizer).text
    no_tools = render({**record, "tools": None}, "tokenizer", tokenizer).text
    assert TOOLS_INTRO not in no_tools and "get_last_nday_stock_price" not in no_tools.split("<|im_start|>user")[0]
