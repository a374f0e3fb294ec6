"""Training speed: datakit's trainer against TRL's SFTTrainer, same model, data and LoRA, one run.

LoRA (r 8, alpha 16, dropout 0.05, all linear layers) on the embedded SmolLM2-135M-Instruct,
batch 8 x 256 tokens, lr 2e-4, on LLaMA-Factory's alpaca_en_demo (single-turn prompt and
completion, so both train on the completion only), torch threads = 2. Each side runs in a
fresh process; the first step is a warm-up and is not counted. Tokens are real (non-padding)
tokens. Peak memory is the process tree's resident set, sampled every 50 ms.

Rows:
1. like for like: fp32 weights, no gradient checkpointing, both sides;
2. datakit's CPU default (bf16 base weights where the CPU has bf16, gradient checkpointing);
3. that default with packing, against its own unpacked row.

    python benchmarks/train_speed.py [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _measure import run_process

FIXTURE = Path(__file__).resolve().parents[1] / "tests/fixtures/formats/llama-factory/alpaca_en_demo.json"

DATAKIT_SIDE = """
import json, sys
from train import TrainConfig, fit
data, out, steps, dtype, ckpt, packing = sys.argv[1:7]
fit(TrainConfig(data=[data], out=out, max_steps=int(steps), batch_size=8, max_length=256, lr=2e-4, threads=2,
                dtype=dtype, gradient_checkpointing=ckpt == "1", packing=packing == "1", save_every=10**6),
    progress=False)
rows = [json.loads(l) for l in open(out + "/loss.jsonl")][1:]
print(json.dumps({"tokens": sum(r["tokens"] for r in rows), "seconds": sum(r["seconds"] for r in rows)}))
"""

TRL_SIDE = """
import json, sys, time, torch
torch.set_num_threads(2)
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer
from datakit.models import resolve_llm
data, out, steps = sys.argv[1:4]
rows = json.load(open(data))
def prompt(r):
    return r["instruction"] + ("\\n" + r["input"] if r.get("input") else "")
dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": prompt(r)}],
                              "completion": [{"role": "assistant", "content": r["output"]}]} for r in rows])
path = resolve_llm("smollm2-135m")
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
tokens, times = [], []
class Count(SFTTrainer):
    def compute_loss(self, model, inputs, *args, **kwargs):
        tokens.append(int(inputs["attention_mask"].sum()))
        return super().compute_loss(model, inputs, *args, **kwargs)
class Clock(TrainerCallback):
    def on_step_begin(self, *a, **k): times.append([time.perf_counter()])
    def on_step_end(self, *a, **k): times[-1].append(time.perf_counter())
config = SFTConfig(output_dir=out, max_steps=int(steps), per_device_train_batch_size=8, max_length=256,
                   learning_rate=2e-4, completion_only_loss=True, packing=False, use_cpu=True, bf16=False,
                   report_to=[], save_strategy="no", logging_steps=1, seed=0, dataloader_num_workers=0)
lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
trainer = Count(model=model, args=config, train_dataset=dataset, processing_class=AutoTokenizer.from_pretrained(path),
                peft_config=lora, callbacks=[Clock()])
trainer.train()
print(json.dumps({"tokens": sum(tokens[1:]), "seconds": sum(b - a for a, b in times[1:])}))
"""


def run(code: str, *args: str) -> dict:
    """The side's last printed JSON line, plus its peak resident memory in GB."""
    out, peak = run_process(code, *args)
    figures = json.loads(out.strip().splitlines()[-1])
    return {**figures, "tokens_per_s": figures["tokens"] / figures["seconds"], "peak_gb": peak / 1024}


def line(name: str, r: dict) -> str:
    return f"  {name:<44} {r['tokens_per_s']:7.1f} tokens/s   {r['seconds'] / r['steps']:6.2f} s/step   peak {r['peak_gb']:.2f} GB"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per side (the first is not counted)")
    args = parser.parse_args()
    steps = str(args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        data = str(FIXTURE)
        results = {}
        results["trl"] = run(TRL_SIDE, data, f"{tmp}/trl", steps)
        results["datakit"] = run(DATAKIT_SIDE, data, f"{tmp}/a", steps, "fp32", "0", "0")
        results["default"] = run(DATAKIT_SIDE, data, f"{tmp}/b", steps, "auto", "1", "0")
        results["packed"] = run(DATAKIT_SIDE, data, f"{tmp}/c", steps, "auto", "1", "1")
    for r in results.values():
        r["steps"] = args.steps - 1
    print(f"LoRA on SmolLM2-135M, batch 8 x 256, {FIXTURE.name}, {args.steps - 1} timed steps per side")
    print("1. like for like (fp32 weights, no gradient checkpointing)")
    print(line("TRL SFTTrainer (completion_only_loss)", results["trl"]))
    print(line("datakit train", results["datakit"]))
    print(f"  ratio datakit / TRL: {results['datakit']['tokens_per_s'] / results['trl']['tokens_per_s']:.2f}x")
    print("2. datakit's CPU default (dtype auto, gradient checkpointing)")
    print(line("datakit train, unpacked", results["default"]))
    print("3. packing")
    print(line("datakit train --packing", results["packed"]))
    print(f"  ratio packed / unpacked: {results['packed']['tokens_per_s'] / results['default']['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
