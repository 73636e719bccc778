"""SE adapter for timm's Res2Net / Res2NeXt ``Bottle2neck``: SE after ``bn3``, before the residual add (SE-Res2Net).

The Res2Net paper integrates SE "right before the residual connections" (Gao et al., "Res2Net: A New Multi-scale
Backbone Architecture", TPAMI 2021, "Integration with Modern Modules"), the SE-ResNet placement. timm's block keeps
exactly that slot: ``se`` (``None`` without attention) runs after ``bn3`` and before drop-path and the add.
:func:`se_plugins.add_se` fills it with a :class:`~se_plugins.SqueezeExcite` on the block's output channels and the
block keeps timm's own forward (the multi-scale split is never rewritten). Only the ``standard`` position exists
(the slot's); the scale sits in timm's forward, so there is no fused path. Res2Net archs are timm ``ResNet``
models: blocks are named ``layerN.i`` and their stages come from that name.
"""

from timm.models import res2net as timm_res2net
from torch import nn

from .block import SEResidualBlock
from .registry import register_se_block


class SETimmBottle2neck(SEResidualBlock, timm_res2net.Bottle2neck):
    """timm ``Bottle2neck`` with SE in its slot: 1x1, multi-scale 3x3s, 1x1 + bn3, SE, (+ shortcut), ReLU."""

    forward = timm_res2net.Bottle2neck.forward


def _channels(block: nn.Module, position: str) -> int:
    return block.conv3.out_channels


register_se_block(
    timm_res2net.Bottle2neck,
    SETimmBottle2neck,
    channels=_channels,
    positions=("standard",),
    description="timm Res2Net Bottle2neck (SE after bn3, before the add, as SE-Res2Net)",
)
