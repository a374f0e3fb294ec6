"""Checkpoints a killed run resumes from: trainable weights, optimizer state and the step.

Everything is safetensors plus JSON (nothing is unpickled on resume). A checkpoint is
written to a temporary folder and renamed into place, so a kill during the write leaves the
previous checkpoint as the latest whole one. Under FSDP the tensors are gathered whole before
they are written and cut into shards again on load (train.distributed), so a checkpoint looks
the same however many processes made it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from datakit.io import scratch
from train.distributed import laid_out_as, whole


def latest(folder: Path) -> Path | None:
    steps = sorted(folder.glob("step-*"), key=lambda p: int(p.name.split("-")[1])) if folder.exists() else []
    return steps[-1] if steps else None


def save(folder: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         state: dict[str, Any], write: bool = True) -> Path | None:  # fmt: skip
    """Write the checkpoint of ``step``. Under FSDP every process calls this (the shards are
    gathered from all of them) and only the one with ``write`` writes."""
    # gathered one tensor at a time; a process that does not write drops each at once
    trainable = _kept(((n, whole(p.detach())) for n, p in model.named_parameters() if p.requires_grad), write)
    opt = optimizer.state_dict()
    tensors = _kept(((f"{i}.{k}", whole(v)) for i, s in opt["state"].items() for k, v in s.items()), write)
    if not write:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    staging = scratch(folder, f".step-{step}.", folder=True)  # (also removes what a killed run left)
    save_file(trainable, staging / "trainable.safetensors")
    save_file(tensors, staging / "optimizer.safetensors")
    (staging / "optimizer.json").write_text(json.dumps({"param_groups": opt["param_groups"]}))
    (staging / "state.json").write_text(json.dumps({**state, "step": step}))
    target = folder / f"step-{step}"
    staging.replace(target)
    for old in folder.glob("step-*"):  # keep only the newest whole checkpoint
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


def _kept(named: Iterator[tuple[str, torch.Tensor]], keep: bool) -> dict[str, torch.Tensor]:
    return {name: tensor.contiguous() for name, tensor in named if keep}


def load(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore weights and optimizer state in place; returns the saved state (with its step)."""
    trainable = load_file(path / "trainable.safetensors")
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in trainable]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {len(missing)} trainable tensors (e.g. {missing[0]})")
    with torch.no_grad():
        for name, value in trainable.items():
            params[name].copy_(laid_out_as(value, params[name]))
    tensors = load_file(path / "optimizer.safetensors")
    in_order = [p for group in optimizer.param_groups for p in group["params"]]  # the state's indices
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        param = in_order[int(index)]
        # moments are shaped like their parameter (and sharded with it under FSDP); the step count is a scalar
        state.setdefault(int(index), {})[name] = laid_out_as(value, param) if value.shape == param.shape else value
    groups = json.loads((path / "optimizer.json").read_text())["param_groups"]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    return json.loads((path / "state.json").read_text())
