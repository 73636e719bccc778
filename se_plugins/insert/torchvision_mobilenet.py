"""SE adapter for torchvision's MobileNetV2 ``InvertedResidual``.

SE sits where the MobileNetV3 authors put it in the same block: after the depthwise conv's norm and ReLU6, on the
expanded channels, before the linear projection; in every block, also those without a residual add (stride 2 or a
change of width). The block's ``conv`` is ``[expand conv-norm-act], depthwise conv-norm-act, projection conv,
projection norm``: SE runs after its third-last layer. The module ``se`` is added beside ``conv``, so existing keys
never change (``features.<i>.se.fc1.weight``). torchvision's ``features`` is a flat sequence: no ``stages`` option.
"""

import torch
import torchvision.models.mobilenetv2 as tv_mobilenetv2
from torch import nn

from .block import SEResidualBlock
from .registry import register_se_block


class SETorchvisionInvertedResidual(SEResidualBlock, tv_mobilenetv2.InvertedResidual):
    """torchvision MobileNetV2 ``InvertedResidual`` with SE after the depthwise conv (plain ``x * gate``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        se_after = len(self.conv) - 3
        out = x
        for i, layer in enumerate(self.conv):
            out = layer(out)
            if i == se_after:
                out = self.se(out)
        if self.use_res_connect:
            return x + out
        return out


def _depthwise_channels(block: nn.Module, position: str) -> int:
    return block.conv[-2].in_channels


register_se_block(
    tv_mobilenetv2.InvertedResidual,
    SETorchvisionInvertedResidual,
    channels=_depthwise_channels,
    positions=("standard",),
    stage=lambda name: None,
    description="torchvision MobileNetV2 InvertedResidual (SE after the depthwise conv)",
)
