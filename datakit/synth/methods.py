"""The synth methods, each after its paper, with prompts kept as templates in ``prompts/``.

Every method takes canonical records and the client, and returns a MethodResult: the records
kept, and every generation dropped with its reason (nothing is dropped silently). Each
request's seed is derived from the run's seed and the request's place (record, round, step),
so a rerun sends the same requests, finds them in the cache, and gives the same output.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from datakit.record import message, new_record
from datakit.synth.client import Client, Request
from datakit.synth.parse import RougePool, parse_instance, parse_score, parse_tasks, tokens

if TYPE_CHECKING:
    from datakit.synth.step import SynthConfig


@dataclass
class MethodResult:
    kept: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)  # {"reason", "record" or "text", "parent"}
    generated: int = 0  # generations made (kept + dropped among them)
    parse_failures: int = 0
    pending: int = 0  # left undone because a budget or request limit stopped the run


def template(name: str) -> str:
    return (files("datakit.synth") / "prompts" / f"{name}.txt").read_text(encoding="utf-8")


def request_seed(base: int, *place: Any) -> int:
    """A seed for one request, fixed by the run's seed and the request's place in the run."""
    return random.Random(repr((base, *place))).randrange(2**31)


def _prompt(record: dict[str, Any]) -> str:
    return "\n".join(m["content"] or "" for m in record["messages"] if m["role"] == "user")


def _response(record: dict[str, Any]) -> str:
    return "\n".join(m["content"] or "" for m in record["messages"] if m["role"] == "assistant")


def _provenance(record: dict[str, Any], method: str, model: str, **extra: Any) -> dict[str, Any]:
    return {"method": method, "model": model, **extra}


PENDING = "pending"


def _settle(result: MethodResult, answer) -> str | None:
    """None for an answer; PENDING (counted in the result) for a request a limit kept unsent;
    else the error that ended the request."""
    if answer.error and answer.error.startswith("not sent"):
        result.pending += 1
        return PENDING
    return answer.error


# --- judge (AlpaGasus) ----------------------------------------------------------------

# With json_mode the judge answers {"score": 0-5, "reason": "..."} (score first, as the prompt
# asks): a server that follows the schema cannot give an unreadable score.
JUDGE_SCHEMA = json.dumps({
    "type": "object",
    "properties": {"score": {"type": "number", "minimum": 0, "maximum": 5}, "reason": {"type": "string", "maxLength": 300}},
    "required": ["score", "reason"],
    "additionalProperties": False,
})  # fmt: skip


def parse_judge(text: str) -> float | None:
    """The score of a judge answer: the JSON one's ``score``, else the first number on the 0-5 scale.

    The schema puts the score first, so an answer cut off by ``max_tokens`` in its reason still
    has a readable score."""
    found = re.match(r'\s*\{\s*"score"\s*:\s*(-?\d+(?:\.\d+)?)', text)
    if found:
        score = float(found.group(1))
        return score if 0 <= score <= 5 else None
    return parse_score(text, 0, 5)


def judge(records: list[dict[str, Any]], client: Client, settings: SynthConfig) -> MethodResult:
    """Rate each existing pair 0-5; keep those at or above the threshold (4.5), with meta.score."""
    threshold = 4.5 if settings.threshold is None else settings.threshold
    prompts = template("judge")
    requests = [
        Request(
            "judge",
            (("user", prompts.format(instruction=_prompt(r), input="", response=_response(r))),),
            max_tokens=min(settings.max_tokens, 64),
            temperature=0.0,
            seed=request_seed(settings.seed, r["id"], i),
            json_mode=settings.json_mode,
            schema=JUDGE_SCHEMA if settings.json_mode else None,
        )  # fmt: skip
        for i, r in enumerate(records)
    ]
    result = MethodResult()
    for record, answer in zip(records, client.ask(requests), strict=True):
        problem = _settle(result, answer)
        if problem == PENDING:
            continue
        result.generated += 1
        meta = record["meta"]
        if problem:
            result.dropped.append({"reason": f"judge request failed: {problem}", "record": record})
            continue
        score = parse_judge(answer.text)
        meta["judge"] = _provenance(record, "judge", client.settings.model, raw=answer.text, threshold=threshold)
        if score is None:
            result.parse_failures += 1
            result.dropped.append({"reason": f"unreadable judge answer: {answer.text[:200]!r}", "record": record})
            continue
        meta["score"] = score
        if score >= threshold:
            result.kept.append(record)
        else:
            result.dropped.append({"reason": f"judge score {score:g} below {threshold:g}", "record": record})
    return result


# --- backtranslate (Humpback) ---------------------------------------------------------


def backtranslate(records: list[dict[str, Any]], client: Client, settings: SynthConfig) -> MethodResult:
    """Write an instruction for each response, then self-curate on the 1-5 rubric (keep >= 4)."""
    threshold = 4.0 if settings.threshold is None else settings.threshold
    model = client.settings.model
    write = template("backtranslate_instruction")
    requests = [
        Request(
            "backtranslate",
            (("user", write.format(response=_response(r))),),
            max_tokens=settings.max_tokens,
            temperature=settings.temperature,
            seed=request_seed(settings.seed, r["id"], "instruction"),
        )  # fmt: skip
        for r in records
    ]
    result = MethodResult()
    candidates = []
    for record, answer in zip(records, client.ask(requests), strict=True):
        problem = _settle(result, answer)
        if problem == PENDING:
            continue
        result.generated += 1
        instruction = (answer.text or "").strip().strip('"').strip()
        if problem or not instruction:
            result.dropped.append(
                {"reason": f"no instruction written: {problem or 'empty answer'}", "parent": record["id"]}
            )
            continue
        candidates.append((record, instruction))
    curate = template("backtranslate_curate")
    requests = [
        Request(
            "backtranslate-curate",
            (("user", curate.format(instruction=ins, response=_response(r))),),
            max_tokens=settings.max_tokens,
            temperature=0.0,
            seed=request_seed(settings.seed, r["id"], "curate"),
        )  # fmt: skip
        for r, ins in candidates
    ]
    for (record, instruction), answer in zip(candidates, client.ask(requests), strict=True):
        problem = _settle(result, answer)
        if problem == PENDING:
            continue
        score = parse_score(answer.text, 1, 5) if not problem else None
        made = new_record(
            [message("user", instruction), message("assistant", _response(record))],
            meta={
                "synth": _provenance(
                    record, "backtranslate", model, parent=record["id"], curation=answer.text, score=score
                )
            },  # fmt: skip
        )
        if score is None:
            result.parse_failures += not problem
            reason = (
                f"curation failed: {problem}" if problem else f"unreadable curation: {(answer.text or '')[-200:]!r}"
            )
            result.dropped.append({"reason": reason, "record": made})
        elif score >= threshold:
            made["meta"]["score"] = score
            result.kept.append(made)
        else:
            result.dropped.append({"reason": f"curation score {score:g} below {threshold:g}", "record": made})
    return result


# --- self-instruct --------------------------------------------------------------------

BANNED = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw",
          "plot", "go to", "video", "audio", "music", "flowchart", "diagram")  # fmt: skip


def _instruction_problem(text: str, pool: RougePool) -> str | None:
    words = tokens(text)
    if not 3 <= len(words) <= 150:
        return f"length {len(words)} words (3-150)"
    lowered = f" {' '.join(words)} "
    banned = [w for w in BANNED if f" {w} " in lowered]
    if banned:
        return f"banned word {banned[0]!r}"
    if text[0].isascii() and not text[0].isalnum():
        return "starts with punctuation"
    similarity = pool.best(text)
    if similarity > 0.7:
        return f"ROUGE-L {similarity:.2f} to a kept instruction (> 0.7)"
    return None


def self_instruct(records: list[dict[str, Any]], client: Client, settings: SynthConfig) -> MethodResult:
    """Seed tasks -> new instructions (8 in context: 6 seeds, 2 generated), filtered, then answered."""
    rng = random.Random(settings.seed)
    model = client.settings.model
    seeds = [_prompt(r) for r in records]
    pool = RougePool()
    for s in seeds:
        pool.add(s)
    generated: list[str] = []
    result = MethodResult()
    batch = max(1, min(4, settings.count))
    for round_ in range(settings.rounds):
        if len(generated) >= settings.count:
            break
        requests = []
        for k in range(batch):
            examples = rng.sample(seeds, min(6, len(seeds))) + rng.sample(generated, min(2, len(generated)))
            lines = "\n".join(f"Task {i + 1}: {e.splitlines()[0]}" for i, e in enumerate(examples))
            prompt = f"Come up with a series of tasks:\n\n{lines}\nTask {len(examples) + 1}:"
            requests.append(Request("self-instruct", (("user", prompt),), max_tokens=settings.max_tokens,
                                    temperature=settings.temperature, seed=request_seed(settings.seed, round_, k)))  # fmt: skip
        for answer, request in zip(client.ask(requests), requests, strict=True):
            problem = _settle(result, answer)
            if problem == PENDING:
                continue
            number = request.messages[0][1].rsplit("Task ", 1)[1].split(":")[0]
            tasks = parse_tasks(f"Task {number}: {answer.text or ''}") if not problem else []
            if not tasks:
                result.parse_failures += not problem
                result.dropped.append({"reason": f"no task read: {problem or repr((answer.text or '')[:200])}"})
                continue
            for task in tasks:
                result.generated += 1
                reason = _instruction_problem(task, pool)
                if reason:
                    result.dropped.append({"reason": reason, "text": task, "round": round_})
                    continue
                pool.add(task)
                generated.append(task)
    instance_prompt = ("Write an example for the following task. If the task needs an input, write it after "
                       "'Input:', else write 'Input: <noinput>'. Then write the answer after 'Output:'.\n\n"
                       "Task: {task}\nInput:")  # fmt: skip
    requests = [
        Request(
            "self-instruct-instance",
            (("user", instance_prompt.format(task=t)),),
            max_tokens=settings.max_tokens,
            temperature=settings.temperature,
            seed=request_seed(settings.seed, "instance", t),
        )  # fmt: skip
        for t in generated
    ]
    for task, answer in zip(generated, client.ask(requests), strict=True):
        problem = _settle(result, answer)
        if problem == PENDING:
            continue
        instance = parse_instance("Input:" + (answer.text or "")) if not problem else None
        if instance is None:
            result.parse_failures += not problem
            result.dropped.append({"reason": f"no input/output read: {problem or repr((answer.text or '')[:200])}",
                                   "text": task})  # fmt: skip
            continue
        given, output = instance
        prompt = f"{task}\n{given}" if given else task
        result.kept.append(new_record([message("user", prompt), message("assistant", output)],
                                      meta={"synth": _provenance(None, "self-instruct", model, instruction=task,
                                                                 input=given, filters="length,banned,rouge-l<=0.7")}))  # fmt: skip
    return result


# --- evol-instruct (WizardLM) ---------------------------------------------------------

DEPTH = {
    "constraints": "Please add one more constraints/requirements into #The Given Prompt#.",
    "deepen": "If #The Given Prompt# contains inquiries about certain issues, the depth and breadth of the inquiry "
              "can be increased.",
    "concretize": "Please replace general concepts with more specific concepts.",
    "reasoning": "If #The Given Prompt# can be solved with just a few simple thinking processes, you can rewrite it "
                 "to explicitly request multiple-step reasoning.",
    "complicate_input": "Please add a complicated input (data, a table or code) that the prompt must use.",
}  # fmt: skip
COPIED = ("given prompt", "rewritten prompt", "#rewritten prompt#", "created prompt", "#created prompt#")
STOP_WORDS = {"a", "an", "the", "is", "are", "of", "and", "or", "to", "in", "it", "i"}


def _evolve_prompt(kind: str, instruction: str) -> str:
    if kind == "breadth":
        return template("evol_breadth").format(instruction=instruction)
    return template("evol_depth").format(method=DEPTH[kind], instruction=instruction)


def _elimination(parent: str, child: str, response: str, pool_similarity: float) -> str | None:
    """WizardLM's elimination rules, each with its reason."""
    lowered = child.lower()
    if any(c in lowered for c in COPIED):
        return "copies words from the evolving prompt"
    if not child.strip() or tokens(child) == tokens(parent) or pool_similarity >= 0.9:
        return "no information gain over its parent"
    if "sorry" in response.lower() and len(tokens(response)) < 80:
        return "the answer is a short 'sorry': too hard to answer"
    if not [t for t in tokens(response) if t not in STOP_WORDS]:
        return "the answer is only punctuation and stop words"
    return None


def evol(records: list[dict[str, Any]], client: Client, settings: SynthConfig) -> MethodResult:
    """In-depth (5 ways) and in-breadth evolution, several rounds, each evolution answered and checked."""
    model = client.settings.model
    kinds = [*DEPTH, "breadth"]
    current = [(r["id"], _prompt(r)) for r in records]
    result = MethodResult()
    for round_ in range(settings.rounds):
        picks = [random.Random(request_seed(settings.seed, pid, round_)).choice(kinds) for pid, _ in current]
        requests = [
            Request(
                "evol",
                (("user", _evolve_prompt(kind, text)),),
                max_tokens=settings.max_tokens,
                temperature=settings.temperature,
                seed=request_seed(settings.seed, pid, round_, "evolve"),
            )  # fmt: skip
            for (pid, text), kind in zip(current, picks, strict=True)
        ]
        evolved = []
        for (pid, text), kind, answer in zip(current, picks, client.ask(requests), strict=True):
            problem = _settle(result, answer)
            if problem == PENDING:
                continue
            result.generated += 1
            child = re.sub(r"(?i)^#?\s*(rewritten|created) prompt#?\s*:?", "", (answer.text or "").strip()).strip()
            if problem or not child:
                result.dropped.append(
                    {"reason": f"no evolution: {problem or 'empty answer'}", "parent": pid, "round": round_}
                )
                continue
            evolved.append((pid, text, kind, child))
        requests = [
            Request(
                "evol-answer",
                (("user", child),),
                max_tokens=settings.max_tokens,
                temperature=settings.temperature,
                seed=request_seed(settings.seed, pid, round_, "answer"),
            )  # fmt: skip
            for pid, _, _, child in evolved
        ]
        survivors = []
        pool = RougePool()
        for (pid, parent, kind, child), answer in zip(evolved, client.ask(requests), strict=True):
            problem = _settle(result, answer)
            if problem == PENDING:
                continue
            made = new_record([message("user", child), message("assistant", answer.text or "")],
                              meta={"synth": _provenance(None, "evol", model, round=round_ + 1, parent=pid,
                                                         evolution=kind)})  # fmt: skip
            reason = (
                f"answer failed: {problem}"
                if problem
                else _elimination(parent, child, answer.text or "", pool.best(child))
            )
            if reason:
                result.dropped.append({"reason": reason, "record": made, "round": round_})
                continue
            pool.add(child)
            made["meta"]["synth"]["filters"] = "information gain, no sorry, not only stop words, no copied prompt words"
            result.kept.append(made)
            survivors.append((made["id"], child))
        current = survivors
        if not current:
            break
    return result


METHODS = {"self-instruct": self_instruct, "evol": evol, "backtranslate": backtranslate, "judge": judge}
GENERATIVE = ("self-instruct", "evol", "backtranslate")  # make new records; judge passes existing ones on
