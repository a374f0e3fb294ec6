"""``evals run``: build each arm's data, train each arm per seed, score everything, report.

Every artifact lives in the run folder's cache under a key that hashes all its inputs (data
files' bytes, step options, training settings, base model, task, limit...): a re-run does only
what changed, and a killed run resumes (training continues from its last checkpoint, lm-eval
from its per-model request cache).

    cache/data/<key>.jsonl         an arm's data after each step (canonical JSONL)
    cache/train/<key>/             a trained adapter, its loss log and checkpoints
    cache/eval/<key>.json          one model's per-item results on one task
    items/<arm>/<run>/<task>.jsonl the per-item results the report is computed from
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import xxhash

from datakit.io import write_json
from evals.recipe import ANSWER_TOKENS, Arm, Recipe, RecipeError, load
from evals.report import build as build_report
from evals.steps import cache_identity
from evals.tasks import HELDOUT, TASKS

VLLM_METHODS = ("lora", "rslora", "qlora", "full")  # what vLLM serves: LoRA modules, or a model of its own
VERSION = "1"  # bump when a change to the code makes cached artifacts wrong


def digest(*parts: Any) -> str:
    return xxhash.xxh3_128(json.dumps([VERSION, *parts], sort_keys=True, default=str).encode()).hexdigest()[:20]


def file_digest(path: Path) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Job:
    stage: str  # data | heldout | train | eval | answers
    arm: str
    run: str  # "seed-0", or "untrained"
    key: str
    detail: str
    done: bool
    action: Any = field(repr=False, default=None)


class Plan:
    """The jobs of a recipe with their cache keys, in the order they run."""

    def __init__(self, recipe: Recipe, run_dir: Path) -> None:
        self.recipe, self.run_dir, self.cache = recipe, run_dir, run_dir / "cache"
        self.jobs: list[Job] = []
        self._keys: set[str] = set()
        self.data_file: dict[str, Path] = {}  # arm -> its final data
        self.data_key: dict[str, str] = {}  # arm -> the cache key of that data
        self.model_of: dict[tuple[str, str], tuple[str, str | None, str]] = {}  # (arm, run) -> model, adapter, key
        self.runs: dict[str, list[str]] = {}
        self.eval_files: dict[tuple[str, str, str], Path] = {}
        self.data_chain: dict[str, list[tuple[str, dict, Path, Path]]] = {}  # arm -> (step, options, input, output)
        self.answer_files: dict[str, Path] = {}  # arm -> its first run's answers to held-out prompts
        self.served = None  # evals.serving.ServedModels when the recipe scores through vLLM
        self._build()

    def _build(self) -> None:
        r = self.recipe
        for arm in r.arms.values():
            if arm.train:
                self._data_jobs(arm)
        trained_data = sorted({str(self.data_file[a]) for a in self.data_file})
        self.heldout_key = digest("heldout", file_digest(r.heldout.path), r.heldout_limit, trained_data)
        self.heldout_file = self.cache / "heldout" / f"{self.heldout_key}.json"
        if HELDOUT in r.tasks or r.answers:
            self._add(Job("heldout", "-", "-", self.heldout_key, "check held-out set against training data",
                                 self.heldout_file.exists(), self._heldout))  # fmt: skip
        for arm in r.arms.values():
            model = arm.model or r.model
            if not arm.train:
                self.runs[arm.name] = ["untrained"]
                self.model_of[(arm.name, "untrained")] = (model, None, digest("model", model))
                continue
            self.runs[arm.name] = [f"seed-{s}" for s in r.seeds]
            for seed in r.seeds:
                config = r.train_config(arm, seed, str(self.data_file[arm.name]), "")
                settings = {k: v for k, v in config.outcome_settings().items()
                            if k not in ("data", "out", "resume", "threads")}  # fmt: skip
                key = digest("train", self.data_key[arm.name], settings)
                out = self.cache / "train" / key
                self.model_of[(arm.name, f"seed-{seed}")] = (model, str(out / "adapter"), key)
                self._add(Job("train", arm.name, f"seed-{seed}", key,
                                     f"{config.method} {config.max_steps or config.epochs} "
                                     f"{'steps' if config.max_steps else 'epochs'}",
                                     (out / "train_result.json").exists(),
                                     lambda c=config, o=out: self._train(c, o)))  # fmt: skip
        for arm in r.arms.values():
            for run in self.runs[arm.name]:
                model, adapter, model_key = self.model_of[(arm.name, run)]
                for task in r.tasks:
                    settings = [
                        model_key,
                        r.eval_template(arm),
                        task,
                        r.limit,
                        r.chat,
                        r.num_fewshot.get(task),
                        r.max_gen_toks,
                    ]
                    if r.backend != "hf":  # another engine's numbers differ slightly: its own cache
                        settings.append(("backend", r.backend, r.dtype, r.server))
                    if task == HELDOUT:
                        settings.append(self.heldout_key)
                    elif task in TASKS:
                        settings += [file_digest(Path(__file__).parent / "tasks" / "data" / f)
                                     for f in TASKS[task].files.values()]  # fmt: skip
                    key = digest("eval", *settings)
                    path = self.cache / "eval" / f"{key}.json"
                    self.eval_files[(arm.name, run, task)] = path
                    self._add(Job("eval", arm.name, run, key, task, path.exists(),
                                         lambda a=arm, m=model, ad=adapter, mk=model_key, t=task, p=path:
                                         self._eval(a, m, ad, mk, t, p)))  # fmt: skip
        if r.answers:  # greedy answers of each arm's first run, for the report's side-by-side view
            for arm in r.arms.values():
                model, adapter, model_key = self.model_of[(arm.name, self.runs[arm.name][0])]
                key = digest("answers", model_key, r.eval_template(arm), self.heldout_key, r.answers, ANSWER_TOKENS)
                path = self.cache / "answers" / f"{key}.json"
                self.answer_files[arm.name] = path
                self._add(
                    Job(
                        "answers",
                        arm.name,
                        self.runs[arm.name][0],
                        key,
                        f"{r.answers} held-out prompts",
                        path.exists(),
                        lambda a=arm, m=model, ad=adapter, p=path: self._answers(a, m, ad, p),
                    )
                )

    def _add(self, job: Job) -> None:
        if job.key not in self._keys:  # arms that share a prefix of work share its jobs
            self._keys.add(job.key)
            self.jobs.append(job)

    def _data_jobs(self, arm: Arm) -> None:
        sources = [(file_digest(s.path), s.weight, s.format) for s in arm.sources]
        key = digest("mix", sources)
        path = self.cache / "data" / f"{key}.jsonl"
        self._add(Job("data", arm.name, "-", key, f"mix {len(sources)} source(s)", path.exists(),
                             lambda a=arm, p=path: self._mix(a, p)))  # fmt: skip
        chain = self.data_chain[arm.name] = [("mix", {}, path, path)]
        for i, (op, options) in enumerate(arm.steps):
            key = digest("step", key, *cache_identity(op, options))
            step_path = self.cache / "data" / f"{key}.jsonl"
            self._add(Job("data", arm.name, "-", key, f"step {i + 1}: {op}", step_path.exists(),
                                 lambda o=op, opts=options, src=path, dst=step_path: self._step(o, opts, src, dst)))  # fmt: skip
            chain.append((op, options, path, step_path))
            path = step_path
        self.data_file[arm.name] = path
        self.data_key[arm.name] = key

    # --- the work of each job ---

    def _mix(self, arm: Arm, path: Path) -> None:
        from evals.steps import mix

        summary = mix(arm.sources, path)
        write_json(path.with_suffix(".summary.json"), summary)

    def _step(self, op: str, options: dict, source: Path, dest: Path) -> None:
        from evals.steps import apply

        summary = apply(op, options, source, dest)
        write_json(dest.with_suffix(".summary.json"), summary)

    def _heldout(self) -> None:
        from datakit.convert import read_records
        from evals.heldout import decontaminate

        records = list(read_records(self.recipe.heldout.path))[: self.recipe.heldout_limit]
        files = sorted(set(self.data_file.values()))
        keep, removed = decontaminate(records, files)
        write_json(self.heldout_file, {"records": len(records), "kept": keep, "removed": removed})

    def _held_out_records(self) -> list[dict[str, Any]]:
        """The held-out records left after decontamination (the heldout job has run)."""
        from datakit.convert import read_records

        held = json.loads(self.heldout_file.read_text())
        records = list(read_records(self.recipe.heldout.path))[: self.recipe.heldout_limit]
        return [records[i] for i in held["kept"]]

    def _answers(self, arm: Arm, model: str, adapter: str | None, path: Path) -> None:
        from datakit.models import resolve_llm
        from evals.heldout import answers

        held = json.loads(self.heldout_file.read_text())
        pairs = [(i, r) for i, r in zip(held["kept"], self._held_out_records(), strict=True)
                 if r["messages"] and r["messages"][-1]["role"] == "assistant"][: self.recipe.answers]  # fmt: skip
        texts = answers(resolve_llm(model), adapter, self.recipe.eval_template(arm), [r for _, r in pairs],
                        ANSWER_TOKENS)  # fmt: skip
        write_json(path, [{"item": i, "answer": t} for (i, _), t in zip(pairs, texts, strict=True)])

    def _train(self, config, out: Path) -> None:
        from train import fit

        config.out = str(out)
        fit(config, progress=True)

    def _eval(self, arm: Arm, model: str, adapter: str | None, model_key: str, task: str, path: Path) -> None:
        from datakit.models import resolve_llm

        started = time.perf_counter()
        model_path = resolve_llm(model)
        template = self.recipe.eval_template(arm)
        served = self.served.get(model, adapter, model_key) if self.served is not None else None
        if task == HELDOUT:
            from evals.heldout import score

            held = json.loads(self.heldout_file.read_text())
            kept = self._held_out_records()
            if served is not None:
                from evals.heldout import score_served

                scores = score_served(served, model_path, template, kept)
            else:
                scores = score(model_path, adapter, template, kept)
            items = [(held["kept"][i], loss, n) for i, loss, n in scores]
            value = sum(x[1] for x in items) / max(1.0, sum(x[2] for x in items))
            result = {"task": task, "metric": "loss", "value": value, "items": items}
        else:
            from evals.lm import evaluate
            from evals.tasks import materialize

            task_dir = materialize(self.cache / "tasks", self.cache / "hf" / "datasets")
            out = evaluate(model_path, adapter, template, [task], task_dir=task_dir,
                           cache_prefix=self.cache / "lmeval" / model_key / "requests", limit=self.recipe.limit,
                           batch_size=self.recipe.batch_size, chat=self.recipe.chat,
                           num_fewshot=self.recipe.num_fewshot, max_gen_toks=self.recipe.max_gen_toks,
                           served=served)[task]  # fmt: skip
            items = [(doc, value, 1.0) for doc, value in out["items"]]
            result = {"task": task, "metric": out["metric"], "value": out["value"], "items": items}
        result["seconds"] = round(time.perf_counter() - started, 2)
        write_json(path, result)


def describe(plan: Plan) -> str:
    lines = [f"recipe {plan.recipe.name}: {len(plan.recipe.arms)} arms, seeds {plan.recipe.seeds}, "
             f"tasks {', '.join(plan.recipe.tasks)}; run folder {plan.run_dir}"]  # fmt: skip
    if plan.recipe.backend != "hf":
        r = plan.recipe
        lines.append(f"scoring through {r.backend} ({r.dtype}{', at ' + r.server if r.server else ''})")
    for job in plan.jobs:
        state = "cached" if job.done else "to do"
        lines.append(f"  {state:<7} {job.stage:<8} {job.arm:<16} {job.run:<11} {job.detail}  [{job.key}]")
    todo = sum(not j.done for j in plan.jobs)
    lines.append(f"{todo} of {len(plan.jobs)} jobs to do")
    return "\n".join(lines)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("datakit", "torch", "transformers", "peft", "lm_eval", "datasets", "polars", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def run(recipe_path: str | Path, out: str | Path | None = None, profile: str | None = None, dry_run: bool = False,
        log=None, executor: str = "local", address: str | None = None, backend: str | None = None) -> Path:  # fmt: skip
    """Run a recipe (or with ``dry_run`` only print its plan); returns the run folder.

    ``executor="ray"`` runs the training and evaluation jobs as Ray tasks on the cluster at
    ``address`` (see ``run_on_ray``); the run folder and its cache must be on a path all nodes share.
    """
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    recipe = load(recipe_path, profile)
    if backend:
        recipe.backend = backend
    if recipe.backend == "vllm" and executor == "ray":
        raise RecipeError(f"{recipe_path}: eval.backend vllm runs on the local executor; with --executor ray, "
                          "score with --backend hf")  # fmt: skip
    if recipe.backend == "vllm":  # vLLM has LoRA modules only: refuse before any training, not after
        for name, arm in recipe.arms.items():
            method = {**recipe.train, **arm.train_overrides}.get("method", "lora")
            if arm.train and method not in VLLM_METHODS:
                raise RecipeError(f"{recipe_path}: arms.{name}: method {method} cannot be served by vLLM (it serves "
                                  f"{', '.join(VLLM_METHODS)}); score this recipe with --backend hf")  # fmt: skip
    run_dir = Path(out) if out else Path(recipe.name + (f"-{profile}" if profile else ""))
    plan = Plan(recipe, run_dir)
    log(describe(plan))
    if dry_run:
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    from evals.lm import hf_home

    hf_home(plan.cache / "hf")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a weight-loading bar per job: noise beside the job lines
    todo = [j for j in plan.jobs if not j.done]
    started = time.perf_counter()
    if executor == "ray":
        run_on_ray(plan, todo, address, log)
        todo = []
    if recipe.backend == "vllm":
        from evals.serving import ServedModels

        adapters = {key: (model, adapter) for model, adapter, key in plan.model_of.values() if adapter}
        plan.served = ServedModels(adapters, recipe.dtype, plan.cache / "vllm", server=recipe.server, log=log)
    try:
        _run_jobs(plan, todo, started, log)
    finally:
        if plan.served is not None:
            plan.served.close()
    collect(plan, recipe)
    build_report(run_dir)
    log(f"done in {time.perf_counter() - started:,.0f}s: {run_dir / 'results.md'}")
    return run_dir


def _run_jobs(plan: Plan, todo: list[Job], started: float, log) -> None:
    """The jobs one after another in this process, with an ETA from the time each stage has taken."""
    recipe = plan.recipe
    spent: dict[str, list[float]] = {}
    for n, job in enumerate(todo, start=1):
        elapsed = time.perf_counter() - started
        eta = sum(_guess(j, recipe, spent) for j in todo[n - 1 :])
        log(
            f"[{n}/{len(todo)}] {job.stage} {job.arm} {job.run} {job.detail}  ({elapsed:,.0f}s elapsed, ETA {eta:,.0f}s)"
        )
        job_started = time.perf_counter()
        job.action()
        seconds = time.perf_counter() - job_started
        spent.setdefault(job.stage, []).append(seconds)
        write_json(plan.cache / "timings" / f"{job.key}.json", {"stage": job.stage, "seconds": round(seconds, 2)})


def run_on_ray(plan: Plan, todo: list[Job], address: str | None, log) -> None:
    """The jobs on a Ray cluster, stage by stage: data steps and the held-out check on the driver
    (in order: each arm's steps build on each other), then every training job at once, then every
    evaluation job at once, each a Ray task asking for a CPU (and a GPU where the cluster has
    them). Results land in the content-addressed cache, so a rerun skips what is done."""
    from datakit.ray_executor import connect

    ray = connect(address)
    gpus = ray.cluster_resources().get("GPU", 0)
    task = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0, max_retries=0)(_run_job)
    for stage in ("data", "heldout"):
        for job in (j for j in todo if j.stage == stage):
            log(f"{job.stage} {job.arm} {job.run} {job.detail} (driver)")
            job.action()
    for stage in ("train", "eval", "answers"):
        jobs = [j for j in todo if j.stage == stage]
        if not jobs:
            continue
        log(
            f"{len(jobs)} {stage} jobs as Ray tasks on {ray.cluster_resources().get('CPU', 0):.0f} CPUs, {gpus:.0f} GPUs"
        )
        pending = {task.remote(job.action, str(plan.cache / "hf")): job for job in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            seconds = ray.get(done[0])
            log(f"  done: {job.stage} {job.arm} {job.run} {job.detail} in {seconds:,.0f}s ({len(pending)} left)")
            write_json(plan.cache / "timings" / f"{job.key}.json", {"stage": job.stage, "seconds": round(seconds, 2)})


def _run_job(action, hf_folder: str) -> float:
    """A job inside a Ray task: torch uses the CPUs the task was given, not every core of the node,
    and Hugging Face's caches stay in the run folder, as on the driver."""
    import ray
    import torch

    from evals.lm import hf_home

    hf_home(Path(hf_folder))
    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _guess(job: Job, recipe: Recipe, spent: dict[str, list[float]]) -> float:
    """Seconds a job will take: the mean of its stage so far, else a rough prior from this CPU."""
    if spent.get(job.stage):
        return sum(spent[job.stage]) / len(spent[job.stage])
    if job.stage == "train":  # about 150 training tokens/s on a 2-core CPU, rows about 70% full
        t = recipe.train
        return 5 + (t.get("max_steps") or 100) * t.get("batch_size", 8) * t.get("max_length", 256) * 0.7 / 150
    if job.stage == "eval":  # about 0.45 s an item for heldout_loss, 0.2 s for multiple choice
        if job.detail == HELDOUT:
            return 0.45 * (recipe.heldout_limit or 200)
        return 0.2 * (recipe.limit or 500)
    if job.stage == "answers":  # one batch of prompts, 96 greedy tokens of a 135M model
        return 8 + 2 * recipe.answers
    return 5.0


def write_cards(plan: Plan, recipe: Recipe) -> None:
    """Each arm's data card and the answers side by side, for the report (evals.cards)."""
    from datakit.convert import read_records
    from datakit.io import write_text
    from evals.cards import data_card, side_by_side

    for arm, chain in plan.data_chain.items():
        write_json(plan.run_dir / "cards" / f"{arm}.json", data_card(arm, chain))
    if plan.answer_files:
        records = list(read_records(recipe.heldout.path))[: recipe.heldout_limit]
        write_text(plan.run_dir / "answers.json", json.dumps(side_by_side(plan.answer_files, records), indent=1))


def collect(plan: Plan, recipe: Recipe) -> None:
    """Copy the per-item results and loss logs into the run folder, with what the report needs."""
    run_dir = plan.run_dir
    shutil.copyfile(recipe.path, run_dir / "recipe.yaml")
    import yaml

    (run_dir / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe.raw, sort_keys=False))
    metrics, timings = {}, []
    for (arm, run, task), path in plan.eval_files.items():
        result = json.loads(path.read_text())
        metrics[task] = result["metric"]
        dest = run_dir / "items" / arm / run / f"{task}.jsonl"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text("".join(json.dumps({"item": i, "num": a, "den": b}) + "\n" for i, a, b in result["items"]))
    for (arm, run), (_, adapter, _) in plan.model_of.items():
        if adapter:
            log_path = Path(adapter).parent / "loss.jsonl"
            (run_dir / "loss").mkdir(exist_ok=True)
            shutil.copyfile(log_path, run_dir / "loss" / f"{arm}.{run}.jsonl")
    for job in plan.jobs:
        timing = plan.cache / "timings" / f"{job.key}.json"
        seconds = json.loads(timing.read_text())["seconds"] if timing.exists() else None
        timings.append({"stage": job.stage, "arm": job.arm, "run": job.run, "detail": job.detail, "seconds": seconds})
    heldout = json.loads(plan.heldout_file.read_text()) if plan.heldout_file.exists() else None
    write_cards(plan, recipe)
    write_json(run_dir / "run.json", {
        "recipe": recipe.name, "baseline": recipe.baseline, "arms": list(recipe.arms), "runs": plan.runs,
        "tasks": recipe.tasks, "metrics": metrics, "seeds": recipe.seeds,
        "min_seeds": recipe.min_seeds, "effects": recipe.effects, "null_arm": recipe.null_arm,
        "heldout": None if heldout is None else {"records": heldout["records"], "removed": heldout["removed"]},
        "timings": timings, "versions": versions(), "model": recipe.model, "template": recipe.template,
    })  # fmt: skip
