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
from test_evals import tiny_recipe

from evals.recipe import load
from evals.run import Plan

pytestmark = pytest.mark.vllm


def scores(recipe_path: Path, run_dir: Path, backend: str) -> dict[tuple[str, str, str], dict]:
    recipe = load(recipe_path)
    recipe.backend = backend
    plan = Plan(recipe, run_dir)
    return {key: json.loads(path.read_text()) for key, path in plan.eval_files.items()}


def test_vllm_backend_scores_the_same_items_as_hf(tmp_path: Path) -> None:
    train = {"max_steps": 4, "batch_size": 2, "max_length": 96, "lr": 1.0e-2, "dtype": "fp32"}  # a visible change
    recipe = tiny_recipe(tmp_path, seeds=[0], train=train, eval={"tasks": ["heldout_loss", "arc_easy"], "limit": 24, "batch_size": 8, "dtype": "float32"})  # fmt: skip
    run_dir = tmp_path / "run"
    for backend in ("hf", "vllm"):
        done = subprocess.run([sys.executable, "-m", "evals.cli", "run", str(recipe), "--out", str(run_dir),
                               "--backend", backend], capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    assert "vLLM: starting base + 1 LoRA adapter(s)" in done.stderr
    assert not [line for line in done.stderr.splitlines() if "] train " in line]  # training was reused
    hf, vllm = scores(recipe, run_dir, "hf"), scores(recipe, run_dir, "vllm")
    assert hf.keys() == vllm.keys() and len(hf) == 4  # base and the trained arm, two tasks each
    same = total = 0
    for key in hf:
        hf_items = {i[0]: i[1:] for i in hf[key]["items"]}
        vllm_items = {i[0]: i[1:] for i in vllm[key]["items"]}
        assert hf_items.keys() == vllm_items.keys(), key
        if key[2] == "heldout_loss":
            # the same tokens are scored: token counts equal, losses equal to fp32's error
            assert all(hf_items[i][1] == vllm_items[i][1] for i in hf_items), key
            assert vllm[key]["value"] == pytest.approx(hf[key]["value"], rel=1e-3), key
        else:
            same += sum(hf_items[i] == vllm_items[i] for i in hf_items)
            total += len(hf_items)
    assert same / total >= 0.95, f"{same} of {total} multiple-choice items score the same"

    # the adapter changes vLLM's answers as it changes hf's: it was really applied
    def change(results: dict) -> float:
        return (
            results[("all", "seed-0", "heldout_loss")]["value"]
            - results[("base", "untrained", "heldout_loss")]["value"]
        )

    assert abs(change(hf)) > 3e-3 and change(vllm) == pytest.approx(change(hf), abs=1e-3)
