"""Per-channel mean and standard deviation of images, for ``data.mean`` / ``data.std``.

Exact over every pixel (float64 sums of x and x² per channel, so the order of the images does not matter beyond
float64 rounding); images may differ in size but not in channel count.

Example:
    >>> stats = channel_stats(image for image, _ in dataset)
    >>> print(stats.as_yaml())      # data.mean / data.std lines to paste into a config
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel statistics of a set of images.

    Attributes:
        mean: One mean per channel.
        std: One population standard deviation per channel.
        num_images: Images counted.
        num_pixels: Pixels per channel counted.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_images: int
    num_pixels: int

    def as_yaml(self, digits: int = 4) -> str:
        """The ``data:`` section lines for a config, e.g. ``  mean: [0.1234, ...]``."""
        fmt = ", ".join
        return (
            f"data:\n  channels: {len(self.mean)}\n"
            f"  mean: [{fmt(f'{v:.{digits}f}' for v in self.mean)}]\n"
            f"  std: [{fmt(f'{v:.{digits}f}' for v in self.std)}]\n"
        )


def channel_stats(images: Iterable[torch.Tensor]) -> ChannelStats:
    """Mean and std per channel over all pixels of ``images`` (each ``[C, H, W]``, float, after decoding).

    Raises:
        ValueError: no images, or images with different channel counts.
    """
    total = total_sq = None
    count = num_images = 0
    for image in images:
        x = torch.as_tensor(image).detach().as_subclass(torch.Tensor)
        if x.ndim != 3:
            raise ValueError(f"expected [C, H, W] images, got shape {tuple(x.shape)}")
        x = x.reshape(x.shape[0], -1).to(torch.float64)
        if total is None:
            total, total_sq = torch.zeros(x.shape[0], dtype=torch.float64), torch.zeros(x.shape[0], dtype=torch.float64)
        elif x.shape[0] != total.shape[0]:
            raise ValueError(f"image {num_images} has {x.shape[0]} channels, the first had {total.shape[0]}")
        total += x.sum(dim=1)
        total_sq += (x * x).sum(dim=1)  # type: ignore[operator]
        count += x.shape[1]
        num_images += 1
    if total is None or count == 0:
        raise ValueError("no images to compute channel statistics from")
    mean = total / count
    var = (total_sq / count - mean * mean).clamp(min=0.0)  # type: ignore[operator]
    return ChannelStats(
        mean=tuple(float(v) for v in mean),
        std=tuple(math.sqrt(float(v)) for v in var),
        num_images=num_images,
        num_pixels=count,
    )
