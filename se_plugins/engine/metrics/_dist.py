"""torch.distributed helpers for the evaluators: no-ops when the process group is not initialised."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_gather_objects(obj: Any) -> list[Any]:
    """Gather one picklable object from every rank, in rank order (``[obj]`` without a process group)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Return the element-wise sum of ``tensor`` over all ranks, on ``tensor``'s device (a new tensor).

    The reduction runs where the backend can do it (CUDA for NCCL, CPU for Gloo), so a CPU confusion matrix
    works under NCCL and a CUDA one under Gloo.
    """
    out = tensor.clone()
    if not is_distributed():
        return out
    backend = str(dist.get_backend())
    if "nccl" in backend and not out.is_cuda:
        work = out.to(torch.device("cuda", torch.cuda.current_device()))
    elif backend == "gloo" and out.is_cuda:
        work = out.cpu()
    else:
        work = out
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)
