"""Quality rules on real fixtures: each rejection named and explained, nothing lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import fixture_path

import datakit
from datakit.embed import resolve_model
from datakit.errors import OptionError, StepError
from datakit.filter import DEFAULT_RULES, FilterConfig, check

ALPACA = fixture_path("llama-factory/alpaca_en_demo.json")


def record(prompt: str, *responses: str) -> dict:
    messages = []
    for i, response in enumerate(responses):
        messages += [datakit.message("user", prompt if i == 0 else "go on"), datakit.message("assistant", response)]
    return datakit.new_record(messages)


TOASTER = "Tell me a story about a brave little toaster"
CASES = [  # rule, a record it must catch, a record it must let through
    ("empty_response", record("Name a colour.", " "), record("Name a colour.", "Blue.")),
    ("refusal", record("Design a logo.", "I'm sorry, but as an AI language model I cannot draw."),
     record("Design a logo.", "A red circle with a white star.")),
    ("echo", record(TOASTER, TOASTER), record(TOASTER, "Once upon a time a toaster saved the kitchen from a fire.")),
    ("repetition", record("Say something.", "I like it. " * 20),
     record("Say something.", "Water boils at one hundred degrees Celsius at sea level, less on a mountain.")),
    ("code_fences", record("Write code.", "```python\nprint(1)\n"), record("Write code.", "```python\nprint(1)\n```")),
    ("truncated", record("List fruits.", "Apples, pears, and"), record("List fruits.", "Apples, pears and plums.")),
    ("length", record("Hi", "x" * 20_000), record("Hi", "Hello there.")),
]  # fmt: skip


@pytest.mark.parametrize(("rule", "bad", "good"), CASES, ids=[c[0] for c in CASES])
def test_each_rule_catches_its_case_and_passes_a_good_one(rule: str, bad: dict, good: dict) -> None:
    limits = FilterConfig()
    failed = check(bad, (rule,), limits)
    assert [r for r, _ in failed] == [rule] and failed[0][1]
    assert check(good, (rule,), limits) == []


def test_rejects_every_refusal_in_the_alpaca_demo_and_accounts_for_all(tmp: Path) -> None:
    rows = json.loads(ALPACA.read_text())
    phrases = ("as an ai", "i am an ai", "i'm an ai", "as a language model")
    disclaimers = [r for r in rows if any(p in r["output"].lower() for p in phrases)]
    summary = datakit.run("filter", ALPACA, tmp / "out.json").report
    rejects = [json.loads(line) for line in Path(summary.side_outputs["rejects"]).read_text().splitlines()]
    written = json.loads((tmp / "out.json").read_text())
    assert summary.read == len(rows) == len(written) + len(rejects)
    assert len(disclaimers) >= 5, len(disclaimers)
    rejected_outputs = {r["record"]["messages"][-1]["content"] for r in rejects}
    assert all(d["output"] in rejected_outputs for d in disclaimers)
    assert all(r["rule"] in DEFAULT_RULES and r["reason"] and "index" in r for r in rejects)
    assert summary.figures["failed refusal"] >= len(disclaimers)


def test_empty_turn_in_a_real_multi_turn_chat() -> None:
    conversation = next(datakit.read_records(fixture_path("axolotl/conversation.missingturns.json")))
    failed = dict(check(conversation, DEFAULT_RULES, FilterConfig()))
    assert failed["empty_response"].startswith("message 1: assistant turn has 0 characters")


def test_annotate_keeps_everything_and_scores(tmp: Path) -> None:
    summary = datakit.run("filter", ALPACA, tmp / "annotated.jsonl", annotate=True).report
    failures = sum(n for key, n in summary.figures.items() if key.startswith("failed "))
    rows = [json.loads(line) for line in (tmp / "annotated.jsonl").read_text().splitlines()]
    assert summary.written == summary.read == len(rows) == 999
    flagged = [r for r in rows if r["meta"]["filter"]]
    assert 0 < len(flagged) <= failures
    assert sum(len(r["meta"]["filter"]) for r in rows) == failures
    assert all(r["meta"]["score"] < 1 for r in flagged)
    assert all(r["meta"]["score"] == 1 for r in rows if not r["meta"]["filter"])


def test_language_rule_and_token_lengths(tmp: Path) -> None:
    chinese = next(datakit.read_records(fixture_path("llama-factory/alpaca_zh_demo.json")))
    english = next(datakit.read_records(ALPACA))
    assert check(chinese, ("language",), FilterConfig())[0][1].startswith("language 'zh")
    assert check(english, ("language",), FilterConfig()) == []
    assert check(chinese, ("language",), FilterConfig(languages=("zh", "en"))) == []
    tokens = FilterConfig(tokenizer=resolve_model(None), max_response=5)  # a real tokenizer, offline
    reason = dict(check(english, ("length",), tokens))["length"]
    assert reason.startswith("response has") and "tokens (maximum 5)" in reason


def test_unknown_rule_and_bad_input_are_clear_errors(tmp: Path) -> None:
    with pytest.raises(OptionError, match="rules: must be one of .*, not 'nonsense'"):
        FilterConfig(rules="refusal,nonsense")
    bad = tmp / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": 3, "output": "b"}\n')
    with pytest.raises(StepError, match=r"bad.jsonl:2: field 'instruction' must be a string"):
        datakit.run("filter", bad, tmp / "out.jsonl")
    assert not (tmp / "out.jsonl").exists()
