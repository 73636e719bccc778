"""SE adapter for timm's pre-activation ResNet-V2 blocks (``PreActBasic``, ``PreActBottleneck``: ResNet-V2, BiT).

A pre-activation block has no norm after its last conv: the branch is ``norm1 -> conv1 -> norm2 -> conv2 [-> norm3
-> conv3]`` and the shortcut starts from ``norm1``'s output when it projects. SE sits at the end of the branch,
before the add (the paper's placement: after the branch's last layer), where the scale folds into the add as for
the ResNets (``se_fused``). ``position="post"`` scales the block output (after the add); ``pre`` and ``identity``
are rejected, because ``norm1`` is shared by branch and projection shortcut.
"""

import re

import torch
from timm.models import resnetv2 as timm_resnetv2
from torch import nn

from .block import SEResidualBlock
from .registry import register_se_block

_STAGE_RE = re.compile(r"(?:^|\.)stages[._](\d+)\.blocks\.\d+$")


def stage_from_stages_index(name: str) -> int | None:
    """Stage 1..4 of a block named ``...stages.<i>.blocks.<j>`` (``stages_<i>`` in timm's feature wrappers)."""
    match = _STAGE_RE.search(name)
    return int(match.group(1)) + 1 if match else None


class _PreActSE(SEResidualBlock):
    """The SE forward of a pre-activation block: the shortcut and the branch both start from ``norm1(x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_preact = self.norm1(x)
        shortcut = x
        if self.downsample is not None:
            shortcut = self.downsample(x_preact)
        out = self.residual(x_preact)
        if self.se_position == "standard":
            if self.se_fused and not (self.training and not isinstance(self.drop_path, nn.Identity)):
                return self._scale_add(out, shortcut)
            out = self.se(out)
        out = self.drop_path(out) + shortcut
        if self.se_position == "post":
            out = self.se(out)
        return out


class SETimmPreActBasic(_PreActSE, timm_resnetv2.PreActBasic):
    """timm ``PreActBasic`` with SE after ``conv2``, before the add."""

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.norm2(self.conv1(x)))


class SETimmPreActBottleneck(_PreActSE, timm_resnetv2.PreActBottleneck):
    """timm ``PreActBottleneck`` with SE after ``conv3``, before the add."""

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.norm3(self.conv2(self.norm2(self.conv1(x)))))


def _out_channels(last_conv: str):  # noqa: ANN202
    def channels(block: nn.Module, position: str) -> int:
        return getattr(block, last_conv).out_channels

    return channels


for _block, _se_block, _last in (
    (timm_resnetv2.PreActBasic, SETimmPreActBasic, "conv2"),
    (timm_resnetv2.PreActBottleneck, SETimmPreActBottleneck, "conv3"),
):
    register_se_block(
        _block,
        _se_block,
        channels=_out_channels(_last),
        positions=("standard", "post"),
        stage=stage_from_stages_index,
        description=f"timm ResNet-V2 {_block.__name__} (pre-activation; SE after the last conv, before the add)",
    )
