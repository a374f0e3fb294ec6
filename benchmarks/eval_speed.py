"""Evaluation through lm-eval's transformers backend (hf) and through vLLM, side by side in one run.

The models are the quick start's: the untrained base and seed 0 of each trained arm (`all`,
`dedup`, `corrupted`), read from a finished quick-start run folder (``evals run
recipes/quickstart.yaml`` writes ``quickstart/``). Each backend scores every model on
heldout_loss (the quick start's held-out set), ARC-Easy and PIQA (multiple choice, loglikelihood)
and gsm8k (generation, greedy; on the base model and one adapter). vLLM serves the base model with
the three adapters as LoRA modules from one server; its start-up is part of its wall time.

Printed: wall time per backend and task, the ratio, and the agreement per item: the share of
multiple-choice items with the same answer correct/incorrect, of gsm8k items with the same
score, and the relative difference of each model's held-out loss. vLLM computes in datakit's
default dtype (fp32 on a CPU without AMX, bf16 with AMX or on a GPU) and the hf backend in fp32,
so small differences are expected where they differ and reported, not hidden.

    python benchmarks/eval_speed.py [--run quickstart] [--limit 200] [--gsm8k 50] [--gen-tokens 256]
        [--dtype float32|bfloat16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _measure import cpu_name

from datakit.convert import read_records
from datakit.embed import has_cuda
from datakit.models import resolve_llm
from datakit.vllm import VllmServer, lora_on_logits
from evals.heldout import score, score_served
from evals.lm import Served, evaluate, hf_home
from evals.recipe import load
from evals.run import Plan
from evals.tasks import materialize


def models_of(run_dir: Path) -> list[tuple[str, str | None]]:
    """[(name, adapter folder or None)]: base, then seed 0 of each trained arm that is not a control."""
    recipe = load(run_dir / "recipe.yaml")
    plan = Plan(recipe, run_dir)
    out: list[tuple[str, str | None]] = []
    for arm in recipe.arms:
        if arm == "null":
            continue
        runs = plan.runs[arm]
        model, adapter, _ = plan.model_of[(arm, runs[0])]
        if adapter and not Path(adapter).exists():
            raise SystemExit(f"{adapter} is missing: run `evals run recipes/quickstart.yaml` first")
        out.append((arm if adapter is None else f"{arm}/{runs[0]}", adapter))
    return out


def heldout_records(run_dir: Path) -> list[dict]:
    recipe = load(run_dir / "recipe.yaml")
    plan = Plan(recipe, run_dir)
    held = json.loads(plan.heldout_file.read_text())
    records = list(read_records(recipe.heldout.path))[: recipe.heldout_limit]
    return [records[i] for i in held["kept"]]


def run_backend(backend: str, models, records, args, template: str, base: str, work: Path) -> dict:
    results: dict = {"seconds": {}, "items": {}}
    server = None
    started = time.perf_counter()
    if backend == "vllm":
        adapters = {name.replace("/", "-"): a for name, a in models if a}
        server = VllmServer(base, "base", adapters, dtype=args.dtype, log_file=work / "vllm.log").start()
        results["seconds"]["start"] = time.perf_counter() - started
    task_dir = materialize(work / "tasks", work / "hf" / "datasets")
    try:
        for name, adapter in models:
            served = None
            if server is not None:  # one prompt-logprob request at a time with LoRA on CPU: see evals.lm.Served
                served = Served(server.url, name.replace("/", "-") if adapter else "base",
                                scoring_concurrency=1 if lora_on_logits(server.adapters) and not has_cuda() else 8)  # fmt: skip
            t = time.perf_counter()
            if served:
                losses = score_served(served, base, template, records)
            else:
                losses = score(base, adapter, template, records)
            _add(results, "heldout_loss", t)
            results["items"][(name, "heldout_loss")] = sum(x[1] for x in losses) / sum(x[2] for x in losses)
            tasks = [("arc_easy", args.limit), ("piqa", args.limit)]
            if adapter is None or name == models[1][0]:
                tasks.append(("gsm8k", args.gsm8k))
            for task, limit in tasks:
                t = time.perf_counter()
                out = evaluate(base, adapter, template, [task], task_dir=task_dir,
                               cache_prefix=work / backend / name.replace("/", "-") / task, limit=limit,
                               batch_size=16, max_gen_toks=args.gen_tokens if task == "gsm8k" else None,
                               served=served)[task]  # fmt: skip
                _add(results, task, t)
                results["items"][(name, task)] = dict(out["items"])
    finally:
        if server is not None:
            server.stop()
    results["seconds"]["total"] = time.perf_counter() - started
    return results


def _add(results: dict, task: str, since: float) -> None:
    results["seconds"][task] = results["seconds"].get(task, 0.0) + time.perf_counter() - since


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="quickstart", help="a finished quick-start run folder")
    parser.add_argument("--limit", type=int, default=200, help="ARC-Easy and PIQA items")
    parser.add_argument("--gsm8k", type=int, default=50, help="gsm8k items")
    parser.add_argument("--gen-tokens", type=int, default=256)
    parser.add_argument("--dtype", default=None, help="vLLM's dtype (default: datakit.vllm.default_dtype())")
    parser.add_argument("--backends", default="hf,vllm")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    run_dir = Path(args.run)
    recipe = load(run_dir / "recipe.yaml")
    models = models_of(run_dir)
    records = heldout_records(run_dir)
    base = resolve_llm(recipe.model)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; models: {', '.join(n for n, _ in models)}; "
          f"{len(records)} held-out records, ARC-Easy/PIQA {args.limit}, gsm8k {args.gsm8k} x {args.gen_tokens} tokens")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        hf_home(Path(tmp) / "hf")
        results = {}
        for backend in args.backends.split(","):
            results[backend] = run_backend(backend, models, records, args, recipe.template, base, Path(tmp))
            print(f"{backend}: {results[backend]['seconds']['total']:.0f}s", flush=True)
    if set(results) != {"hf", "vllm"}:
        return
    hf, vl = results["hf"], results["vllm"]
    print("\n| task | hf s | vllm s | hf/vllm | agreement |\n|---|---|---|---|---|")
    for task in ("heldout_loss", "arc_easy", "piqa", "gsm8k"):
        keys = [k for k in hf["items"] if k[1] == task]
        if task == "heldout_loss":
            diffs = [abs(vl["items"][k] - hf["items"][k]) / hf["items"][k] for k in keys]
            agree = f"loss within {max(diffs):.2%} (largest relative difference of {len(keys)} models)"
        else:
            same = total = 0
            for k in keys:
                for doc, value in hf["items"][k].items():
                    same += value == vl["items"][k].get(doc)
                    total += 1
            agree = f"{same / total:.1%} of {total} items score the same"
        ratio = hf["seconds"][task] / vl["seconds"][task]
        print(f"| {task} | {hf['seconds'][task]:.0f} | {vl['seconds'][task]:.0f} | {ratio:.2f}x | {agree} |")
    print(f"| total | {hf['seconds']['total']:.0f} | {vl['seconds']['total']:.0f} "
          f"(start {vl['seconds']['start']:.0f}) | {hf['seconds']['total'] / vl['seconds']['total']:.2f}x | |")  # fmt: skip
    for k in sorted(k for k in hf["items"] if k[1] == "heldout_loss"):
        print(f"  heldout_loss {k[0]}: hf {hf['items'][k]:.5f}  vllm {vl['items'][k]:.5f}")
    if args.json:
        flat = {b: {"seconds": r["seconds"], "items": {f"{m}|{t}": v for (m, t), v in r["items"].items()}}
                for b, r in results.items()}  # fmt: skip
        Path(args.json).write_text(json.dumps(flat, indent=1, default=str))


if __name__ == "__main__":
    main()
