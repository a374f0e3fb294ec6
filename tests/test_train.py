"""The trainer on the embedded SmolLM2-135M, on CPU: packing, LoRA, reload, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
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
    with pytest.raises(ConfigError, match="train: fsdp: 'no' is not true or false"):  # (a quoted 'no' is truthy)
        TrainConfig.from_dict({"data": ["x"], "fsdp": "no"}, where="train")
    with pytest.raises(ConfigError, match="fsdp: True is not allowed; expected false with qlora"):
        TrainConfig(data=["x"], method="qlora", fsdp=True)
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


# --- the other tuning methods (issue 16): each trains, saves, reloads and scores -----------------

# (learning rate, steps, the loss's least fall): the prompt-learning methods want higher rates;
# P-tuning's encoder is the most fragile: at 1e-3 its loss fell 1.0% in 8 steps on an Intel Xeon but
# only jittered around the start on an AMD EPYC (a CI failure); 3e-3 and 1e-2 spike. At 1e-4 it falls
# smoothly (AMD EPYC: 1.6646 -> 1.6488 in 8 steps)
METHODS = {"dora": (1e-3, 4, 0.03), "rslora": (1e-3, 4, 0.03), "ia3": (3e-2, 4, 0.03), "prompt": (3e-2, 4, 0.03),
           "ptuning": (1e-4, 8, 0.005), "prefix": (1e-2, 4, 0.03)}  # fmt: skip


@pytest.mark.parametrize("method", list(METHODS))
def test_each_tuning_method_trains_saves_and_scores_after_reload(tmp_path: Path, method: str) -> None:
    from evals.heldout import score

    data = small_set(tmp_path, 2)  # one batch of two records, four times: the loss must fall
    lr, steps, fall = METHODS[method]
    config = tiny_config(data, tmp_path / method, method=method, max_steps=steps, batch_size=2, max_length=512,
                         lr=lr, virtual_tokens=8)  # fmt: skip
    result = fit(config, progress=False)
    adapter_config = json.loads((Path(result.adapter) / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == {"dora": "LORA", "rslora": "LORA", "ia3": "IA3", "prompt": "PROMPT_TUNING",
                                           "ptuning": "P_TUNING", "prefix": "PREFIX_TUNING"}[method]  # fmt: skip
    assert adapter_config.get("use_dora", False) == (method == "dora")
    assert adapter_config.get("use_rslora", False) == (method == "rslora")
    losses = [json.loads(line)["loss"] for line in (tmp_path / method / "loss.jsonl").read_text().splitlines()]
    assert losses[-1] < (1 - fall) * losses[0], (method, losses)  # it learns
    # reloaded from its folder the way evals score it, the adapter is applied (virtual tokens included)
    records = list(datakit.read_records(data))
    base = score(_base_path(), None, "tokenizer", records)
    after = score(_base_path(), result.adapter, "tokenizer", records)
    assert [(i, n) for i, _, n in after] == [(i, n) for i, _, n in base]  # the same tokens are scored
    mean_after = sum(loss for _, loss, _ in after) / sum(n for _, _, n in after)
    mean_base = sum(loss for _, loss, _ in base) / sum(n for _, _, n in base)
    assert abs(mean_after - mean_base) > 0.01 * mean_base, (method, mean_base, mean_after)
    if method not in ("prefix", "ptuning"):  # these start from random keys/encoders, worse than the base
        assert mean_after < mean_base, (method, mean_base, mean_after)


def test_prompt_learning_refuses_packing_and_merge(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="packing: True is not allowed; expected false with method prefix"):
        TrainConfig(data=["x"], method="prefix", packing=True)
    with pytest.raises(ConfigError, match="merge"):
        TrainConfig(data=["x"], method="prompt", merge=True)
    with pytest.raises(ConfigError, match="method: 'p-tuning' is not allowed; expected lora, dora"):
        TrainConfig(data=["x"], method="p-tuning")


# --- data order (issue 16): each choice as documented, and reproducible from the seed --------------


def order_of(config: TrainConfig, tokenizer) -> list[list[int]]:
    """The example indices of the first two epochs of config's plan, as the trainer would take them."""
    from train.batches import plan_steps
    from train.recipe import load_examples

    _, tokenized, ordering = load_examples(config, tokenizer)
    total, steps = plan_steps(tokenized.examples, batch_size=1, grad_accum=1, seed=config.seed, packing=False,
                              max_length=config.max_length, epochs=2, max_steps=None, ordering=ordering)  # fmt: skip
    flat = [rows[0][0] for micro in steps for rows in micro]
    return [flat[: total // 2], flat[total // 2 :]]


def test_each_data_order_is_as_documented_and_reproducible(tmp_path: Path, smollm2) -> None:
    _, tokenizer = smollm2
    records = list(datakit.read_records(SAMPLE))[:24]
    for k, record in enumerate(records):
        record["meta"]["difficulty"] = (k * 7) % 5  # ties, so the seed decides within a level
        del record["meta"]["source"]  # (else both files' records come from the sample: one source)
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    datakit.write_records(records[:12], first, to="canonical")
    datakit.write_records(records[12:], second, to="canonical")

    def config(order: str, seed: int = 0) -> TrainConfig:
        return TrainConfig(data=[str(first), str(second)], order=order, seed=seed, max_length=512)

    lengths = [len(ex.input_ids) for ex in load_examples_of(config("shuffled"), tokenizer)]
    for order in ("shuffled", "as_given", "by_length", "by_source", "curriculum:difficulty"):
        epochs = order_of(config(order), tokenizer)
        assert epochs == order_of(config(order), tokenizer), order  # reproducible from the seed
        assert all(sorted(e) == list(range(24)) for e in epochs), order  # every record once an epoch
        if order == "as_given":
            assert epochs == [list(range(24))] * 2
        elif order == "by_length":
            assert all([lengths[i] for i in e] == sorted(lengths) for e in epochs)
        elif order == "by_source":  # the first file's records, then the second's, shuffled within each
            assert all(sorted(e[:12]) == list(range(12)) for e in epochs) and epochs[0] != epochs[1]
        elif order == "curriculum:difficulty":
            levels = [[(k * 7) % 5 for k in e] for e in epochs]
            assert all(level == sorted(level) for level in levels) and epochs[0] != epochs[1]
        if order != "as_given":  # another seed, another order (within ties for the sorted ones)
            assert order_of(config(order, seed=1), tokenizer) != epochs or order == "by_length", order
    with pytest.raises(ConfigError, match=r"order: curriculum:score: record \w+ has no number meta\['score'\]"):
        order_of(config("curriculum:score"), tokenizer)
    with pytest.raises(ConfigError, match="order: 'random' is not allowed"):
        config("random")

    # A checkpoint's fingerprint covers what orders the data: other meta values under curriculum
    # are another run (resume refuses it); without a curriculum the meta value is not read.
    from train.recipe import data_fingerprint, load_examples

    def fingerprint(order: str) -> str:
        _, tokenized, ordering = load_examples(config(order), tokenizer)
        return data_fingerprint(tokenized, ordering)

    before = {order: fingerprint(order) for order in ("shuffled", "curriculum:difficulty")}
    records[0]["meta"]["difficulty"] = 99
    datakit.write_records(records[:12], first, to="canonical")
    assert fingerprint("curriculum:difficulty") != before["curriculum:difficulty"]
    assert fingerprint("shuffled") == before["shuffled"]


def load_examples_of(config: TrainConfig, tokenizer) -> list:
    from train.recipe import load_examples

    return load_examples(config, tokenizer)[1].examples


# --- more than one process (issue 16) --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "sharding"),
    [("lora", []), ("full", ["--fsdp"])],
    ids=["lora-data-parallel", "full-fsdp"],
)
def test_two_processes_train_as_one_with_twice_the_accumulation_and_resume_after_a_kill(
    tmp_path: Path, method: str, sharding: list[str]
) -> None:
    """``torchrun`` with two gloo processes on CPU gives the loss curve and weights of one process
    accumulating over both processes' micro-batches (dropout on: its masks follow the
    micro-batch), whether each process holds the whole model (LoRA) or a shard of it (a full
    fine-tune with FSDP). Killed (both processes, SIGKILL) after its step-2 checkpoint, it
    continues from that checkpoint with ``--resume`` and ends as if it had never stopped."""
    data = small_set(tmp_path, 14)  # 7 micro-batches of 2: the last step holds 3 of the 4 a step takes
    common = ["train", "--data", str(data), "--max-steps", "4", "--save-every", "2", "--batch-size", "2",
              "--max-length", "96", "--lr", "1e-3", "--dtype", "fp32", "--threads", "1", "--quiet",
              "--method", method]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "datakit.cli", *common, "--grad-accum", "2", "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env)  # fmt: skip
    assert one.returncode == 0, one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                "datakit.cli", *common, *sharding, "--out", str(tmp_path / "two")]  # fmt: skip
    proc = subprocess.Popen(torchrun, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (tmp_path / "two" / "checkpoints" / "step-2").exists() and time.monotonic() < deadline:
        assert proc.poll() is None, "the job ended before it could be killed"
        time.sleep(0.05)
    # torchrun starts each worker in a session of its own: kill the agent and its workers alike
    family = [proc, *psutil.Process(proc.pid).children(recursive=True)]
    for member in family:
        member.send_signal(signal.SIGKILL)
    proc.wait()
    psutil.wait_procs([m for m in family if isinstance(m, psutil.Process)], timeout=10)
    weights = "adapter/adapter_model.safetensors" if method == "lora" else "model/model.safetensors"
    assert not (tmp_path / "two" / weights).exists()
    again = subprocess.run([*torchrun, "--resume"], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "train_result.json").read_text())["resumed_from"] == 2
    logs = [[json.loads(line) for line in (tmp_path / run / "loss.jsonl").read_text().splitlines()]
            for run in ("one", "two")]  # fmt: skip
    assert [a["step"] for a in logs[0]] == [b["step"] for b in logs[1]] == [1, 2, 3, 4]
    for a, b in zip(*logs, strict=True):
        assert (a["tokens"], a["trained_tokens"]) == (b["tokens"], b["trained_tokens"])
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5) and b["grad_norm"] == pytest.approx(
            a["grad_norm"], rel=1e-4
        )
    single, split = (load_file(tmp_path / run / weights) for run in ("one", "two"))
    assert single.keys() == split.keys()
    # FSDP sums the shards' gradients in another order: Adam's early, nearly sign-sized steps
    # carry that rounding into weights at about 3e-5 (of updates up to 4e-3)
    tolerance = {"atol": 1e-6, "rtol": 1e-5} if method == "lora" else {"atol": 2e-4, "rtol": 1e-4}
    for name, value in single.items():
        torch.testing.assert_close(split[name], value, **tolerance)
    assert [p.name for p in (tmp_path / "two" / "checkpoints").iterdir()] == ["step-4"]  # one writer, the newest kept


def test_settings_added_later_keep_earlier_cache_keys_at_their_defaults() -> None:
    """An evals cache made before ``order`` and ``virtual_tokens`` existed stays valid: at the
    defaults that reproduce the earlier training they are not part of the compared settings."""
    plain = TrainConfig(data=["x"]).outcome_settings()
    assert "order" not in plain and "virtual_tokens" not in plain and plain["method"] == "lora"
    assert TrainConfig(data=["x"], order="by_length").outcome_settings()["order"] == "by_length"
    assert TrainConfig(data=["x"], method="prompt", virtual_tokens=8).outcome_settings()["virtual_tokens"] == 8
