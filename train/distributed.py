"""Data-parallel training over the processes ``torchrun`` or ``accelerate launch`` start.

Both set ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; datakit joins their process group (NCCL on
GPUs, gloo on CPU) and splits each optimizer step's micro-batches between the processes. A
step's plan is the one a single process would follow with ``grad_accum x processes`` micro-batches,
so N processes give the same loss curve and weights as one process with N times the gradient
accumulation (tested on CPU with two gloo processes):

- every process counts the step's trained tokens over all processes, so each token weighs the same;
- after the backward passes the gradients are summed across processes in one all-reduce, then
  clipped and applied identically everywhere (the weights never drift apart);
- dropout masks are seeded by (seed, step, micro-batch), wherever that micro-batch runs.

Why not ``DistributedDataParallel``'s wrapper: at the end of an epoch a step can hold fewer
micro-batches than processes, and DDP needs every process to run a backward pass each step.
Summing the gradients once per step is exact, and for adapters (a few MB) as fast.

With ``fsdp: true`` (for a model whose full fine-tune does not fit one device) the weights,
gradients and optimizer state are sharded over the processes instead (PyTorch's FSDP2,
``fully_shard``: a unit per decoder layer, the embeddings and head in the root unit). The batch
plan is the same; FSDP sums each micro-batch's gradients into the shards itself (reduce-scatter,
summed rather than averaged), and since every process must take part in every forward and
backward pass, a process whose share of a step is one micro-batch short runs an idle pass with
zero weight. Checkpoints and outputs hold whole tensors, gathered from the shards, so a run
resumes with any launcher and its outputs load anywhere.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class World:
    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that writes the outputs (checkpoints, loss log, adapter)."""
        return self.rank == 0


def join() -> World:
    """This process's place among the launcher's (a world of one without a launcher)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return World(dist.get_world_size(), dist.get_rank(), local_rank)


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2 over the launcher's processes: each decoder layer (the model's ``_no_split_modules``)
    its own unit, everything else (embeddings, final norm, a tied head) in the root unit."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    # datakit reads the root unit's outputs without changing them in place (FSDP warns of views)
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layer_types = set(getattr(base, "_no_split_modules", None) or ())
    for module in list(model.modules()):
        if type(module).__name__ in layer_types:
            fully_shard(module)
    fully_shard(model)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # sum over the processes (the loss is already per token)
            module.set_force_sum_reduction_for_comms(True)  # a plain sum (gloo has no pre-scaled one)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor whole: an FSDP shard is gathered from every process (so every process must call
    this, in the same order), anything else is returned as it is."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def laid_out_as(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A whole tensor (read from a checkpoint by every process) cut into ``target``'s shard."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(target, DTensor):
        return value
    return distribute_tensor(value.to(target.dtype), target.device_mesh, target.placements, src_data_rank=None)


def unsharded(model: torch.nn.Module, fresh: Callable[[], torch.nn.Module], world: World) -> torch.nn.Module | None:
    """The trained weights gathered from every process into a fresh, unsharded copy of the model
    (on the main process; None elsewhere). Every process must call this."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not world.main:
        return None
    copy = fresh()
    copy.load_state_dict(weights, strict=True)
    return copy


def total(values: list[float], world: World) -> list[float]:
    """Each value summed over the processes."""
    if world.size == 1:
        return values
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def sum_gradients(params: list[torch.nn.Parameter], world: World) -> None:
    """Every trainable parameter's gradient summed over the processes, in one all-reduce."""
    if world.size == 1:
        return
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    if torch.cuda.is_available():
        flat = flat.cuda()
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[offset : offset + g.numel()].view_as(g).to(p.dtype).to(p.device)
        offset += g.numel()


def barrier(world: World) -> None:
    if world.size > 1:
        import torch.distributed as dist

        dist.barrier()


def leave(world: World) -> None:
    if world.size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
