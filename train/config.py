"""The training settings: one dataclass, filled from CLI flags, a YAML file or Python.

LoRA defaults (r 8, alpha 16, dropout 0.05, all linear layers) follow litgpt and torchtune;
LLaMA-Factory uses r 8, alpha 2r, dropout 0 and peft's own default is r 8, alpha 8. The CPU
defaults (bf16 weights with gradient checkpointing, batch 8 x 256) come from
benchmarks/train_speed.py on a 2-core machine: see the README.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datakit import strict_yaml
from datakit.errors import DatakitError, shown
from train.batches import ORDERS
from train.templates import TEMPLATES

# The tuning methods, each through peft but ``full``. The LoRA family trains low-rank updates of
# the linear layers: DoRA (Liu et al. 2024) adds a learned magnitude per column, rsLoRA scales the
# update by alpha/sqrt(r) so higher ranks keep learning, QLoRA trains LoRA over 4-bit weights (CUDA).
# IA3 learns a scaling vector per attention key/value and feed-forward output (peft's layers for
# the architecture). The prompt-learning methods train virtual tokens in front of every input and
# leave the model as it is: ``prompt`` (Lester et al. 2021: input embeddings), ``ptuning``
# (P-tuning, Liu et al. 2021: embeddings made by a small encoder) and ``prefix`` (prefix tuning,
# which P-tuning v2 is: trained keys and values at every layer). They usually want a much higher
# learning rate than LoRA (1e-2 rather than 2e-4).
METHODS = ("lora", "dora", "rslora", "qlora", "ia3", "prompt", "ptuning", "prefix", "full")
LORA_FAMILY = ("lora", "dora", "rslora", "qlora")
PROMPT_LEARNING = ("prompt", "ptuning", "prefix")


class ConfigError(DatakitError, ValueError):
    """A setting that cannot be used; the message names the key."""


def _coerce(value: Any, type_name: str, where: str) -> Any:
    """YAML reads 1e-4 as a string (it wants 1.0e-4): accept what a user means, or name the key."""
    if value is None or isinstance(value, bool):
        return value
    if type_name == "bool":  # a quoted "no" is a non-empty string, which Python would take as true
        raise ConfigError(f"{where}: {shown(value)} is not true or false")
    try:
        if type_name.startswith("float"):
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
            return number
        if type_name.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            number = int(value)
            if not 0 <= number < 2**32 if where.endswith("seed") else abs(number) >= 2**63:
                raise ValueError
            return number
    except (TypeError, ValueError, OverflowError):
        kind = "finite float" if type_name.startswith("float") else "whole number in range"
        raise ConfigError(f"{where}: {shown(value)} is not a {kind}") from None
    return value


@dataclass
class TrainConfig:
    data: list[str] = field(default_factory=list)  # files in any format `datakit convert` reads
    model: str = "smollm2-135m"  # an embedded model name, a Hugging Face id or a local folder
    out: str = "out/train"
    template: str = "tokenizer"  # the tokenizer's own chat template, or a named one
    train_on: str = "all"  # every assistant turn, or "last"
    method: str = "lora"  # one of METHODS
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target: str = "all-linear"  # LoRA family: peft's target_modules, "all-linear" or comma-separated names
    virtual_tokens: int = 20  # prompt, ptuning and prefix: how many trained virtual tokens
    epochs: float = 1.0
    order: str = "shuffled"  # shuffled | as_given | by_length | by_source | curriculum:KEY (train.batches)
    max_steps: int | None = None  # overrides epochs when set
    lr: float = 2e-4
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 256
    packing: bool = False
    seed: int = 0
    dtype: str = "auto"  # auto: bf16 weights where the CPU/GPU has bf16, else fp32 | fp32 | bf16
    gradient_checkpointing: bool = True  # (never with method prefix: peft cannot checkpoint its keys and values)
    save_every: int = 50  # optimizer steps between checkpoints (and one at the end)
    resume: bool = False
    merge: bool = False  # also write a standalone merged model (LoRA)
    threads: int | None = None  # torch threads on CPU (default: torch's choice)
    # under torchrun / accelerate launch: shard weights, gradients and optimizer state over the
    # processes (FSDP2) rather than hold the whole model in each (train.distributed)
    fsdp: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.data, (str, Path)):
            self.data = [str(self.data)]
        self.data = [str(d) for d in self.data]
        self.validate()

    def validate(self) -> None:
        checks = [
            ("template", self.template in TEMPLATES, f"one of {', '.join(TEMPLATES)}"),
            ("train_on", self.train_on in ("all", "last"), "all or last"),
            ("method", self.method in METHODS, ", ".join(METHODS)),
            ("dtype", self.dtype in ("auto", "fp32", "bf16"), "auto, fp32 or bf16"),
            ("lora_r", self.lora_r > 0, "a positive integer"),
            ("lr", self.lr > 0, "positive"),
            ("batch_size", self.batch_size > 0, "a positive integer"),
            ("grad_accum", self.grad_accum > 0, "a positive integer"),
            ("max_length", self.max_length > 1, "at least 2"),
            ("save_every", self.save_every > 0, "a positive integer"),
            ("epochs", self.epochs > 0, "positive"),
            ("max_steps", self.max_steps is None or self.max_steps > 0, "a positive integer"),
            ("virtual_tokens", self.virtual_tokens > 0, "a positive integer"),
            (
                "order",
                self.order in ORDERS[:-1] or (self.order.startswith("curriculum:") and len(self.order) > 11),
                ", ".join(ORDERS),
            ),
            (
                "merge",
                not self.merge or self.method in (*LORA_FAMILY, "ia3"),
                "only for the LoRA family and ia3 (full is already merged; virtual tokens cannot be merged)",
            ),
            (
                "fsdp",
                not (self.fsdp and self.method == "qlora"),
                "false with qlora (its 4-bit weights are not sharded)",
            ),
            (
                "packing",
                not (self.packing and self.method in PROMPT_LEARNING),
                f"false with method {self.method}: its virtual tokens go once in front of each row, and a packed "
                "row holds several records",
            ),
        ]
        for key, ok, expected in checks:
            if not ok:
                raise ConfigError(f"{key}: {getattr(self, key)!r} is not allowed; expected {expected}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key.replace("-", "_") not in known:
                raise ConfigError(f"{where}: unknown key {key!r}; keys: {', '.join(sorted(known))}")
        types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        clean = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            clean[name] = _coerce(value, types[name], f"{where}: {key}")
        return cls(**clean)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        try:
            values = strict_yaml.load_file(path) or {}
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of settings")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values, where=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def outcome_settings(self) -> dict[str, Any]:
        """The settings as caches and checkpoints compare them. A setting added later is left out
        where it has the value that reproduces what came before it, so what was trained before
        it existed stays valid."""
        values = self.to_dict()
        if self.order == "shuffled":
            del values["order"]
        if self.method not in PROMPT_LEARNING:
            del values["virtual_tokens"]
        if not self.fsdp:
            del values["fsdp"]
        return values
