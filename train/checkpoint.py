"""Checkpoints a killed run resumes from: trainable weights, optimizer state and the step.

Everything is safetensors plus JSON (nothing is unpickled on resume). A checkpoint is
written to a temporary folder and renamed into place, so a kill during the write leaves the
previous checkpoint as the latest whole one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from datakit.io import scratch


def latest(folder: Path) -> Path | None:
    steps = sorted(folder.glob("step-*"), key=lambda p: int(p.name.split("-")[1])) if folder.exists() else []
    return steps[-1] if steps else None


def save(folder: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         state: dict[str, Any]) -> Path:  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    staging = scratch(folder, f".step-{step}.", folder=True)  # (also removes what a killed run left)
    trainable = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(trainable, staging / "trainable.safetensors")
    opt = optimizer.state_dict()
    tensors = {f"{i}.{k}": v.contiguous() for i, s in opt["state"].items() for k, v in s.items()}
    save_file(tensors, staging / "optimizer.safetensors")
    (staging / "optimizer.json").write_text(json.dumps({"param_groups": opt["param_groups"]}))
    (staging / "state.json").write_text(json.dumps({**state, "step": step}))
    target = folder / f"step-{step}"
    staging.replace(target)
    for old in folder.glob("step-*"):  # keep only the newest whole checkpoint
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


def load(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore weights and optimizer state in place; returns the saved state (with its step)."""
    trainable = load_file(path / "trainable.safetensors")
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in trainable]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {len(missing)} trainable tensors (e.g. {missing[0]})")
    with torch.no_grad():
        for name, value in trainable.items():
            params[name].copy_(value)
    tensors = load_file(path / "optimizer.safetensors")
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = json.loads((path / "optimizer.json").read_text())["param_groups"]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    return json.loads((path / "state.json").read_text())
