"""SE adapter for torchvision's MNASNet (B1, built without SE) ``_InvertedResidual``.

SE sits where MnasNet-A1 (the same search's SE variant, Tan et al., "MnasNet", Sec. 4.2/Fig. 7) and timm's
efficientnet builder put it: after the depthwise conv's norm and ReLU, on the expanded channels, before the linear
projection, in every inverted-residual block (the stem's depthwise-separable conv is plain layers of the model, not
a block, so it gets none, unlike timm's ``mnasnet_*``). The block's ``layers`` is ``expand conv, BN, ReLU, depthwise
conv, BN, ReLU, projection conv, BN``: SE runs after its third-last layer. ``se`` is added beside ``layers``, so
existing keys never change (``layers.8.0.se.fc1.weight``). torchvision's ``layers`` is flat: no ``stages`` option.
"""

import torch
import torchvision.models.mnasnet as tv_mnasnet
from torch import nn

from .block import SEResidualBlock
from .registry import register_se_block


class SETorchvisionMNASNetBlock(SEResidualBlock, tv_mnasnet._InvertedResidual):
    """torchvision MNASNet ``_InvertedResidual`` with SE after the depthwise conv (plain ``x * gate``)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        se_after = len(self.layers) - 3
        out = input
        for i, layer in enumerate(self.layers):
            out = layer(out)
            if i == se_after:
                out = self.se(out)
        if self.apply_residual:
            return out + input
        return out


def _depthwise_channels(block: nn.Module, position: str) -> int:
    return block.layers[-2].in_channels


register_se_block(
    tv_mnasnet._InvertedResidual,
    SETorchvisionMNASNetBlock,
    channels=_depthwise_channels,
    positions=("standard",),
    stage=lambda name: None,
    description="torchvision MNASNet _InvertedResidual (SE after the depthwise conv)",
)
