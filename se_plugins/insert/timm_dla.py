"""SE adapter for timm's DLA blocks (``DlaBasic``, ``DlaBottleneck``, ``DlaBottle2neck``, inside ``DlaTree``).

A DLA block gets its shortcut as an argument: ``forward(x, shortcut=None, children=None)``; the tree computes the
projected shortcut (``project(downsample(x))``) and passes it in, and ``None`` means the identity. SE sits on the
branch after its last BN, before the add (the SE-ResNet placement, Hu et al. Fig. 3), and gets every position and
the fused add. The blocks have no SE slot and end their forward with the add, so the SE classes compose the branch
from the block's own submodules, in the order timm's forward runs them (tests check identity insertion is
bit-for-bit timm's forward); the SE forward keeps timm's signature, so ``DlaTree`` (eager, TorchScript, FX) calls
it unchanged. ``children`` is the tree's aggregation list, unused by the blocks, as in timm.

Stages: the blocks live in ``level2`` .. ``level5`` (strides 4 .. 32; ``level0``/``level1`` are plain convs), which
are stages 1 .. 4 like a ResNet's ``layer1`` .. ``layer4``.
"""

import re

import torch
from timm.models import dla as timm_dla

from .block import EndsInConv3, SEResidualBlock
from .registry import conv_channels, register_se_block
from .timm_res2net import Res2NetMultiScale

_LEVEL_RE = re.compile(r"(?:^|[._])level(\d+)(?:[._]|$)")
_FIRST_BLOCK_LEVEL = 2


def stage_from_level_name(name: str) -> int | None:
    """Stage 1..4 of a DLA block in ``level2`` .. ``level5`` (``...levelN...`` in its name), or None."""
    match = _LEVEL_RE.search(name)
    if match is None or int(match.group(1)) < _FIRST_BLOCK_LEVEL:
        return None
    return int(match.group(1)) - _FIRST_BLOCK_LEVEL + 1


class _DlaSE(SEResidualBlock):
    """The SE forward of a DLA block, with timm's signature: the shortcut comes in (None: the block input)."""

    def forward(
        self, x: torch.Tensor, shortcut: torch.Tensor | None = None, children: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        if shortcut is None:
            shortcut = x
        if self.se_position == "standard" and self.se_fused and not torch.jit.is_scripting():
            added = self._fused_add(x, shortcut)
            if added is not None:
                return self.relu(added)
        if self.se_position == "pre":
            x = self.se(x)
        out = self.residual(x)
        if self.se_position == "standard":
            if self.se_fused:
                return self.relu(self._scale_add(out, shortcut))
            out = self.se(out)
        elif self.se_position == "identity":
            shortcut = self.se(shortcut)
        out = self.relu(out + shortcut)
        if self.se_position == "post":
            out = self.se(out)
        return out


class SETimmDlaBasic(_DlaSE, timm_dla.DlaBasic):
    """timm ``DlaBasic`` with SE: conv1, bn1, ReLU, conv2, bn2, SE, (+ shortcut), ReLU."""

    last_norm = "bn2"

    def residual_before_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.bn1(self.conv1(x))))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.residual_before_norm(x))


class SETimmDlaBottleneck(EndsInConv3, _DlaSE, timm_dla.DlaBottleneck):
    """timm ``DlaBottleneck`` (DLA, DLA-X) with SE after bn3, before the add."""

    last_norm = "bn3"

    def residual_before_last_conv(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn3(self.residual_before_norm(x))


class SETimmDlaBottle2neck(Res2NetMultiScale, EndsInConv3, _DlaSE, timm_dla.DlaBottle2neck):
    """timm ``DlaBottle2neck`` (DLA-Res2Net/Res2NeXt) with SE after bn3, before the add (as SE-Res2Net)."""

    last_norm = "bn3"

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn3(self.residual_before_norm(x))

    def residual_before_last_conv(self, x: torch.Tensor) -> torch.Tensor:
        return self.multi_scale(x)


for _block, _se_block, _last in (
    (timm_dla.DlaBasic, SETimmDlaBasic, "conv2"),
    (timm_dla.DlaBottleneck, SETimmDlaBottleneck, "conv3"),
    (timm_dla.DlaBottle2neck, SETimmDlaBottle2neck, "conv3"),
):
    register_se_block(
        _block,
        _se_block,
        channels=conv_channels(_last),
        stage=stage_from_level_name,
        description=f"timm DLA {_block.__name__}",
    )
