"""SE adapter for timm's ResNet blocks: ResNet, ResNeXt, Wide-ResNet, ResNet-D/T/S, the AA/blur variants, HRNet.

HRNet builds its branches from these blocks: SE sits in them as in the ResNets (after the last BN, before the add).
Stages come from the block names: ResNet ``layerN``; HRNet ``layer1`` and ``stageN`` (2..4, each a sequence of
multi-resolution modules ``stageN.<module>.branches.<branch>.<block>``), and its head's ``incre_modules`` blocks,
which follow stage 4, count as stage 4.
"""

import re

import torch
from timm.models import resnet as timm_resnet

from .block import EndsInConv3, SEResidualBlock
from .registry import conv_channels, register_se_block, stage_from_layer_name

_HRNET_STAGE_RE = re.compile(r"(?:^|[._])stage(\d+)\.\d+\.branches\.\d+\.\d+$")
_HRNET_HEAD_RE = re.compile(r"(?:^|[._])incre_modules\.\d+\.\d+$")
HRNET_HEAD_STAGE = 4


def stage_from_resnet_or_hrnet_name(name: str) -> int | None:
    """Stage 1..4 of a timm ResNet block (``...layerN...``) or of an HRNet block (see the module doc), or None."""
    stage = stage_from_layer_name(name)
    if stage is not None:
        return stage
    match = _HRNET_STAGE_RE.search(name)
    if match is not None:
        return int(match.group(1))
    return HRNET_HEAD_STAGE if _HRNET_HEAD_RE.search(name) else None


class TimmDropPath:
    """timm blocks carry ``drop_path`` (None or a DropPath module)."""

    def branch_drop(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_path is not None:
            return self.drop_path(x)
        return x

    def drop_path_active(self) -> bool:
        return self.drop_path is not None and self.training


class SETimmBasicBlock(TimmDropPath, SEResidualBlock, timm_resnet.BasicBlock):
    """timm ``BasicBlock`` with SE."""

    last_norm = "bn2"

    def residual_before_norm(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.drop_block(self.bn1(self.conv1(x))))
        return self.conv2(self.aa(x))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.residual_before_norm(x))

    def final_act(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(x)


class SETimmBottleneck(EndsInConv3, TimmDropPath, SEResidualBlock, timm_resnet.Bottleneck):
    """timm ``Bottleneck`` with SE."""

    last_norm = "bn3"

    def residual_before_last_conv(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        return self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn3(self.residual_before_norm(x))

    def final_act(self, x: torch.Tensor) -> torch.Tensor:
        return self.act3(x)


register_se_block(
    timm_resnet.BasicBlock,
    SETimmBasicBlock,
    channels=conv_channels("conv2"),
    stage=stage_from_resnet_or_hrnet_name,
    description="timm ResNet BasicBlock",
)
register_se_block(
    timm_resnet.Bottleneck,
    SETimmBottleneck,
    channels=conv_channels("conv3"),
    stage=stage_from_resnet_or_hrnet_name,
    description="timm ResNet Bottleneck",
)
