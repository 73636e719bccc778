"""SE adapter for timm's RegNet ``Bottleneck`` built without SE (RegNetX): SE where RegNetY has it.

RegNetY is RegNetX with SE (Radosavovic et al., "Designing Network Design Spaces", Sec. 5): after the 3x3 group
conv's norm and activation, on the bottleneck channels, before the last 1x1 conv, with a hidden width of a quarter of
the block's *input* width. timm's block keeps that slot (``se = nn.Identity()`` in RegNetX): :func:`se_plugins.add_se`
fills it with a :class:`~se_plugins.SqueezeExcite` of hidden width ``round(block input width / r)`` (r=4 is
RegNetY's), and the block keeps its own forward. So with ``reduction=4`` a RegNetX twin has exactly the parameters
(``...se.fc1.weight``, ...) of the RegNetY of the same widths, whose state dict then loads strictly and computes the
same outputs. The scale is not next to the residual add: no fused path.
"""

import re

from timm.models import regnet as timm_regnet
from torch import nn

from .block import SEResidualBlock
from .registry import register_se_block

_STAGE_RE = re.compile(r"(?:^|\.)s(\d+)\.b\d+$")


def stage_from_regnet_name(name: str) -> int | None:
    """Stage 1..4 of a timm RegNet block named ``...s<stage>.b<block>``, or None."""
    match = _STAGE_RE.search(name)
    return int(match.group(1)) if match else None


def regnet_hidden(width_in: int, reduction: float) -> int:
    """RegNetY's SE hidden width for a block of input width ``width_in``: ``round(width_in / r)`` (at least 1)."""
    return max(1, int(round(width_in / reduction)))


class SETimmRegNetBottleneck(SEResidualBlock, timm_regnet.Bottleneck):
    """timm RegNet ``Bottleneck`` with SE in its slot: 1x1, 3x3 group conv, SE, 1x1 (+ shortcut), as RegNetY."""

    forward = timm_regnet.Bottleneck.forward


def _channels(block: nn.Module, position: str) -> int:
    return block.conv3.conv.in_channels


def _hidden(block: nn.Module, reduction: float) -> int:
    return regnet_hidden(block.conv1.conv.in_channels, reduction)


register_se_block(
    timm_regnet.Bottleneck,
    SETimmRegNetBottleneck,
    channels=_channels,
    positions=("standard",),
    stage=stage_from_regnet_name,
    description="timm RegNet Bottleneck (RegNetX; SE after the 3x3 group conv, as RegNetY)",
    hidden=_hidden,
)
