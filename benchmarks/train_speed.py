"""Training speed: datakit's trainer against TRL's SFTTrainer, same model, data and LoRA, one run.

LoRA (r 8, alpha 16, dropout 0.05, all linear layers) on the embedded SmolLM2-135M-Instruct,
batch 8 x 256 tokens, lr 2e-4, on LLaMA-Factory's alpaca_en_demo (single-turn prompt and
completion, so both train on the completion only), torch threads = 2. Each side runs in a
fresh process; the first step is a warm-up and is not counted. Tokens are real (non-padding)
tokens. Peak memory is the process tree's resident set, sampled every 50 ms.

Rows:
1. like for like: fp32 weights, no gradient checkpointing, both sides;
2. like for like with gradient checkpointing, both sides (TRL's SFTConfig default since 0.20: an
   earlier version of this script left it on for TRL only, and so compared TRL's memory with
   checkpointing against datakit's without);
3. datakit's CPU default (bf16 base weights where the CPU has bf16, gradient checkpointing);
4. that default with packing, against its own unpacked row;
5. each tuning method (``--method``) at the CPU default, fewer steps (``--method-steps``).

    python benchmarks/train_speed.py [--steps 6] [--method-steps 3] [--rows like,default,methods]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _measure import cpu_name, run_process

FIXTURE = Path(__file__).resolve().parents[1] / "tests/fixtures/formats/llama-factory/alpaca_en_demo.json"

DATAKIT_SIDE = """
import json, sys
from train import TrainConfig, fit
data, out, steps, dtype, ckpt, packing, method = sys.argv[1:8]
fit(TrainConfig(data=[data], out=out, max_steps=int(steps), batch_size=8, max_length=256, lr=2e-4, threads=2,
                dtype=dtype, gradient_checkpointing=ckpt == "1", packing=packing == "1", save_every=10**6,
                method=method), progress=False)
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
data, out, steps, ckpt = sys.argv[1:5]
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
                   report_to=[], save_strategy="no", logging_steps=1, seed=0, dataloader_num_workers=0,
                   gradient_checkpointing=ckpt == "1")
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


def line(name: str, r: dict, steps: int) -> str:
    per_step = r["seconds"] / (steps - 1)
    return f"  {name:<44} {r['tokens_per_s']:7.1f} tokens/s   {per_step:6.2f} s/step   peak {r['peak_gb']:.2f} GB"


METHODS = ["lora", "dora", "rslora", "ia3", "prompt", "ptuning", "prefix", "full"]  # qlora needs a CUDA GPU


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per side (the first is not counted)")
    parser.add_argument("--method-steps", type=int, default=3, help="steps per tuning method (row 5)")
    parser.add_argument(
        "--rows", default="like,default,methods", help="which rows: like (1, 2), default (3, 4), methods (5)"
    )
    args = parser.parse_args()
    rows = set(args.rows.split(","))
    steps = str(args.steps)
    data = str(FIXTURE)
    print(
        f"LoRA on SmolLM2-135M, batch 8 x 256, {FIXTURE.name}, {args.steps - 1} timed steps per side, CPU: {cpu_name()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        if "like" in rows:
            for n, ckpt, what in ((1, "0", "no gradient checkpointing"), (2, "1", "gradient checkpointing")):
                trl = run(TRL_SIDE, data, f"{tmp}/trl{ckpt}", steps, ckpt)
                ours = run(DATAKIT_SIDE, data, f"{tmp}/a{ckpt}", steps, "fp32", ckpt, "0", "lora")
                print(f"{n}. like for like (fp32 weights, {what}, both sides)")
                print(line("TRL SFTTrainer (completion_only_loss)", trl, args.steps))
                print(line("datakit train", ours, args.steps))
                print(f"  datakit / TRL: speed {ours['tokens_per_s'] / trl['tokens_per_s']:.2f}x, "
                      f"peak memory {ours['peak_gb'] / trl['peak_gb']:.2f}x")  # fmt: skip
        if "default" in rows:
            unpacked = run(DATAKIT_SIDE, data, f"{tmp}/b", steps, "auto", "1", "0", "lora")
            packed = run(DATAKIT_SIDE, data, f"{tmp}/c", steps, "auto", "1", "1", "lora")
            print("3. datakit's CPU default (dtype auto, gradient checkpointing)")
            print(line("datakit train, unpacked", unpacked, args.steps))
            print("4. packing")
            print(line("datakit train --packing", packed, args.steps))
            print(f"  ratio packed / unpacked: {packed['tokens_per_s'] / unpacked['tokens_per_s']:.2f}x")
        if "methods" in rows:
            print(f"5. tuning methods at the CPU default (dtype auto, gradient checkpointing), "
                  f"{args.method_steps - 1} timed steps each")  # fmt: skip
            for method in METHODS:
                r = run(DATAKIT_SIDE, data, f"{tmp}/m-{method}", str(args.method_steps), "auto", "1", "0", method)
                print(line(f"datakit train --method {method}", r, args.method_steps))


if __name__ == "__main__":
    main()
