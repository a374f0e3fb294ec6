"""The trainer on the embedded SmolLM2-135M, on CPU: packing, LoRA, reload, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import fixture_path
from safetensors.torch import load_file

import datakit
from train import ConfigError, TrainConfig, TrainError, fit
from train.batches import collate, pack_rows
from train.labels import tokenize_all
from train.recipe import token_loss_sum

SAMPLE = Path(__file__).resolve().parents[1] / "datakit" / "data" / "alpaca_sample.json"
SHAREGPT = fixture_path("axolotl/conversation.json")


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from datakit.models import resolve_llm

    path = resolve_llm("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


def small_set(tmp_path: Path, n: int) -> Path:
    """The first n records of the bundled Alpaca sample, as a file of their own."""
    records = list(datakit.read_records(SAMPLE))[:n]
    path = tmp_path / "small.jsonl"
    datakit.write_records(records, path, to="sharegpt")
    return path


def tiny_config(data: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(data=[str(data)], out=str(out), max_steps=8, batch_size=4, max_length=96, lr=1e-3,
                  dtype="fp32", save_every=2, threads=2, warmup_ratio=0.0)  # fmt: skip
    return TrainConfig(**{**values, **overrides})


def test_packed_and_unpacked_batches_give_the_same_loss(smollm2) -> None:
    model, tokenizer = smollm2
    records = list(datakit.read_records(SHAREGPT)) + list(datakit.read_records(SAMPLE))[:6]
    examples = tokenize_all(records, tokenizer, "tokenizer", max_length=256).examples
    order = list(range(len(examples)))
    unpacked = collate(examples, [[i] for i in order], tokenizer.eos_token_id, packing=False)
    packed_rows = pack_rows(examples, order, 512)
    packed = collate(examples, packed_rows, tokenizer.eos_token_id, packing=True)
    assert len(packed_rows) < len(examples)  # several records really share a row
    assert packed.trained_tokens == unpacked.trained_tokens
    with torch.no_grad():
        loss_unpacked = token_loss_sum(model, unpacked, "cpu") / unpacked.trained_tokens
        loss_packed = token_loss_sum(model, packed, "cpu") / packed.trained_tokens
        # the same rows with a plain causal mask: records see their neighbours, and the loss moves
        leaky = collate(examples, packed_rows, tokenizer.eos_token_id, packing=False)
        leaky.position_ids = None
        loss_leaky = token_loss_sum(model, leaky, "cpu") / leaky.trained_tokens
    assert float(loss_packed) == pytest.approx(float(loss_unpacked), rel=1e-4)
    assert abs(float(loss_leaky) - float(loss_unpacked)) > 1e-3


def test_lora_loss_falls_and_the_saved_adapter_reproduces_the_logits(tmp_path: Path, smollm2) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data = small_set(tmp_path, 8)  # 2 steps an epoch: 8 steps see each record 4 times
    result = fit(tiny_config(data, tmp_path / "run", merge=True), progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == 8 and result.steps == 8
    assert sum(losses[-2:]) < 0.8 * sum(losses[:2])
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0
    assert json.loads((Path(result.adapter) / "datakit.json").read_text())["template"] == "tokenizer"

    _, tokenizer = smollm2
    ids = tokenizer("Give three tips for staying healthy.", return_tensors="pt").input_ids
    base = AutoModelForCausalLM.from_pretrained(_base_path(), dtype=torch.float32)
    with torch.no_grad():
        base_logits = base(ids).logits
        adapted = PeftModel.from_pretrained(base, result.adapter).eval()
        adapter_logits = adapted(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(result.model, dtype=torch.float32).eval()
        merged_logits = merged(ids).logits
    # the trained weights in the last checkpoint are the ones in the adapter file
    trained = load_file(tmp_path / "run" / "checkpoints" / "step-8" / "trainable.safetensors")
    saved = load_file(Path(result.adapter) / "adapter_model.safetensors")
    assert len(saved) == len(trained) > 0
    for name, value in trained.items():
        key = name.replace(".default.weight", ".weight")
        assert torch.equal(saved[key], value), name
    assert (adapter_logits - base_logits).abs().max() > 1e-2  # the adapter changes the model
    torch.testing.assert_close(merged_logits, adapter_logits, atol=1e-4, rtol=1e-4)


def _base_path() -> str:
    from datakit.models import resolve_llm

    return resolve_llm("smollm2-135m")


def test_killed_run_resumes_to_the_same_adapter(tmp_path: Path) -> None:
    data = small_set(tmp_path, 12)
    reference = fit(tiny_config(data, tmp_path / "whole"), progress=False)

    out = tmp_path / "killed"
    args = [sys.executable, "-m", "datakit.cli", "train", "--data", str(data), "--out", str(out), "--max-steps", "8",
            "--batch-size", "4", "--max-length", "96", "--lr", "1e-3", "--dtype", "fp32", "--save-every", "2",
            "--threads", "2", "--quiet"]  # fmt: skip
    config_file = tmp_path / "train.yaml"
    config_file.write_text("warmup_ratio: 0.0\n")
    args += ["--config", str(config_file)]
    proc = subprocess.Popen(args, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step-4").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "train_result.json").exists()

    again = subprocess.run(args, capture_output=True, text=True)
    assert "pass --resume" in again.stderr  # a checkpoint is never silently overwritten
    subprocess.run([*args, "--resume"], check=True)
    result = json.loads((out / "train_result.json").read_text())
    assert result["resumed_from"] in (4, 6)
    steps = [json.loads(line)["step"] for line in (out / "loss.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # no step logged twice, none missing

    whole = load_file(Path(reference.adapter) / "adapter_model.safetensors")
    resumed = load_file(out / "adapter" / "adapter_model.safetensors")
    assert whole.keys() == resumed.keys()
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], atol=1e-6, rtol=1e-5)


def test_bad_settings_are_named_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="lora_rank"):
        TrainConfig.from_dict({"lora_rank": 8})
    with pytest.raises(ConfigError, match="template"):
        TrainConfig(data=["x"], template="zephyr")
    with pytest.raises(ConfigError, match="missing.jsonl"):
        fit(TrainConfig(data=[str(tmp_path / "missing.jsonl")], out=str(tmp_path / "o")), progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(TrainError, match="CUDA"):
            fit(tiny_config(small_set(tmp_path, 4), tmp_path / "q", method="qlora"), progress=False)
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 1e-4\nbatch: 8\n")
    run = subprocess.run([sys.executable, "-m", "datakit.cli", "train", "--config", str(bad), "--data", "x.jsonl"],
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode != 0 and "bad.yaml" in run.stderr and "'batch'" in run.stderr


def test_full_fine_tune_writes_a_standalone_model(tmp_path: Path, smollm2) -> None:
    from transformers import AutoModelForCausalLM

    data = small_set(tmp_path, 4)
    result = fit(tiny_config(data, tmp_path / "full", method="full", max_steps=2, batch_size=2, max_length=48,
                             lr=1e-5), progress=False)  # fmt: skip
    assert result.adapter is None and (Path(result.model) / "model.safetensors").exists()
    assert json.loads((Path(result.model) / "datakit.json").read_text())["method"] == "full"
    tuned = AutoModelForCausalLM.from_pretrained(result.model, dtype=torch.float32)
    base, _ = smollm2
    changed = [n for n, p in tuned.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert len(changed) > 100  # every layer moved, not just an adapter
