"""A recipe: data arms, how each is trained and which tasks score it. Validated before any work.

    name: quickstart
    model: smollm2-135m
    template: chatml
    seeds: [0, 1, 2]
    train: {method: lora, r: 8, alpha: 16, max_steps: 40, max_length: 256, batch_size: 4, lr: 2.0e-4}
    eval: {tasks: [heldout_loss, arc_easy, piqa], limit: 300}
    arms:
      base: {train: false}
      all: {data: [{path: data/sample.jsonl}]}
      dedup: {data: [{path: data/sample.jsonl}], steps: [{dedupe: {method: minhash}}]}
    baseline: all

Errors name the key (``arms.dedup.steps[0].dedupe.methd``) or the missing path. Data paths are
relative to the recipe's folder. Steps take the options of the CLI command of the same name.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datakit import pipeline, strict_yaml
from datakit.errors import DatakitError, OptionError, shown
from datakit.vllm import default_dtype
from evals.stats import MIN_SEEDS
from evals.tasks import HELDOUT, TaskError, check_name
from train import ConfigError, TrainConfig

TOP_KEYS = {"name", "model", "template", "seeds", "train", "eval", "arms", "baseline", "profiles", "description"}
ARM_KEYS = {"data", "steps", "train", "template", "eval_template", "model"}
SOURCE_KEYS = {"path", "weight", "format"}
EVAL_KEYS = {
    "tasks",
    "limit",
    "batch_size",
    "chat",
    "num_fewshot",
    "heldout",
    "max_gen_toks",
    "null_arm",
    "min_seeds",
    "effects",
    "backend",
    "server",
    "dtype",
    "answers",
}
ANSWERS = 4  # eval.answers default: held-out prompts every arm answers (greedy) for the report
ANSWER_TOKENS = 96
BACKENDS = ("hf", "vllm")  # hf: lm-eval's transformers model in this process; vllm: a vLLM server
HELDOUT_KEYS = {"path", "limit"}
# recipe train keys -> TrainConfig fields (the short LoRA names of the issue, and the CLI's)
TRAIN_ALIASES = {"r": "lora_r", "alpha": "lora_alpha", "dropout": "lora_dropout"}
RUN_OWNED = {"data", "out", "resume", "model", "template", "seed"}  # set per arm and seed by the run
NULL_ARM = "null"  # eval.null_arm: the baseline's data in another order, beside the real arms
# the difference each task's report says how many seeds it takes to detect (eval.effects overrides)
DEFAULT_EFFECTS = {HELDOUT: 0.01}
DEFAULT_EFFECT = 0.02  # accuracy-like tasks: two points
DEFAULT_HELDOUT = Path(__file__).resolve().parent / "data" / "heldout.jsonl"

# --profile tiny: the same recipe, small enough to try on a laptop CPU in minutes. It keeps the
# first MIN_SEEDS seeds, so that its differences can still be tested against training noise.
TINY = {
    "seeds": "first",
    "train": {"max_steps": 6, "batch_size": 2, "max_length": 128},
    "eval": {"limit": 20, "max_gen_toks": 64},
}


class RecipeError(DatakitError, ValueError):
    """A recipe that cannot run; the message names the file and the key or path."""


@dataclass
class Source:
    path: Path
    weight: float = 1.0  # 0.5: a seeded half; 2: every record twice
    format: str | None = None


@dataclass
class Arm:
    name: str
    sources: list[Source] = field(default_factory=list)
    steps: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    train: bool = True
    train_overrides: dict[str, Any] = field(default_factory=dict)
    template: str | None = None  # training template (default: the recipe's)
    eval_template: str | None = None  # prompt template at evaluation (default: the training one)
    model: str | None = None


@dataclass
class Recipe:
    name: str
    path: Path
    model: str
    template: str
    seeds: list[int]
    train: dict[str, Any]
    tasks: list[str]
    limit: int | None
    batch_size: int
    chat: str
    num_fewshot: dict[str, int]
    heldout: Source
    heldout_limit: int | None
    max_gen_toks: int | None
    min_seeds: int
    effects: dict[str, float]
    null_arm: bool
    backend: str  # hf | vllm
    server: str | None  # a vLLM server the user runs (its /v1 URL); None: datakit starts its own
    dtype: str  # the served model's dtype (vllm only); default: bfloat16 where it is fast, else float32
    answers: int  # held-out prompts each arm answers, side by side in the report (0: none)
    arms: dict[str, Arm]
    baseline: str
    raw: dict[str, Any]

    def train_config(self, arm: Arm, seed: int, data: str, out: str) -> TrainConfig:
        values = {**self.train, **arm.train_overrides}
        return TrainConfig(**values, data=[data], out=out, model=arm.model or self.model,
                           template=arm.template or self.template, seed=seed, resume=True)  # fmt: skip

    def eval_template(self, arm: Arm) -> str:
        return arm.eval_template or arm.template or self.template


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RecipeError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _unknown(keys: Any, allowed: set[str], where: str) -> None:
    for key in keys:
        if key not in allowed:
            name = f"{where} {key}" if where.endswith(":") else f"{where}.{key}"
            raise RecipeError(f"{name}: unknown key; allowed: {', '.join(sorted(allowed))}")


def _train_values(values: dict[str, Any], where: str) -> dict[str, Any]:
    out = {}
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - RUN_OWNED
    for key, value in _mapping(values, where).items():
        name = TRAIN_ALIASES.get(key, key.replace("-", "_"))
        if name not in fields:
            raise RecipeError(f"{where}.{key}: unknown training setting; allowed: {', '.join(sorted(fields))}")
        out[name] = value
    if out.get("fsdp") is True:  # accepted silently, it would only change the cache key
        raise RecipeError(f"{where}.fsdp: each training job of evals run is one process, where FSDP shards "
                          "nothing; shard a model too big for one device with datakit train --fsdp under torchrun")  # fmt: skip
    try:  # let the trainer's own checks name a bad value now, before any work
        TrainConfig.from_dict(out, where)
    except ConfigError as exc:  # named by its place in the recipe, whichever check found it
        message = str(exc)
        raise RecipeError(message if message.startswith(where) else f"{where}.{message}") from None
    return out


def _whole_number(value: Any, where: str, low: int = 1, allow_none: bool = True) -> int | None:
    """A setting that must be an integer >= low (or left out, when allow_none)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise RecipeError(f"{where}: expected an integer of at least {low}, got {shown(value)}")
    return value


def check_step(name: str, options: dict[str, Any], where: str) -> None:
    """Build the step's config now, so a bad option fails before any work, named by its key."""
    from evals.steps import config_for

    try:
        config_for(name, options)
    except OptionError as exc:
        raise RecipeError(f"{where}.{exc.key}: {exc.problem}") from None


def load(path: str | Path, profile: str | None = None) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file")
    try:
        raw = strict_yaml.load_file(path)
    except ValueError as exc:
        raise RecipeError(f"{path}: {exc}") from None
    raw = _mapping(raw, str(path))
    if isinstance(raw.get("eval"), dict) and isinstance(raw.get("arms"), dict) and raw["eval"].get("null_arm"):
        raw = _with_null_arm(raw, str(path))
    _unknown(raw, TOP_KEYS, f"{path}:")
    if profile:
        profiles = {"tiny": TINY, **(raw.get("profiles") or {})}
        if profile not in profiles:
            raise RecipeError(f"{path}: profiles.{profile}: no such profile; profiles: {', '.join(profiles)}")
        override = copy.deepcopy(profiles[profile])
        if override.get("seeds") == "first":
            wanted = (raw.get("eval") or {}).get("min_seeds") if isinstance(raw.get("eval"), dict) else None
            keep = max(MIN_SEEDS, wanted if isinstance(wanted, int) and not isinstance(wanted, bool) else 0)
            override["seeds"] = (raw.get("seeds") or [0])[:keep]
        raw = _merge(raw, override)
    where = str(path)
    for key in ("name", "arms", "baseline"):
        if key not in raw:
            raise RecipeError(f"{where}: missing key {shown(key)}")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise RecipeError(f"{where}: seeds: expected a list of integers, got {shown(seeds)}")
    if any(not 0 <= s < 2**32 for s in seeds):
        raise RecipeError(f"{where}: seeds: {shown(seeds)}: seeds are integers from 0 to 2**32 - 1")
    for key in ("name", "model", "template"):
        if key in raw and (not isinstance(raw[key], str) or not raw[key].strip()):
            raise RecipeError(f"{where}: {key}: expected a non-empty text, got {shown(raw[key])}")
    if len(set(seeds)) != len(seeds):  # a repeated seed is the same run twice: it would fake agreement
        raise RecipeError(f"{where}: seeds: {shown(seeds)} repeats a seed; each seed must be different")
    train = _train_values(raw.get("train") or {}, f"{where}: train")
    ev = _mapping(raw.get("eval") or {}, f"{where}: eval")
    _unknown(ev, EVAL_KEYS, f"{where}: eval")
    tasks = ev.get("tasks", [HELDOUT])
    if not isinstance(tasks, list) or not tasks:
        raise RecipeError(f"{where}: eval.tasks: expected a list of task names")
    for i, task in enumerate(tasks):
        try:
            check_name(str(task))
        except TaskError as exc:
            raise RecipeError(f"{where}: eval.tasks[{i}]: {exc}") from None
    min_seeds = ev.get("min_seeds", MIN_SEEDS)
    if isinstance(min_seeds, bool) or not isinstance(min_seeds, int) or min_seeds < 2:
        raise RecipeError(f"{where}: eval.min_seeds: expected an integer of at least 2, got {shown(min_seeds)}")
    if not isinstance(ev.get("null_arm", False), bool):
        raise RecipeError(f"{where}: eval.null_arm: expected true or false, got {shown(ev['null_arm'])}")
    effects = {str(t): DEFAULT_EFFECTS.get(str(t), DEFAULT_EFFECT) for t in tasks}
    for task, value in _mapping(ev.get("effects") or {}, f"{where}: eval.effects").items():
        if task not in effects:
            raise RecipeError(f"{where}: eval.effects.{task}: not one of the recipe's tasks ({', '.join(effects)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise RecipeError(f"{where}: eval.effects.{task}: expected a positive number, got {shown(value)}")
        effects[task] = float(value)
    _whole_number(ev.get("limit"), f"{where}: eval.limit")
    _whole_number(ev.get("batch_size", 16), f"{where}: eval.batch_size", allow_none=False)
    _whole_number(ev.get("max_gen_toks"), f"{where}: eval.max_gen_toks")
    _whole_number(ev.get("answers", ANSWERS), f"{where}: eval.answers", low=0, allow_none=False)
    for task, shots in _mapping(ev.get("num_fewshot") or {}, f"{where}: eval.num_fewshot").items():
        _whole_number(shots, f"{where}: eval.num_fewshot.{task}", low=0, allow_none=False)
    if ev.get("chat", "auto") not in ("auto", "always", "never"):
        raise RecipeError(f"{where}: eval.chat: expected auto, always or never")
    backend = ev.get("backend", "vllm" if "server" in ev else "hf")
    if backend not in BACKENDS:
        raise RecipeError(f"{where}: eval.backend: expected one of {', '.join(BACKENDS)}, got {shown(backend)}")
    server = ev.get("server")
    if server is not None and (not isinstance(server, str) or not server.startswith(("http://", "https://"))):
        raise RecipeError(f"{where}: eval.server: expected the server's URL (http://HOST:PORT/v1), got {shown(server)}")
    if server is not None and backend != "vllm":
        raise RecipeError(f"{where}: eval.server: needs eval.backend vllm (the server answers in its place)")
    if ev.get("dtype", "bfloat16") not in ("bfloat16", "float32", "float16", "auto"):
        raise RecipeError(f"{where}: eval.dtype: expected bfloat16, float32, float16 or auto, got {shown(ev['dtype'])}")
    heldout = _mapping(ev.get("heldout") or {}, f"{where}: eval.heldout")
    _unknown(heldout, HELDOUT_KEYS, f"{where}: eval.heldout")
    _whole_number(heldout.get("limit"), f"{where}: eval.heldout.limit")
    heldout_source = Source(path.parent / heldout["path"] if "path" in heldout else DEFAULT_HELDOUT)
    if not heldout_source.path.is_file():
        raise RecipeError(f"{where}: eval.heldout.path: {heldout_source.path} does not exist")

    arms: dict[str, Arm] = {}
    for name, spec in _mapping(raw["arms"], f"{where}: arms").items():
        arms[name] = _arm(str(name), spec, f"{where}: arms.{name}", path.parent, train)
    if not arms:
        raise RecipeError(f"{where}: arms: no arm")
    if raw["baseline"] not in arms:
        raise RecipeError(f"{where}: baseline: {shown(raw['baseline'])} is not an arm; arms: {', '.join(arms)}")
    return Recipe(
        name=str(raw["name"]), path=path, model=str(raw.get("model", "smollm2-135m")),
        template=str(raw.get("template", "tokenizer")), seeds=seeds, train=train, tasks=[str(t) for t in tasks],
        limit=ev.get("limit"), batch_size=int(ev.get("batch_size", 16)), chat=ev.get("chat", "auto"),
        num_fewshot=dict(ev.get("num_fewshot") or {}), heldout=heldout_source, heldout_limit=heldout.get("limit", ev.get("limit")),
        max_gen_toks=ev.get("max_gen_toks"), min_seeds=min_seeds, effects=effects, null_arm=bool(ev.get("null_arm", False)),
        backend=backend, server=server.rstrip("/") if server else None, dtype=str(ev["dtype"]) if "dtype" in ev else default_dtype(),
        answers=int(ev.get("answers", ANSWERS)), arms=arms, baseline=str(raw["baseline"]), raw=raw,
    )  # fmt: skip


def _with_null_arm(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """The recipe with a null arm: a copy of the baseline whose data is shuffled into another
    order. Its difference from the baseline is pure training noise, shown beside the real ones."""
    baseline = raw.get("baseline")
    if baseline not in raw["arms"]:
        return raw  # the missing baseline is reported below
    if NULL_ARM in raw["arms"]:
        raise RecipeError(f"{where}: arms.{NULL_ARM}: eval.null_arm adds an arm of that name; rename yours")
    spec = copy.deepcopy(raw["arms"][baseline] or {})
    if spec.get("train", True) is False:
        raise RecipeError(
            f"{where}: eval.null_arm: the baseline {shown(baseline)} is not trained, so it has no data order"
        )
    spec["steps"] = [*(spec.get("steps") or []), {"shuffle": {"seed": 1}}]
    return {**raw, "arms": {**raw["arms"], NULL_ARM: spec}}


def _arm(name: str, spec: Any, where: str, root: Path, train: dict[str, Any]) -> Arm:
    spec = _mapping(spec or {}, where)
    _unknown(spec, ARM_KEYS, where)
    arm = Arm(name, template=spec.get("template"), eval_template=spec.get("eval_template"), model=spec.get("model"))
    if spec.get("train", True) is False:
        arm.train = False
    elif isinstance(spec.get("train"), dict):
        arm.train_overrides = _train_values(spec["train"], f"{where}.train")
    for key in ("template", "eval_template"):
        if spec.get(key) is not None:
            from train import TEMPLATES

            if spec[key] not in TEMPLATES:
                raise RecipeError(
                    f"{where}.{key}: {shown(spec[key])} is not a template; templates: {', '.join(TEMPLATES)}"
                )
    sources = spec.get("data") or []
    if arm.train and not sources:
        raise RecipeError(f"{where}.data: a trained arm needs data (or set train: false)")
    if not isinstance(sources, list):
        raise RecipeError(f"{where}.data: expected a list of sources")
    for i, source in enumerate(sources):
        source = _mapping(source, f"{where}.data[{i}]")
        _unknown(source, SOURCE_KEYS, f"{where}.data[{i}]")
        if "path" not in source:
            raise RecipeError(f"{where}.data[{i}]: missing key 'path'")
        file = root / source["path"]
        if not file.is_file():
            raise RecipeError(f"{where}.data[{i}].path: {file} does not exist")
        weight = source.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < math.inf:
            raise RecipeError(f"{where}.data[{i}].weight: expected a positive number, got {shown(weight)}")
        arm.sources.append(Source(file, float(weight), source.get("format")))
    for i, step in enumerate(spec.get("steps") or []):
        if not isinstance(step, dict) or len(step) != 1:
            raise RecipeError(f"{where}.steps[{i}]: expected one operation, like {{dedupe: {{method: minhash}}}}")
        ((op, options),) = step.items()
        if op not in pipeline.steps():
            raise RecipeError(f"{where}.steps[{i}].{op}: unknown step; steps: {', '.join(pipeline.steps())}")
        options = _mapping(options or {}, f"{where}.steps[{i}].{op}")
        check_step(op, options, f"{where}.steps[{i}].{op}")
        arm.steps.append((op, options))
    return arm
