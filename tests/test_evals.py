"""evals: a tiny recipe end to end on CPU, its cache, recipe errors, the shipped tasks and the statistics."""

from __future__ import annotations

import html
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_report import assert_self_contained

import datakit
from evals.recipe import RecipeError, load
from evals.tasks import DATA, TASKS, materialize

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "datakit" / "data" / "alpaca_sample.json"


def tiny_recipe(folder: Path, **changes) -> Path:
    """A recipe small enough for a test; where a test gives its own ``eval``, the arms answer no
    held-out prompts (eval.answers 0) unless it says otherwise."""
    if "eval" in changes:
        changes["eval"] = {"answers": 0, **changes["eval"]}
    records = list(datakit.read_records(SAMPLE))[:12]
    datakit.write_records(records, folder / "sample.jsonl", to="sharegpt")
    recipe = {
        "name": "tiny",
        "model": "smollm2-135m",
        "template": "chatml",
        "seeds": [0],
        "train": {"max_steps": 3, "batch_size": 2, "max_length": 96, "lr": 1.0e-3, "dtype": "fp32"},
        "eval": {"tasks": ["heldout_loss", "arc_easy"], "limit": 6, "batch_size": 8, "answers": 1},
        "arms": {"base": {"train": False}, "all": {"data": [{"path": "sample.jsonl"}]}},
        "baseline": "base",
    }
    recipe.update(changes)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def evals_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evals.cli", *args], capture_output=True, text=True)


def items(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tiny_recipe_end_to_end_then_from_cache(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    run_dir = tmp_path / "run"
    first = evals_cli("run", str(recipe), "--out", str(run_dir))
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    md = (run_dir / "results.md").read_text()
    for arm, run in (("base", "untrained"), ("all", "seed-0")):
        for task in ("heldout_loss", "arc_easy"):
            rows = items(run_dir / "items" / arm / run / f"{task}.jsonl")
            mean = sum(r["num"] for r in rows) / sum(r["den"] for r in rows)
            assert results["arms"][arm][task]["estimate"]["mean"] == pytest.approx(mean)
            assert f"{mean:.3f}" in md
    arc = items(run_dir / "items" / "all" / "seed-0" / "arc_easy.jsonl")
    assert len(arc) == 6 and {r["num"] for r in arc} <= {0.0, 1.0}
    # the per-item mean is lm-eval's own aggregate for that model
    cached = [json.loads(p.read_text()) for p in (run_dir / "cache" / "eval").glob("*.json")]
    lm_eval_values = sorted(c["value"] for c in cached if c["task"] == "arc_easy")
    assert results["arms"]["all"]["arc_easy"]["estimate"]["mean"] in [pytest.approx(v) for v in lm_eval_values]
    # the difference is paired: arm minus baseline over the same items
    base = items(run_dir / "items" / "base" / "untrained" / "heldout_loss.jsonl")
    trained = items(run_dir / "items" / "all" / "seed-0" / "heldout_loss.jsonl")
    assert [r["item"] for r in base] == [r["item"] for r in trained]
    delta = results["arms"]["all"]["heldout_loss"]["delta"]
    expected = sum(r["num"] for r in trained) / sum(r["den"] for r in trained) - sum(r["num"] for r in base) / sum(
        r["den"] for r in base
    )
    assert delta["mean"] == pytest.approx(expected)
    # one seed: the estimate is shown, without a verdict and without a significance flag
    assert delta["tested"] is False and "significant" not in delta and delta["verdict"] == "not tested"
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert "not tested" in md and "1 seed" in md and not any("**\\***" in line for line in table)
    assert (run_dir / "deltas.png").stat().st_size > 0 and (run_dir / "loss.png").stat().st_size > 0
    assert (run_dir / "recipe.yaml").read_text() == recipe.read_text()
    # the page: written with the report, self-contained, the same numbers, the arms' answers
    page = (run_dir / "report.html").read_text()
    assert_self_contained(page)
    for arm, run in (("base", "untrained"), ("all", "seed-0")):
        for task in ("heldout_loss", "arc_easy"):
            assert f">{results['arms'][arm][task]['estimate']['mean']:.3f}<" in page
            assert f'href="items/{arm}/{run}/{task}.jsonl"' in page
    (answered,) = json.loads((run_dir / "answers.json").read_text())
    assert set(answered["answers"]) == {"base", "all"} and all(a.strip() for a in answered["answers"].values())
    assert html.escape(answered["answers"]["all"]) in page and html.escape(answered["reference"]) in page

    adapter = next((run_dir / "cache" / "train").glob("*/adapter/adapter_model.safetensors"))
    trained_at = adapter.stat().st_mtime_ns
    second = evals_cli("run", str(recipe), "--out", str(run_dir))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "0 of " in second.stderr and "[1/" not in second.stderr  # nothing was redone
    assert adapter.stat().st_mtime_ns == trained_at
    assert json.loads((run_dir / "results.json").read_text())["arms"] == results["arms"]

    # a change to the evaluation only: training stays cached
    changed = tiny_recipe(tmp_path, eval={"tasks": ["heldout_loss", "arc_easy"], "limit": 7, "batch_size": 8})
    plan = evals_cli("run", str(changed), "--out", str(run_dir), "--dry-run")
    train_lines = [line for line in plan.stderr.splitlines() if " train " in line]
    eval_lines = [line for line in plan.stderr.splitlines() if " eval " in line]
    assert train_lines and all(line.strip().startswith("cached") for line in train_lines)
    assert any(line.strip().startswith("to do") for line in eval_lines)

    rebuilt = evals_cli("report", str(run_dir))
    assert rebuilt.returncode == 0 and "| all |" in rebuilt.stdout


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"arms": {"all": {"data": [{"path": "sample.jsonl"}], "steps": [{"dedupe": {"methd": "minhash"}}]}}},
         "arms.all.steps[0].dedupe"),
        ({"arms": {"all": {"data": [{"path": "missing.jsonl"}]}}}, "missing.jsonl"),
        ({"arms": {"all": {"data": [{"path": "sample.jsonl"}], "lr": 1}}}, "arms.all.lr"),
        ({"train": {"rank": 8}}, "train.rank"),
        ({"eval": {"tasks": ["arc_easyy"]}}, "eval.tasks[0]"),
        ({"baseline": "nope"}, "baseline"),
        ({"seedz": [0]}, "seedz"),
        ({"seeds": [0, 0, 0]}, "repeats a seed"),
        ({"eval": {"tasks": ["heldout_loss"], "min_seeds": 1}}, "eval.min_seeds"),
        ({"eval": {"tasks": ["heldout_loss"], "null_arm": True}}, "eval.null_arm"),  # the baseline is untrained
        ({"eval": {"tasks": ["heldout_loss"], "effects": {"arc_easy": 0.1}}}, "eval.effects.arc_easy"),
        ({"eval": {"tasks": ["heldout_loss"], "limit": 0}}, "eval.limit"),
        ({"eval": {"tasks": ["heldout_loss"], "batch_size": -1}}, "eval.batch_size"),
        ({"seeds": [-1]}, "seeds"),
        ({"model": ""}, "model"),
        ({"train": {"lr": -1}}, "train.lr"),
        ({"train": {"fsdp": True}}, "train.fsdp: each training job of evals run is one process"),
        ({"eval": {"tasks": ["heldout_loss"], "backend": "tgi"}}, "eval.backend"),
        ({"eval": {"tasks": ["heldout_loss"], "server": "localhost:8000"}}, "eval.server"),
        ({"eval": {"tasks": ["heldout_loss"], "backend": "hf", "server": "http://127.0.0.1:8000/v1"}}, "eval.server"),
        ({"eval": {"tasks": ["heldout_loss"], "backend": "vllm", "dtype": "int4"}}, "eval.dtype"),
        ({"arms": {"all": {"data": [{"path": "sample.jsonl"}], "steps": [{"corrupt": {"shuffle_words": 2}}]}}},
         "arms.all.steps[0].corrupt"),
    ],
)  # fmt: skip
def test_a_bad_recipe_fails_before_any_work_naming_the_key(tmp_path: Path, change: dict, named: str) -> None:
    recipe = tiny_recipe(tmp_path, **change)
    with pytest.raises(RecipeError, match=named.replace("[", r"\[").replace("]", r"\]")):
        load(recipe)
    result = evals_cli("run", str(recipe), "--out", str(tmp_path / "run"))
    assert result.returncode != 0 and named in result.stderr
    assert not (tmp_path / "run").exists()


def test_vllm_backend_with_the_ray_executor_is_refused_before_any_work(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    result = evals_cli("run", str(recipe), "--out", str(tmp_path / "run"), "--backend", "vllm", "--executor", "ray")
    assert result.returncode == 1 and "eval.backend vllm runs on the local executor" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_an_arm_vllm_cannot_serve_is_refused_with_the_vllm_backend_before_any_work(tmp_path: Path) -> None:
    dora = {"data": [{"path": "sample.jsonl"}], "train": {"method": "dora"}}
    recipe = tiny_recipe(tmp_path, arms={"base": {"train": False}, "all": dora})
    load(recipe)  # a DoRA arm is a good recipe: the hf backend scores it
    result = evals_cli("run", str(recipe), "--out", str(tmp_path / "run"), "--backend", "vllm")
    assert result.returncode == 1 and "arms.all: method dora cannot be served by vLLM" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_users_server_that_cannot_load_adapters_is_named_with_how_to_allow_it(tmp_path: Path) -> None:
    """eval.server pointing at a server without vLLM's runtime LoRA route (here datakit serve,
    which has none: a real 404) says how to start vLLM so that it can load the arm's adapter."""
    from datakit.serve import ChatModel, start
    from datakit.vllm import VllmError
    from evals.serving import ServedModels

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    server, _ = start(ChatModel("smollm2-135m"), log=tmp_path / "requests.jsonl")
    try:
        served = ServedModels({}, "float32", tmp_path, server=server.url, log=lambda line: None)
        assert served.get("smollm2-135m", None, "base").name == "smollm2-135m"  # the base: what it lists
        with pytest.raises(VllmError) as error:
            served.get("smollm2-135m", str(adapter), "arm-1")
    finally:
        server.shutdown()
    message = str(error.value)
    assert "load_lora_adapter: HTTP 404" in message and "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in message
    assert f"--lora-modules arm-1={adapter.resolve()}" in message


def test_a_bad_data_row_stops_the_run_naming_file_and_line(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    with open(tmp_path / "sample.jsonl", "a") as f:
        f.write('{"conversations": "not a list"}\n')
    result = evals_cli("run", str(recipe), "--out", str(tmp_path / "run"))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "sample.jsonl:13" in result.stderr


def test_shipped_tasks_load_offline_with_lm_evals_prompts(tmp_path: Path) -> None:
    from lm_eval.tasks import TaskManager, get_task_dict

    folder = materialize(tmp_path / "tasks", tmp_path / "hf")
    manager = TaskManager(include_path=str(folder))
    tasks = get_task_dict([t.lm_eval_name for t in TASKS.values()], manager)
    for task in TASKS.values():
        lm_task = tasks[task.lm_eval_name]
        docs = list(lm_task.eval_docs)
        lines = (DATA / task.files["test"]).read_text(encoding="utf-8").count("\n")
        assert len(docs) == lines, task.name
        text = lm_task.doc_to_text(docs[0])
        assert isinstance(text, (str, int)) and text != "", task.name
    arc = tasks["datakit_arc_easy"]
    first = next(iter(arc.eval_docs))
    assert arc.doc_to_text(first) == f"Question: {first['question']}\nAnswer:"
    assert arc.doc_to_choice(first) == first["choices"]["text"]
    wino = tasks["datakit_winogrande"]
    doc = next(iter(wino.eval_docs))
    contexts = wino.doc_to_choice(doc)
    assert contexts[0].endswith(doc["option1"]) and contexts[1].endswith(doc["option2"])


def test_ifeval_metric_runs_offline_with_the_shipped_punkt() -> None:
    import nltk

    from evals.lm import use_shipped_punkt

    use_shipped_punkt()
    assert nltk.sent_tokenize("He paid $3.50 for it. Then he left. Did he return?") == [
        "He paid $3.50 for it.", "Then he left.", "Did he return?",
    ]  # fmt: skip
    from lm_eval.tasks.ifeval.utils import process_results

    doc = {"key": 1, "prompt": "Answer in lowercase in at least 2 sentences.",
           "instruction_id_list": ["change_case:english_lowercase", "length_constraints:number_sentences"],
           "kwargs": [{}, {"relation": "at least", "num_sentences": 2}]}  # fmt: skip
    assert process_results(doc, ["this is fine. it has two sentences."])["prompt_level_strict_acc"] is True
    assert process_results(doc, ["This Is Not lowercase."])["prompt_level_strict_acc"] is False


def verdict_recipe(folder: Path, seeds: list[int]) -> Path:
    """Three arms of the same 48 records: the baseline, its null arm (another order) and a
    corrupted copy (every answer's words shuffled), trained hard enough to matter."""
    records = list(datakit.read_records(SAMPLE))[:48]
    datakit.write_records(records, folder / "sample.jsonl", to="sharegpt")
    data = [{"path": "sample.jsonl"}]
    recipe = {
        "name": "verdicts",
        "model": "smollm2-135m",
        "template": "chatml",
        "seeds": seeds,
        "train": {"lr": 3.0e-3, "dtype": "fp32", "gradient_checkpointing": False},
        "eval": {"tasks": ["heldout_loss"], "heldout": {"limit": 16}, "null_arm": True, "answers": 0},
        "arms": {"all": {"data": data}, "corrupted": {"data": data, "steps": [{"corrupt": {"shuffle_words": 1.0}}]}},
        "baseline": "all",
    }
    path = folder / f"recipe-{len(seeds)}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_verdicts_null_arm_within_noise_corrupted_arm_worse_one_seed_untested(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = evals_cli("run", str(verdict_recipe(tmp_path, [0, 1, 2])), "--out", str(run_dir), "--profile", "tiny")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["arms"]["null"]["heldout_loss"]["runs"] == ["seed-0", "seed-1", "seed-2"]  # the profile keeps 3
    null = results["arms"]["null"]["heldout_loss"]["delta"]
    corrupted = results["arms"]["corrupted"]["heldout_loss"]["delta"]
    assert null["tested"] and not null["significant"] and null["verdict"] == "within noise"
    assert corrupted["tested"] and corrupted["significant"] and corrupted["verdict"] == "worse"
    assert corrupted["mean"] > 0 and corrupted["low"] > 0
    md = (run_dir / "results.md").read_text()
    rows = {line.split(" |")[0]: line for line in md.splitlines() if line.startswith("| ")}
    assert "**\\***" in rows["| corrupted"] and "**\\***" not in rows["| null"]
    noise = results["tasks"]["heldout_loss"]["noise"]
    assert noise["seed_sd"] > 0 and noise["mde"] > 0 and "null arm" in md

    # a run folder written before verdicts needed seeds is reported with today's rules
    info = json.loads((run_dir / "run.json").read_text())
    for key in ("min_seeds", "effects"):
        del info[key]
    (run_dir / "run.json").write_text(json.dumps({**info, "replicates": 2000}))
    assert evals_cli("report", str(run_dir)).returncode == 0
    again = json.loads((run_dir / "results.json").read_text())
    assert again["arms"]["corrupted"]["heldout_loss"]["delta"] == corrupted
    assert again["arms"]["null"]["heldout_loss"]["delta"] == null

    # the same runs with one seed (all cached): estimates only, and the report says why
    one = evals_cli("run", str(verdict_recipe(tmp_path, [0])), "--out", str(run_dir), "--profile", "tiny")
    assert one.returncode == 0, one.stderr[-3000:]
    assert "0 of " in one.stderr  # nothing retrained
    results = json.loads((run_dir / "results.json").read_text())
    for arm in ("null", "corrupted"):
        d = results["arms"][arm]["heldout_loss"]["delta"]
        assert not d["tested"] and "significant" not in d
    md = (run_dir / "results.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert "Not tested" in md and "at least 3 seeds" in md and not any("**\\***" in line for line in table)


def test_corrupt_and_shuffle_damage_what_they_say_and_nothing_else() -> None:
    from datakit.errors import OptionError
    from datakit.perturb import CorruptConfig

    records = list(datakit.read_records(SAMPLE))[:40]
    before = json.dumps(records)
    answer = [r["messages"][-1]["content"] for r in records]

    result = datakit.run("corrupt", records, shuffle_responses=0.5, seed=3)
    swapped, counts = result.records, result.report.figures
    changed = [i for i, r in enumerate(swapped) if r["messages"][-1]["content"] != answer[i]]
    assert counts["responses swapped"] == 20 and len(changed) >= 19  # two records may share an answer
    assert sorted(r["messages"][-1]["content"] for r in swapped) == sorted(answer)  # answers moved, not lost
    assert [r["messages"][0] for r in swapped] == [r["messages"][0] for r in records]  # prompts untouched

    result = datakit.run("corrupt", records, shuffle_words=1.0)
    garbled, counts = result.records, result.report.figures
    assert counts["words shuffled"] == 40
    for original, damaged in zip(answer, garbled, strict=True):
        assert sorted(original.split()) == sorted(damaged["messages"][-1]["content"].split())
    long_answers = [(g, a) for g, a in zip(garbled, answer, strict=True) if len(set(a.split())) >= 5]
    assert long_answers and all(g["messages"][-1]["content"] != a for g, a in long_answers)

    reordered = datakit.run("shuffle", records, seed=1).records
    assert reordered != records and sorted(map(json.dumps, reordered)) == sorted(map(json.dumps, records))
    assert json.dumps(records) == before  # the input records are never changed
    with pytest.raises(OptionError, match="shuffle_words: must be between 0 and 1"):
        CorruptConfig(shuffle_words=1.5)
    with pytest.raises(OptionError, match="nothing to corrupt"):
        CorruptConfig()


def test_a_repeated_key_in_a_recipe_is_an_error_not_a_lost_arm(tmp_path: Path) -> None:
    path = tiny_recipe(tmp_path)
    text = path.read_text().replace("arms:\n", "arms:\n  all:\n    data:\n    - path: missing-first.jsonl\n", 1)
    path.write_text(text)  # two arms named "all": plain YAML would keep the second in silence
    with pytest.raises(RecipeError, match="'all' twice"):
        load(path)
    result = evals_cli("run", str(path), "--dry-run")
    assert result.returncode != 0 and "twice" in result.stderr and "Traceback" not in result.stderr


def test_a_repeated_key_in_a_training_config_is_an_error(tmp_path: Path) -> None:
    from train.config import ConfigError, TrainConfig

    config = tmp_path / "train.yaml"
    config.write_text("lr: 1.0e-4\nmax_steps: 5\nlr: 1.0e-2\n")
    with pytest.raises(ConfigError, match="'lr' twice"):
        TrainConfig.from_yaml(config)


@pytest.mark.slow
def test_an_arm_with_a_synth_step_runs_end_to_end(tmp_path: Path, monkeypatch) -> None:
    """A recipe arm whose data is judged by an LLM (datakit serve on loopback, the embedded
    SmolLM2) is built, trained and scored; the step's report is stored beside its output."""
    from datakit.serve import ChatModel, start

    monkeypatch.setenv("DATAKIT_CACHE_DIR", str(tmp_path / "cache"))
    server, _ = start(ChatModel("smollm2-135m"))
    try:
        judge = {"method": "judge", "base_url": server.url, "model": "smollm2-135m", "max_tokens": 8,
                 "threshold": 0, "concurrency": 1}  # fmt: skip
        arms = {"base": {"train": False}, "judged": {"data": [{"path": "sample.jsonl"}], "steps": [{"synth": judge}]}}
        recipe = tiny_recipe(tmp_path, arms=arms, eval={"tasks": ["heldout_loss"], "limit": 6, "batch_size": 8})
        result = evals_cli("run", str(recipe), "--out", str(tmp_path / "run"))
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert "mean" in results["arms"]["judged"]["heldout_loss"]["estimate"]
    reports = [json.loads(p.read_text()) for p in (tmp_path / "run" / "cache" / "data").glob("*.summary.json")]
    (synth,) = [r for r in reports if r.get("step") == "synth"]
    assert synth["read"] == 12 == synth["written"] + sum(synth["removed"].values())
    assert synth["figures"]["requests answered"] == 12 and synth["written"] > 0


@pytest.mark.slow
def test_a_killed_run_resumes_training_and_reports_what_an_uninterrupted_run_does(tmp_path: Path) -> None:
    """SIGKILL during training, after a checkpoint: the rerun continues from the checkpoint
    (it does not train from step 0 again) and its results are those of a run never killed."""
    import os
    import signal
    import time

    train = {"max_steps": 4, "save_every": 2, "batch_size": 2, "max_length": 96, "lr": 1.0e-3, "dtype": "fp32"}
    recipe = tiny_recipe(tmp_path, train=train, eval={"tasks": ["heldout_loss"], "limit": 6, "batch_size": 8})
    whole = evals_cli("run", str(recipe), "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]

    run_dir = tmp_path / "killed"
    args = [sys.executable, "-m", "evals.cli", "run", str(recipe), "--out", str(run_dir)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(run_dir.glob("cache/train/*/checkpoints/step-*")) and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "results.json").exists()

    again = evals_cli("run", str(recipe), "--out", str(run_dir))
    assert again.returncode == 0, again.stderr[-3000:]
    trained = json.loads(next(run_dir.glob("cache/train/*/train_result.json")).read_text())
    assert trained["resumed_from"] in (2, 4)  # from a checkpoint, not from step 0
    resumed, reference = (json.loads((d / "results.json").read_text())["arms"] for d in (run_dir, tmp_path / "whole"))
    for arm in reference:
        assert resumed[arm]["heldout_loss"]["estimate"]["mean"] == pytest.approx(
            reference[arm]["heldout_loss"]["estimate"]["mean"], rel=1e-5
        )
