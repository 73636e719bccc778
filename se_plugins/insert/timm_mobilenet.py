"""SE adapter for the blocks of timm's efficientnet builder built without SE (MobileNetV2, and the same blocks of
MNASNet-B1, FBNet, SPNASNet, EfficientNet-Lite).

These blocks have an SE slot of their own, ``se`` (``nn.Identity()`` when built without SE), where MobileNetV3 and
EfficientNet put it: after the depthwise conv's norm and activation, on the expanded channels, before the linear
projection, in every block whether or not it ends in a residual add. :func:`se_plugins.add_se` fills that slot with a
:class:`~se_plugins.SqueezeExcite` and the block keeps its own forward, so SE sits exactly where timm's SE variants
have it. The scale is not next to a residual add, so there is no fused path (``se_fused`` has no effect).
"""

import re

from timm.models import _efficientnet_blocks as timm_blocks
from torch import nn

from .block import SEResidualBlock
from .registry import register_se_block

_BLOCKS_RE = re.compile(r"(?:^|\.)blocks\.(\d+)\.\d+$")

# timm's MobileNetV2 has 7 stages of blocks (``blocks.0`` .. ``blocks.6``) after the stem
MOBILE_STAGES = 7


def stage_from_blocks_index(name: str) -> int | None:
    """Stage 1..7 of a block named ``...blocks.<stage index>.<block index>`` (timm's efficientnet layout), or None."""
    match = _BLOCKS_RE.search(name)
    return int(match.group(1)) + 1 if match else None


def _slot_channels(projection: str):  # noqa: ANN202
    def channels(block: nn.Module, position: str) -> int:
        return getattr(block, projection).in_channels

    return channels


class SETimmInvertedResidual(SEResidualBlock, timm_blocks.InvertedResidual):
    """timm ``InvertedResidual`` (MBConv) with SE in its slot: expand, depthwise, SE, project (+ shortcut)."""

    forward = timm_blocks.InvertedResidual.forward


class SETimmDepthwiseSeparableConv(SEResidualBlock, timm_blocks.DepthwiseSeparableConv):
    """timm ``DepthwiseSeparableConv`` with SE in its slot: depthwise, SE, pointwise (+ shortcut)."""

    forward = timm_blocks.DepthwiseSeparableConv.forward


register_se_block(
    timm_blocks.InvertedResidual,
    SETimmInvertedResidual,
    channels=_slot_channels("conv_pwl"),
    positions=("standard",),
    stage=stage_from_blocks_index,
    description="timm InvertedResidual (MobileNetV2 family; SE after the depthwise conv)",
    num_stages=MOBILE_STAGES,
)
register_se_block(
    timm_blocks.DepthwiseSeparableConv,
    SETimmDepthwiseSeparableConv,
    channels=_slot_channels("conv_pw"),
    positions=("standard",),
    stage=stage_from_blocks_index,
    description="timm DepthwiseSeparableConv (MobileNetV2 family; SE after the depthwise conv)",
    num_stages=MOBILE_STAGES,
)
