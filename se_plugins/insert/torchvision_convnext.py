"""SE adapter for torchvision's ConvNeXt ``CNBlock``: SE after the layer scale, before the add (as for timm's).

torchvision's branch is ``block`` (dwconv 7x7, permute, LayerNorm, Linear, GELU, Linear, permute back) times
``layer_scale``, then stochastic depth and the add: SE sits on the scaled branch output, in NCHW, before the add (see
:mod:`se_plugins.insert.timm_convnext` for why), so the scale folds into the add and every position is supported.
"""

import re

import torch
from torchvision.models import convnext as tv_convnext

from .block import SEResidualBlock
from .registry import register_se_block

# ``features`` is [stem, stage 1, downsample, stage 2, downsample, stage 3, downsample, stage 4]
_STAGE_RE = re.compile(r"(?:^|\.)features\.(\d+)\.\d+$")


def stage_from_features_index(name: str) -> int | None:
    """Stage 1..4 of a torchvision ConvNeXt block named ``...features.<1|3|5|7>.<j>``, or None."""
    match = _STAGE_RE.search(name)
    if not match or int(match.group(1)) % 2 == 0:
        return None
    return (int(match.group(1)) + 1) // 2


class SETorchvisionCNBlock(SEResidualBlock, tv_convnext.CNBlock):
    """torchvision ``CNBlock`` with SE after the layer scale, before the add."""

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_scale * self.block(x)

    def final_act(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def branch_drop(self, x: torch.Tensor) -> torch.Tensor:
        return self.stochastic_depth(x)

    def drop_path_active(self) -> bool:
        return self.training and self.stochastic_depth.p > 0.0


def _channels(block: tv_convnext.CNBlock, position: str) -> int:
    return block.block[0].out_channels


register_se_block(
    tv_convnext.CNBlock,
    SETorchvisionCNBlock,
    channels=_channels,
    stage=stage_from_features_index,
    description="torchvision ConvNeXt CNBlock (SE after the layer scale, before the add)",
)
