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
Summing the gradients once per step is exact, and for adapters (a few MB) as fast. FSDP, for
models whose full fine-tune does not fit one device, is not supported yet.
"""

from __future__ import annotations

import os
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
