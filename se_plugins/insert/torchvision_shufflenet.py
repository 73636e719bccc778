"""SE adapter for torchvision's ShuffleNetV2 ``InvertedResidual``: SE on ``branch2``'s output, before concat + shuffle.

A ShuffleNetV2 unit splits (stride 1) or copies (stride 2) its input, transforms one half with ``branch2``
(1x1 conv, depthwise 3x3, 1x1 conv, each with BN; ReLU after the 1x1s), concatenates it with the other half (or
``branch1``'s output) and shuffles the channels. ``branch2`` is the unit's residual-like branch: SE squeezes and
rescales its output (after its last BN + ReLU), before the concat, which is where the ShuffleNetV2 authors put SE
(Ma et al. 2018, "ShuffleNet V2", Sec. 5 and Table 8, "ShuffleNet v2 with SE"; their released ShuffleNetV2+ code
appends SE to the end of the main branch) and where the SE paper's rule for residual units puts it (on the
branch, before it is merged with the identity half). The identity half is not gated. ``position="standard"``
only; stages 2..4 are torchvision's ``stage2..stage4`` (``stage1`` is the stem, it has no units).
"""

import re

import torch
import torchvision.models.shufflenetv2 as tv_shufflenet
from torch import nn

from .block import SEResidualBlock
from .registry import register_se_block

_STAGE_RE = re.compile(r"(?:^|[._])stage([234])[._]\d+$")


def _stage(name: str) -> int | None:
    match = _STAGE_RE.search(name)
    return int(match.group(1)) if match else None


class SETorchvisionShuffleNetV2Unit(SEResidualBlock, tv_shufflenet.InvertedResidual):
    """torchvision ShuffleNetV2 ``InvertedResidual`` with SE on ``branch2``'s output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.se(self.branch2(x2))), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.se(self.branch2(x))), dim=1)
        return tv_shufflenet.channel_shuffle(out, 2)


def _channels(block: nn.Module, position: str) -> int:
    return block.branch2[-2].num_features  # the branch's last BN


register_se_block(
    tv_shufflenet.InvertedResidual,
    SETorchvisionShuffleNetV2Unit,
    channels=_channels,
    positions=("standard",),
    stage=_stage,
    num_stages=4,
    description="torchvision ShuffleNetV2 InvertedResidual (SE on branch2, before concat + shuffle)",
)
