"""Squeeze from the narrow tensor: SE's channel means of a Bottleneck's output without reading that output.

A Bottleneck's branch ends with ``conv3`` (1x1, stride 1, no padding) and ``bn3``. Both are affine per channel when
the norm uses fixed statistics (``BatchNorm2d`` in eval mode, ``FrozenBatchNorm2d`` always), and an affine map
commutes with the spatial mean::

    mean_hw(bn3(conv3(y))) = bn3(conv3(mean_hw(y)))        (exact in real arithmetic)

so the squeeze can pool ``conv3``'s input ``y`` (a quarter of the channels) and push the ``(N, C/4)`` vector through
``conv3`` and ``bn3`` as matrix products, instead of reading the wide ``(N, C, H, W)`` output once more. In float
arithmetic the two differ by rounding only. With batch statistics (``BatchNorm2d`` in training) the norm is affine
with constants of the whole batch, which ``BatchNorm2d`` does not expose: there the squeeze reads the output.
"""

from typing import Optional, Tuple  # noqa: UP035 (TorchScript reads typing's forms)

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

NARROW_KINDS = ("never", "eval", "always")


def narrow_squeeze_kind(conv: nn.Module, norm: nn.Module) -> str:
    """When the squeeze of ``norm(conv(y))`` may pool ``y`` instead: ``"never"``, ``"eval"`` (mode) or ``"always"``."""
    pointwise = (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
    )
    if not pointwise:
        return "never"
    if type(norm) is FrozenBatchNorm2d:
        return "always"
    if type(norm) is nn.BatchNorm2d and norm.affine and norm.track_running_stats:
        return "eval"
    return "never"


def prepare_narrow_squeeze(block: nn.Module) -> None:
    """Adapter hook for Bottlenecks (``conv3``/``bn3``): record when the squeeze may pool ``conv3``'s input."""
    block.se_narrow = narrow_squeeze_kind(block.conv3, block.bn3)


class NarrowSqueezeBottleneck:
    """Mixin for Bottleneck SE classes with ``conv3``/``bn3``: the class defines ``branch_input(x)`` (conv3's input).

    ``se_narrow`` is set by :func:`prepare_narrow_squeeze` when SE is inserted.
    """

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn3(self.conv3(self.branch_input(x)))

    def residual_and_pooled(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:  # noqa: UP006, UP045
        y = self.branch_input(x)
        out = self.bn3(self.conv3(y))
        bn = self.bn3
        if hasattr(bn, "running_var"):  # static under TorchScript: other norms (GroupNorm) compile without this
            if self.se_narrow == "always" or (self.se_narrow == "eval" and not bn.training):
                mean, var, weight, bias = bn.running_mean, bn.running_var, bn.weight, bn.bias
                if mean is not None and var is not None and weight is not None and bias is not None:
                    z = F.linear(y.mean((2, 3)), self.conv3.weight.flatten(1), self.conv3.bias)
                    return out, (z - mean) * (weight * torch.rsqrt(var + bn.eps)) + bias
        return out, None
