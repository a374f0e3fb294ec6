"""evals scored through vLLM agree with the transformers backend, item by item (``pytest -m vllm``).

One tiny recipe runs twice in the same folder: first with the default backend (hf), then with
``--backend vllm``. Training is cached and reused; only the scoring runs again, on a vLLM server
that datakit starts with the trained adapter as a LoRA module. vLLM runs in fp32 here
(``eval.dtype``), as the hf backend does, so the two must agree closely; the bf16 default's
agreement is measured by benchmarks/eval_speed.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_evals import tiny_recipe

from datakit.models import resolve_llm
from datakit.vllm import VllmServer, lora_rank, lora_targets
from evals.recipe import load
from evals.run import Plan

pytestmark = pytest.mark.vllm


def scores(recipe_path: Path, run_dir: Path, backend: str) -> dict[tuple[str, str, str], dict]:
    recipe = load(recipe_path)
    recipe.backend = backend
    plan = Plan(recipe, run_dir)
    return {key: json.loads(path.read_text()) for key, path in plan.eval_files.items()}


def assert_agree(hf: dict, other: dict) -> None:
    """Per item: held-out loss over the same tokens to fp32's error, >= 95% of multiple-choice items the same."""
    assert hf.keys() == other.keys() and len(hf) == 4  # base and the trained arm, two tasks each
    same = total = 0
    for key in hf:
        hf_items = {i[0]: i[1:] for i in hf[key]["items"]}
        other_items = {i[0]: i[1:] for i in other[key]["items"]}
        assert hf_items.keys() == other_items.keys(), key
        if key[2] == "heldout_loss":
            # the same tokens are scored: token counts equal, losses equal to fp32's error
            assert all(hf_items[i][1] == other_items[i][1] for i in hf_items), key
            assert other[key]["value"] == pytest.approx(hf[key]["value"], rel=1e-3), key
        else:
            same += sum(hf_items[i] == other_items[i] for i in hf_items)
            total += len(hf_items)
    assert same / total >= 0.95, f"{same} of {total} multiple-choice items score the same"

    # the adapter changes vLLM's answers as it changes hf's: it was really applied
    def change(results: dict) -> float:
        return (
            results[("all", "seed-0", "heldout_loss")]["value"]
            - results[("base", "untrained", "heldout_loss")]["value"]
        )

    assert abs(change(hf)) > 3e-3 and change(other) == pytest.approx(change(hf), abs=1e-3)


def test_vllm_backend_scores_the_same_items_as_hf(tmp_path: Path, monkeypatch) -> None:
    """Then the same recipe with ``eval.server``: a vLLM server the user started (the base model
    only, LoRA switched on); datakit loads the trained adapter into it at run time."""
    train = {"max_steps": 4, "batch_size": 2, "max_length": 96, "lr": 1.0e-2, "dtype": "fp32"}  # a visible change
    evaluation = {"tasks": ["heldout_loss", "arc_easy"], "limit": 24, "batch_size": 8, "dtype": "float32"}
    recipe = tiny_recipe(tmp_path, seeds=[0], train=train, eval=evaluation)
    run_dir = tmp_path / "run"
    for backend in ("hf", "vllm"):
        done = subprocess.run([sys.executable, "-m", "evals.cli", "run", str(recipe), "--out", str(run_dir),
                               "--backend", backend], capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    assert "vLLM: starting base + 1 LoRA adapter(s)" in done.stderr
    assert not [line for line in done.stderr.splitlines() if "] train " in line]  # training was reused
    hf = scores(recipe, run_dir, "hf")
    assert_agree(hf, scores(recipe, run_dir, "vllm"))

    # the user's own server: started without the adapter, which datakit loads into it by name
    plan = Plan(load(recipe), run_dir)
    adapters = {key: adapter for _, adapter, key in plan.model_of.values() if adapter}
    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
    lora = ["--enable-lora", "--max-lora-rank", str(lora_rank(adapters)), "--lora-target-modules",
            *lora_targets(adapters)]  # fmt: skip
    users = VllmServer(resolve_llm("smollm2-135m"), "smollm2", dtype="float32", extra_args=lora,
                       log_file=tmp_path / "users-vllm.log", log=lambda line: None)  # fmt: skip
    with users.start():
        on_server = tmp_path / "recipe-server.yaml"
        values = yaml.safe_load(recipe.read_text())
        values["eval"]["server"] = users.url
        on_server.write_text(yaml.safe_dump(values))
        done = subprocess.run([sys.executable, "-m", "evals.cli", "run", str(on_server), "--out", str(run_dir)],
                              capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"vLLM: loading adapter {next(iter(adapters))} into {users.url}" in done.stderr
    assert not [line for line in done.stderr.splitlines() if "] train " in line]
    assert_agree(hf, scores(on_server, run_dir, "vllm"))
