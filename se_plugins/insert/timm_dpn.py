"""SE adapter for timm's DPN ``DualPathBlock``: SE on the residual path's part of the branch, before its add.

A dual path block (Chen et al., "Dual Path Networks") carries two paths in one tensor: the first ``num_1x1_c``
channels are a ResNet path (``shortcut + branch``), the rest a DenseNet path (the shortcut's dense channels, then the
branch's new ``inc`` channels, concatenated). SE goes where SE-ResNet has it: on the branch output that is *added*
(``out1``, the last 1x1 conv's first ``num_1x1_c`` channels, or ``c1x1_c1`` in the "b" blocks), before the add; the
densely connected channels are carried on unscaled, as DenseNet features are (SE would rescale features that
every later block reads again). The block has no SE slot and its add sits inside the final concatenation, so the SE
class composes the block from its own submodules (shortcut projection, 1x1 -> grouped 3x3 -> 1x1, split), in the
order timm's forward runs them; tests check identity insertion is bit-for-bit timm's forward. Only ``standard``
is offered: the paper's other positions (pre, post, identity) have no single meaning for a block whose input and
output each carry two paths (``post`` would also rescale the dense features that every later block re-reads). The
scale folds into the add (``se_fused``).

Stages: ``features.conv2_*`` .. ``conv5_*`` (``features_conv2_1`` in timm's flattened feature wrapper) are 1 .. 4.
"""

import re

import torch
from timm.models import dpn as timm_dpn
from torch import nn

from .block import SEResidualBlock
from .registry import register_se_block

_STAGE_RE = re.compile(r"(?:^|[._])conv(\d+)_\d+$")
_FIRST_BLOCK_CONV = 2


def stage_from_dpn_name(name: str) -> int | None:
    """Stage 1..4 of a DPN block named ``...conv<2..5>_<i>``, or None."""
    match = _STAGE_RE.search(name)
    if match is None or int(match.group(1)) < _FIRST_BLOCK_CONV:
        return None
    return int(match.group(1)) - _FIRST_BLOCK_CONV + 1


class SETimmDualPathBlock(SEResidualBlock, timm_dpn.DualPathBlock):
    """timm ``DualPathBlock`` with SE on the residual path's branch output: ``[x_s1 + SE(out1), x_s2, out2]``."""

    def shortcut_paths(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (projected) input split into its residual-path and dense-path channels."""
        if self.c1x1_w_s1 is not None:
            x = self.c1x1_w_s1(x)
        elif self.c1x1_w_s2 is not None:
            x = self.c1x1_w_s2(x)
        return x[:, : self.num_1x1_c], x[:, self.num_1x1_c :]

    def branch_paths(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The branch output split into the part added to the residual path and the new dense channels."""
        x = self.c1x1_c(self.c3x3_b(self.c1x1_a(x)))
        if self.c1x1_c1 is not None and self.c1x1_c2 is not None:
            return self.c1x1_c1(x), self.c1x1_c2(x)
        return x[:, : self.num_1x1_c], x[:, self.num_1x1_c :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_s1, x_s2 = self.shortcut_paths(x)
        out1, out2 = self.branch_paths(x)
        if self.se_fused:
            resid = torch.addcmul(x_s1, out1, self.se.gate(out1))
        else:
            resid = x_s1 + self.se(out1)
        return torch.cat([resid, x_s2, out2], dim=1)


def residual_path_channels(block: nn.Module, position: str) -> int:
    """SE width of a dual path block: its residual path's ``num_1x1_c`` channels."""
    return block.num_1x1_c


register_se_block(
    timm_dpn.DualPathBlock,
    SETimmDualPathBlock,
    channels=residual_path_channels,
    positions=("standard",),
    stage=stage_from_dpn_name,
    description="timm DPN DualPathBlock (SE on the residual path's branch, before the add)",
)
