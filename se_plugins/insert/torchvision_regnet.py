"""SE adapter for torchvision's RegNet ``ResBottleneckBlock`` built without SE (``regnet_x_*``).

SE sits where RegNetY has it (see :mod:`se_plugins.insert.timm_regnet`): after the 3x3 group conv ``f.b``, before
the last 1x1 conv ``f.c``, hidden width ``round(block input width / r)``. torchvision's RegNetY keeps its SE inside
the transform (``f.se``); here it is the block's ``se`` (``trunk_output.block1.block1-0.se.fc1.weight``), so the
transform's keys never change. torchvision has no RegNetX/RegNetY pair of the same widths, so no state dict of its
RegNetY would fit anyway.
"""

import re

import torch
import torchvision.models.regnet as tv_regnet
from torch import nn

from .block import SEResidualBlock
from .registry import register_se_block
from .timm_regnet import regnet_hidden

_STAGE_RE = re.compile(r"(?:^|\.)block(\d+)\.block\d+-\d+$")


def _stage(name: str) -> int | None:
    match = _STAGE_RE.search(name)
    return int(match.group(1)) if match else None


class SETorchvisionResBottleneckBlock(SEResidualBlock, tv_regnet.ResBottleneckBlock):
    """torchvision RegNet ``ResBottleneckBlock`` with SE between the transform's 3x3 group conv and its last 1x1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.f.c(self.se(self.f.b(self.f.a(x))))
        if self.proj is not None:
            return self.activation(self.proj(x) + out)
        return self.activation(x + out)


def _channels(block: nn.Module, position: str) -> int:
    return block.f.c[0].in_channels


def _hidden(block: nn.Module, reduction: float) -> int:
    return regnet_hidden(block.f.a[0].in_channels, reduction)


register_se_block(
    tv_regnet.ResBottleneckBlock,
    SETorchvisionResBottleneckBlock,
    channels=_channels,
    positions=("standard",),
    stage=_stage,
    description="torchvision RegNet ResBottleneckBlock (RegNetX; SE after the 3x3 group conv, as RegNetY)",
    hidden=_hidden,
    builtin_se=lambda block: "se" in block.f._modules,
)
