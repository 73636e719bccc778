"""SE adapter for the blocks of timm's efficientnet builder built without SE (MobileNetV1/V2, MNASNet-B1, FBNet-C,
SPNASNet, EfficientNet-Lite, EfficientNet-EdgeTPU, MobileNetV3-Minimal, MobileNetV4-Conv).

These blocks have an SE slot of their own, ``se`` (``nn.Identity()`` when built without SE), where MobileNetV3,
MnasNet-A1 and EfficientNet put it: after the depthwise conv's norm and activation (in ``EdgeResidual``, the fused
MBConv of EfficientNet-EdgeTPU/V2: after the 3x3 expansion conv; in MobileNetV4's ``UniversalInvertedResidual``:
after the middle depthwise conv, or after the expansion where the variant has none), on the expanded channels, before
the linear projection, in every block whether or not it ends in a residual add. :func:`se_plugins.add_se` fills that
slot with a :class:`~se_plugins.SqueezeExcite` and the block keeps its own forward, so SE sits exactly where timm's SE
variants have it. The scale is not next to a residual add, so there is no fused path (``se_fused`` has no effect).
"""

import re

from timm.models import _efficientnet_blocks as timm_blocks
from torch import nn

from .block import SEResidualBlock
from .registry import register_se_block

_BLOCKS_RE = re.compile(r"(?:^|\.)blocks\.(\d+)\.\d+$")


def stage_from_blocks_index(name: str) -> int | None:
    """Stage of a block named ``...blocks.<stage index>.<block index>`` (timm's efficientnet layout), or None.

    The number of stages differs per model (MobileNetV1: 5, EfficientNet-EdgeTPU-S: 6, MobileNetV2: 7): the
    adapters leave ``num_stages`` to the model (the highest stage its blocks have).
    """
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


class SETimmEdgeResidual(SEResidualBlock, timm_blocks.EdgeResidual):
    """timm ``EdgeResidual`` (fused MBConv) with SE in its slot: 3x3 expansion conv, SE, project (+ shortcut)."""

    forward = timm_blocks.EdgeResidual.forward


class SETimmUniversalInvertedResidual(SEResidualBlock, timm_blocks.UniversalInvertedResidual):
    """timm ``UniversalInvertedResidual`` (MobileNetV4 UIB) with SE in its slot: [dw], expand, [dw], SE, project."""

    forward = timm_blocks.UniversalInvertedResidual.forward


def _uir_channels(block: nn.Module, position: str) -> int:
    return block.pw_proj.conv.in_channels


register_se_block(
    timm_blocks.InvertedResidual,
    SETimmInvertedResidual,
    channels=_slot_channels("conv_pwl"),
    positions=("standard",),
    stage=stage_from_blocks_index,
    description="timm InvertedResidual (efficientnet builder; SE after the depthwise conv)",
    num_stages=None,
)
register_se_block(
    timm_blocks.DepthwiseSeparableConv,
    SETimmDepthwiseSeparableConv,
    channels=_slot_channels("conv_pw"),
    positions=("standard",),
    stage=stage_from_blocks_index,
    description="timm DepthwiseSeparableConv (efficientnet builder; SE after the depthwise conv)",
    num_stages=None,
)
register_se_block(
    timm_blocks.EdgeResidual,
    SETimmEdgeResidual,
    channels=_slot_channels("conv_pwl"),
    positions=("standard",),
    stage=stage_from_blocks_index,
    description="timm EdgeResidual (efficientnet builder; SE after the 3x3 expansion conv)",
    num_stages=None,
)
register_se_block(
    timm_blocks.UniversalInvertedResidual,
    SETimmUniversalInvertedResidual,
    channels=_uir_channels,
    positions=("standard",),
    stage=stage_from_blocks_index,
    description="timm UniversalInvertedResidual (MobileNetV4; SE after the middle depthwise conv)",
    num_stages=None,
)
