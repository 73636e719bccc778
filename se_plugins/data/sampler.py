"""Batching for detection: aspect-ratio grouping (as torchvision's detection reference) and collate."""

from __future__ import annotations

import bisect
import logging
import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import BatchSampler, Sampler

logger = logging.getLogger(__name__)


def detection_collate(batch: Sequence[tuple[Any, Any]]) -> tuple[list[Any], list[Any]]:
    """Collate ``(image, target)`` samples into ``(list_of_images, list_of_targets)`` (no stacking)."""
    images, targets = zip(*batch, strict=True) if batch else ((), ())
    return list(images), list(targets)


def create_aspect_ratio_groups(aspect_ratios: Sequence[float], k: int = 2) -> list[int]:
    """Group id of each image: its aspect ratio (w / h) quantised into ``2 * k + 2`` log-spaced bins.

    The bin edges are ``2 ** linspace(-1, 1, 2k + 1)`` (ratios 1/2 .. 2), as in torchvision's
    ``references/detection/group_by_aspect_ratio.py``; ``k=0`` puts all images in one group.
    """
    if k <= 0:
        return [0] * len(aspect_ratios)
    bins = (2 ** np.linspace(-1, 1, 2 * k + 1)).tolist()
    groups = [bisect.bisect_right(bins, float(r)) for r in aspect_ratios]
    logger.info(
        "aspect-ratio groups (edges %s): counts %s", bins, np.bincount(groups, minlength=len(bins) + 1)
    )
    return groups


class GroupedBatchSampler(BatchSampler):
    """Batches whose images all come from the same group (e.g. the same aspect-ratio bin).

    Draws indices from ``sampler`` (a ``RandomSampler``, ``DistributedSampler``, ...) and yields a batch
    as soon as one group has ``batch_size`` of them. It yields exactly ``len(sampler) // batch_size``
    batches: leftovers are completed with earlier indices of their group. Call ``set_epoch`` on a
    ``DistributedSampler`` as usual (the sampler is used as is).

    Args:
        sampler: Source of dataset indices.
        group_ids: Group of each dataset index (``create_aspect_ratio_groups(ds.aspect_ratios())``).
        batch_size: Images per batch.
    """

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.drop_last = True

    def __iter__(self) -> Iterator[list[int]]:
        buffers: dict[int, list[int]] = defaultdict(list)
        seen: dict[int, list[int]] = defaultdict(list)
        num_batches = 0
        for idx in self.sampler:
            group = self.group_ids[idx]
            buffers[group].append(idx)
            seen[group].append(idx)
            if len(buffers[group]) == self.batch_size:
                yield buffers.pop(group)
                num_batches += 1
        # Fill the most complete leftover buffers from their group's earlier indices, so the number of
        # batches is deterministic (every DDP rank yields the same count).
        remaining = len(self) - num_batches
        for group, buffer in sorted(buffers.items(), key=lambda kv: len(kv[1]), reverse=True):
            if remaining <= 0:
                break
            missing = self.batch_size - len(buffer)
            pool = seen[group] * math.ceil(missing / len(seen[group]))
            yield buffer + pool[:missing]
            remaining -= 1

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size
