"""The training recipe, top to bottom: data -> labels -> model -> steps -> checkpoints -> adapter.

One plain loop instead of a Trainer subclass (torchtune's style), so each choice is visible:

- the loss of a step is the sum of token losses over every trained token of its micro-batches,
  divided by the number of those tokens, so packing and gradient accumulation do not change
  how records are weighted;
- the language-model head runs only on trained positions (the rest have no target), which on
  a 49k vocabulary is a large share of the compute;
- every step reseeds torch from (seed, step) and the batch plan is a pure function of the
  seed, so a resumed run takes the same batches and dropout masks as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import xxhash

from datakit.errors import DatakitError, shown
from datakit.hardware import cpu_bf16_is_fast
from datakit.io import write_json
from datakit.plots import plot_loss
from train import checkpoint, distributed
from train.batches import MicroBatch, Ordering, collate, plan_steps
from train.config import LORA_FAMILY, PROMPT_LEARNING, ConfigError, TrainConfig
from train.labels import IGNORE, Tokenized, tokenize_all

SETTINGS_FILE = "datakit.json"  # beside the adapter or model: base model, template, settings


class TrainError(DatakitError, RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


@dataclass
class TrainResult:
    out: str
    adapter: str | None  # LoRA/QLoRA adapter folder
    model: str | None  # full fine-tune or merged model folder
    steps: int
    records: int
    dropped: dict[str, int]
    tokens: int  # every non-padding token processed (all epochs)
    trained_tokens: int
    final_loss: float
    seconds: float
    tokens_per_s: float
    peak_rss_gb: float
    resumed_from: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- data ----------------------------------------------------------------------------------


def load_examples(config: TrainConfig, tokenizer: Any) -> tuple[int, Tokenized, Ordering]:
    """(records read, their examples, the order config.order asks for)."""
    from datakit.convert import read_records

    records, files = [], []
    for path in config.data:
        if not Path(path).exists():
            raise ConfigError(f"data: {path} does not exist")
        for record in read_records(path):
            records.append(record)
            files.append(((record.get("meta") or {}).get("source") or {}).get("file") or path)
    if not records:
        raise TrainError(f"data: no record in {', '.join(config.data)}")
    tokenized = tokenize_all(records, tokenizer, config.template, config.train_on, config.max_length)
    return len(records), tokenized, ordering(config, [records[i] for i in tokenized.kept],
                                             [files[i] for i in tokenized.kept])  # fmt: skip


def ordering(config: TrainConfig, records: list[dict[str, Any]], files: list[str]) -> Ordering:
    """config.order for these records (those kept as examples) and the files they came from."""
    kind = config.order.split(":", 1)[0]
    if kind == "by_source":
        numbers: dict[str, int] = {}
        return Ordering(kind, sources=[numbers.setdefault(f, len(numbers)) for f in files])
    if kind != "curriculum":
        return Ordering(kind)
    key, keys = config.order.split(":", 1)[1], []
    for record in records:
        value = (record.get("meta") or {}).get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"order: {config.order}: record {record['id']} has no number meta[{key!r}] "
                              f"(it has {shown(value)})")  # fmt: skip
        keys.append(float(value))
    return Ordering(kind, keys=keys)


def data_fingerprint(tokenized: Tokenized, order: Ordering | None = None) -> str:
    """A hash of what training sees: every example's tokens and labels, and what orders them
    beyond the seed (each example's source under by_source, its meta value under curriculum:KEY),
    so a checkpoint is not continued on data that would be ordered otherwise."""
    h = xxhash.xxh3_64()
    for ex in tokenized.examples:
        h.update(json.dumps([ex.input_ids, ex.labels]).encode())
    if order is not None and (order.sources is not None or order.keys is not None):
        h.update(json.dumps([order.sources, order.keys]).encode())
    return h.hexdigest()


# --- model ---------------------------------------------------------------------------------


def weight_dtype(config: TrainConfig, device: str) -> torch.dtype:
    """bf16 base weights for adapters where the hardware computes bf16 fast; fp32 otherwise.
    Full fine-tuning keeps fp32 unless asked: pure bf16 updates lose small steps."""
    if config.dtype != "auto":
        return torch.bfloat16 if config.dtype == "bf16" else torch.float32
    if config.method == "full":
        return torch.float32
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_bf16_is_fast() else torch.float32


def load_model(config: TrainConfig, path: str, device: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    dtype = weight_dtype(config, device)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if config.method == "qlora":
        import importlib.util

        if device != "cuda" or importlib.util.find_spec("bitsandbytes") is None:
            raise TrainError("qlora needs a CUDA GPU and the bitsandbytes package; use --method lora on this machine")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True
        )
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if config.method != "qlora" and not (config.fsdp and int(os.environ.get("WORLD_SIZE", "1")) > 1):
        model.to(device)  # (FSDP moves each shard to the device as it cuts it: the whole model never goes there)
    if config.gradient_checkpointing and config.method != "prefix":  # peft refuses it with prefix tuning
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x renamed it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if config.method == "full":
        return model
    from peft import get_peft_model

    if config.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    elif config.method in PROMPT_LEARNING and config.gradient_checkpointing:
        model.enable_input_require_grads()  # the checkpointed layers see the trained virtual tokens' gradient
    return get_peft_model(model, peft_config(config))


def peft_config(config: TrainConfig) -> Any:
    """The peft configuration of ``config.method`` (see train.config.METHODS)."""
    import peft

    if config.method in LORA_FAMILY:
        target = config.target if config.target == "all-linear" else [t.strip() for t in config.target.split(",")]
        return peft.LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=target, task_type="CAUSAL_LM",
            use_dora=config.method == "dora", use_rslora=config.method == "rslora",
        )  # fmt: skip
    if config.method == "ia3":  # peft's layers for the architecture (attention k, v and the MLP's output)
        return peft.IA3Config(task_type="CAUSAL_LM")
    kinds = {"prompt": peft.PromptTuningConfig, "ptuning": peft.PromptEncoderConfig, "prefix": peft.PrefixTuningConfig}
    return kinds[config.method](task_type="CAUSAL_LM", num_virtual_tokens=config.virtual_tokens)


def _virtual_tokens(model: torch.nn.Module) -> tuple[bool, int]:
    """(whether the model is a peft prompt-learning model, how many virtual positions its outputs
    begin with: prompt tuning and P-tuning put tokens in front; prefix tuning only adds keys and values)."""
    config = getattr(model, "active_peft_config", None)
    if config is None or not getattr(config, "is_prompt_learning", False):
        return False, 0
    return True, 0 if str(config.peft_type).endswith("PREFIX_TUNING") else config.num_virtual_tokens


def token_losses(model: torch.nn.Module, batch: MicroBatch, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy of each trained token, the row it is in); the head runs on those positions only."""
    targets = batch.labels[:, 1:].to(device)
    trained = targets != IGNORE
    prompt_learning, shift = _virtual_tokens(model)
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    # The model's own forward runs where peft adds virtual tokens in it, and under FSDP, whose root
    # unit gathers the embeddings and head as its forward begins; it keeps the last hidden state.
    if prompt_learning or distributed.is_sharded(model):
        out = model(input_ids=batch.input_ids.to(device),
                    attention_mask=None if batch.attention_mask is None else batch.attention_mask.to(device),
                    position_ids=None if batch.position_ids is None else batch.position_ids.to(device),
                    output_hidden_states=True, logits_to_keep=1, use_cache=False)  # fmt: skip
        hidden = out.hidden_states[-1][:, shift:]
    else:
        hidden = causal_lm.get_decoder()(
            input_ids=batch.input_ids.to(device),
            attention_mask=None if batch.attention_mask is None else batch.attention_mask.to(device),
            position_ids=None if batch.position_ids is None else batch.position_ids.to(device),
            use_cache=False,
        ).last_hidden_state
    logits = causal_lm.get_output_embeddings()(hidden[:, :-1][trained]).float()
    return F.cross_entropy(logits, targets[trained], reduction="none"), trained.nonzero()[:, 0]


def token_loss_sum(model: torch.nn.Module, batch: MicroBatch, device: str) -> torch.Tensor:
    """Summed cross-entropy over the trained tokens of a micro-batch."""
    return token_losses(model, batch, device)[0].sum()


def dropout_seed(seed: int, step: int, micro_batch: int) -> int:
    """The torch seed before a micro-batch: dropout masks depend on (seed, step, micro-batch) only,
    so a resumed run, or one split over processes, draws the same masks."""
    if micro_batch == 0:
        return seed * 1_000_003 + step
    return seed * 1_000_003 + step + ((step * 1_000_033 + micro_batch) << 20)


def learning_rate(config: TrainConfig, step: int, total: int) -> float:
    """Linear warmup, then cosine decay to 0 (step counts from 1)."""
    warmup = max(1, math.ceil(config.warmup_ratio * total)) if config.warmup_ratio > 0 else 0
    if step <= warmup:
        return config.lr * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


# --- outputs -------------------------------------------------------------------------------


def save_outputs(config: TrainConfig, model: torch.nn.Module, tokenizer: Any, model_path: str,
                 out: Path) -> tuple[str | None, str | None]:  # fmt: skip
    settings = {
        "base_model": config.model, "base_path": model_path, "template": config.template,
        "train_on": config.train_on, "method": config.method, "max_length": config.max_length,
    }  # fmt: skip
    if config.method == "full":
        folder = out / "model"
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        write_json(folder / SETTINGS_FILE, settings)
        return None, str(folder)
    adapter = out / "adapter"
    model.save_pretrained(adapter, safe_serialization=True)
    write_json(adapter / SETTINGS_FILE, settings)
    if not config.merge:
        return str(adapter), None
    # merge into fp32 base weights: merging into bf16 would round the update away
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    folder = out / "merged"
    merged.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    write_json(folder / SETTINGS_FILE, {**settings, "method": "merged"})
    return str(adapter), str(folder)


class _Progress:
    """Step, loss, tokens/s and ETA on stderr: a rewritten line on a terminal, else every 10% of the steps."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.total, self.start, self.enabled = total, start, enabled
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.tokens = 0

    def step(self, step: int, loss: float, tokens: int) -> float:
        self.tokens += tokens
        elapsed = time.perf_counter() - self.t0
        rate = self.tokens / elapsed if elapsed else 0.0
        every = max(1, self.total // 10)
        if self.enabled and (self.tty or step % every == 0 or step == self.total):
            done = step - self.start
            eta = elapsed / done * (self.total - step) if done else 0.0
            line = f"step {step}/{self.total}  loss {loss:.4f}  {rate:,.0f} tokens/s  ETA {eta:,.0f}s"
            if self.tty:
                print(f"\r{line}   ", end="" if step < self.total else "\n", file=sys.stderr, flush=True)
            else:
                print(line, file=sys.stderr, flush=True)
        return rate


# --- the loop ------------------------------------------------------------------------------


def fit(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train per ``config``; with ``config.resume`` a killed run continues from its last checkpoint."""
    from transformers import AutoTokenizer

    from datakit.models import resolve_llm

    started = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    world = distributed.join()  # one process, or one of those torchrun / accelerate launch started
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(config.out)
    model_path = resolve_llm(config.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    n_records, tokenized, order = load_examples(config, tokenizer)
    if not tokenized.examples:
        raise TrainError(f"data: none of {n_records} records has a token to train on ({dict(tokenized.dropped)})")
    examples = tokenized.examples
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    # what must match for a checkpoint to be continued
    identity = {
        k: v
        for k, v in config.outcome_settings().items()
        if k not in ("data", "out", "resume", "merge", "threads", "save_every")
    }
    if world.size > 1:  # a step's micro-batches are split by the number of processes
        identity["processes"] = world.size
    identity["data_fingerprint"] = data_fingerprint(tokenized, order)
    checkpoints = out / "checkpoints"
    last = checkpoint.latest(checkpoints)
    if last is not None and not config.resume:
        raise TrainError(f"{out} holds a checkpoint ({last.name}); pass --resume to continue it or pick a new --out")

    torch.manual_seed(config.seed)
    model = load_model(config, model_path, device)
    sharded = config.fsdp and world.size > 1  # (one process: nothing to shard, the same training)
    if sharded:
        model = distributed.shard(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    # with N processes a step is the plan's grad_accum x N micro-batches, each process taking every N-th
    total, steps = plan_steps(
        examples, batch_size=config.batch_size, grad_accum=config.grad_accum * world.size, seed=config.seed,
        packing=config.packing, max_length=config.max_length, epochs=config.epochs, max_steps=config.max_steps,
        ordering=order,
    )  # fmt: skip

    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "loss.jsonl" if world.main else Path(os.devnull)
    start, tokens, trained_tokens = 0, 0, 0
    if last is not None:
        state = checkpoint.load(last, model, optimizer)
        if state["identity"] != identity:
            changed = sorted(k for k in identity if state["identity"].get(k) != identity[k])
            raise TrainError(f"{last}: the checkpoint was made with other settings ({', '.join(changed)})")
        start, tokens, trained_tokens = state["step"], state["tokens"], state["trained_tokens"]
        if world.main:
            kept = [line for line in log_path.read_text().splitlines() if json.loads(line)["step"] <= start]
            log_path.write_text("".join(line + "\n" for line in kept))
    elif world.main and log_path.exists():
        log_path.unlink()

    model.train()
    meter = _Progress(total, start, progress and world.main)
    loss_value = float("nan")
    with open(log_path, "a") as log:
        for step, micro_rows in enumerate(steps, start=1):
            if step <= start:
                continue  # done before the resume: same plan, skipped without work
            step_started = time.perf_counter()
            lr = learning_rate(config, step, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            mine = list(enumerate(micro_rows))[world.rank :: world.size]  # (index in the step, rows)
            batches = [(k, collate(examples, rows, pad_id, config.packing)) for k, rows in mine]
            n_trained, step_tokens = (int(x) for x in distributed.total(
                [sum(b.trained_tokens for _, b in batches), sum(b.tokens for _, b in batches)], world))  # fmt: skip
            if sharded:  # every process runs as many passes as the busiest one: idle ones weigh nothing
                idle = -(-len(micro_rows) // world.size) - len(batches)
                batches += [(None, collate(examples, micro_rows[0], pad_id, config.packing))] * idle
            loss_value = 0.0
            for k, batch in batches:
                # dropout masks depend on (seed, step, micro-batch) only, wherever the micro-batch runs
                torch.manual_seed(dropout_seed(config.seed, step, k or 0))
                loss = token_loss_sum(model, batch, device)
                loss = loss / n_trained if k is not None else loss * 0.0  # (idle: FSDP's collectives, no gradient)
                loss.backward()
                loss_value += loss.item()
            if not sharded:  # (FSDP has summed them into each process's shard already)
                distributed.sum_gradients(params, world)
            loss_value = distributed.total([loss_value], world)[0]
            grad_norm = float(distributed.whole(torch.nn.utils.clip_grad_norm_(params, 1.0)))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += step_tokens
            trained_tokens += n_trained
            rate = meter.step(step, loss_value, step_tokens)
            log.write(json.dumps({"step": step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                                  "tokens": step_tokens, "trained_tokens": n_trained, "tokens_per_s": round(rate, 1),
                                  "seconds": round(time.perf_counter() - step_started, 3)}) + "\n")  # fmt: skip
            log.flush()
            if (step % config.save_every == 0 or step == total) and (world.main or sharded):
                checkpoint.save(checkpoints, step, model, optimizer,
                                {"identity": identity, "tokens": tokens, "trained_tokens": trained_tokens},
                                write=world.main)  # fmt: skip

    distributed.barrier(world)  # (every process has finished its last step before the outputs are written)
    if sharded:  # the outputs are written whole: gathered from the shards into an unsharded model
        model = distributed.unsharded(model, lambda: load_model(config, model_path, device), world)
    if not world.main:
        distributed.leave(world)
        return TrainResult(str(out), None, None, total, n_records, dict(tokenized.dropped), tokens, trained_tokens,
                           loss_value, round(time.perf_counter() - started, 2), 0.0, 0.0, start)  # fmt: skip
    adapter, model_dir = save_outputs(config, model, tokenizer, model_path, out)
    plot_loss([log_path], out / "loss.png")
    distributed.leave(world)
    seconds = time.perf_counter() - started
    if math.isnan(loss_value):  # everything was done before the resume: report the logged last loss
        loss_value = json.loads(log_path.read_text().splitlines()[-1])["loss"]
    result = TrainResult(
        out=str(out), adapter=adapter, model=model_dir, steps=total, records=n_records,
        dropped=dict(tokenized.dropped), tokens=tokens, trained_tokens=trained_tokens, final_loss=loss_value,
        seconds=round(seconds, 2), tokens_per_s=round(meter.tokens / max(1e-9, time.perf_counter() - meter.t0), 1),
        peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2), resumed_from=start,
        settings=config.to_dict(),
    )  # fmt: skip
    write_json(out / "train_result.json", result.to_dict())
    return result


def load_settings(folder: str | os.PathLike) -> dict[str, Any]:
    """The settings saved beside an adapter or model (template, base model...), or {}."""
    path = Path(folder) / SETTINGS_FILE
    return json.loads(path.read_text()) if path.exists() else {}
