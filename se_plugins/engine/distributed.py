"""torch.distributed set-up from ``torchrun`` environment variables, and helpers that are no-ops without it.

``torchrun --nproc_per_node=N -m se_plugins.cli train CONFIG`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; ``init_distributed`` then starts a process group (NCCL on CUDA, Gloo on CPU). A plain
``python`` run is a single process and every helper here degrades to the obvious single-process answer.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from se_plugins.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the only rank that writes files)."""
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` → CUDA when available else CPU; ``"cuda"`` under DDP → ``cuda:LOCAL_RANK``.

    Raises:
        ConfigError: CUDA requested but not available.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {name!r} requested but CUDA is not available (use device=auto or cpu)")
        if name == "cuda":
            name = f"cuda:{local_rank}"
    return torch.device(name)


def init_distributed(device_name: str = "auto") -> tuple[DistInfo, torch.device]:
    """Start the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1) and pick the device.

    Backend: NCCL when the device is CUDA, Gloo otherwise. Safe to call when a group already exists.

    Returns:
        This process's ``DistInfo`` and its device.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size <= 1:
        return DistInfo(), device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank), device


def cleanup_distributed() -> None:
    """Destroy the process group if one is running."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single-process run)."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for all ranks (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the body on rank 0 first, then on the other ranks (e.g. generate or cache data once).

    Example:
        >>> with main_process_first():
        ...     paths = make_shapes(root)  # rank 0 writes, the others then find the finished data set
    """
    if not is_main_process():
        barrier()
    yield
    if is_main_process():
        barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Gather a picklable object from every rank, in rank order (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


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


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Return rank ``src``'s ``obj`` on every rank (``obj`` itself in a single process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def reduce_mean(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Average a dict of scalar tensors over ranks (one all-reduce; same keys on every rank required)."""
    if not is_distributed() or not values:
        return values
    names = sorted(values)
    stacked = torch.stack([values[k].detach().float() for k in names])
    dist.all_reduce(stacked)
    stacked /= dist.get_world_size()
    return dict(zip(names, stacked, strict=True))


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank`` on, without padding (for evaluation: each image once).

    Unlike ``DistributedSampler(shuffle=False)`` no sample is duplicated, so gathered predictions are exact;
    ranks may get one item more or less than others.
    """

    def __init__(self, dataset: Dataset, rank: int | None = None, world_size: int | None = None) -> None:
        self.num_items = len(dataset)  # type: ignore[arg-type]
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_items, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.num_items, self.world_size))
