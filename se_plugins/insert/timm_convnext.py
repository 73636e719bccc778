"""SE adapter for timm's ``ConvNeXtBlock`` (ConvNeXt V1 and V2).

The block's branch is depthwise 7x7 conv -> norm -> MLP (1x1 expand, GELU, [V2: GRN], 1x1 project) -> layer scale
``gamma``, added to the shortcut with no norm and no activation after it. SE sits at the end of that branch, after
the layer scale and before the add: the SE paper's rule (Fig. 3, SE-ResNet: recalibrate the residual branch's output
before the summation with the identity), and the one place where the branch is back in NCHW (timm runs the MLP
channels-last, ``conv_mlp=False``, between two permutes). The alternative, MobileNetV3's place after the depthwise
conv, would see the 7x7 conv's output before the norm and split the norm from the MLP it feeds. As for the ResNets
the scale folds into the add (``se_fused``), and every position is supported: ``pre`` (the block input, which the
shortcut sees unscaled), ``post`` (after the add) and ``identity`` (on the shortcut).
"""

import torch
from timm.models import convnext as timm_convnext
from torch import nn

from .block import SEResidualBlock
from .registry import conv_channels, register_se_block
from .slot_block import ShortcutModule
from .timm_resnetv2 import stage_from_stages_index


class SETimmConvNeXtBlock(ShortcutModule, SEResidualBlock, timm_convnext.ConvNeXtBlock):
    """timm ``ConvNeXtBlock`` with SE after the layer scale, before the add."""

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_dw(x)
        if self.use_conv_mlp:
            x = self.mlp(self.norm(x))
        else:
            x = self.mlp(self.norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        if self.gamma is not None:
            x = x.mul(self.gamma.reshape(1, -1, 1, 1))
        return x

    def final_act(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def branch_drop(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(x)

    def drop_path_active(self) -> bool:
        return self.training and not isinstance(self.drop_path, nn.Identity)


register_se_block(
    timm_convnext.ConvNeXtBlock,
    SETimmConvNeXtBlock,
    channels=conv_channels("conv_dw", "conv_dw"),
    stage=stage_from_stages_index,
    description="timm ConvNeXtBlock (V1/V2; SE after the layer scale, before the add)",
)
