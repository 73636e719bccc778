"""SE adapter for timm's Res2Net / Res2NeXt ``Bottle2neck``: SE after ``bn3``, before the residual add (SE-Res2Net).

The Res2Net paper integrates SE "right before the residual connections" (Gao et al., "Res2Net: A New Multi-scale
Backbone Architecture", TPAMI 2021, "Integration with Modern Modules"), the SE-ResNet placement: after ``bn3``,
before drop-path and the add -- where timm's block has its slot ``se`` (``None`` without attention), so the SE keys
are ``layerN.i.se.*`` either way. The SE class is a full :class:`~se_plugins.SEResidualBlock` (every position of
the paper's integration study; the scale folded into the add, and in eager training the norm / pool / scale-add
backward of :mod:`.norm_scale_add`); its branch runs timm's multi-scale split in timm's order (identity insertion is
bit for bit timm's forward, tested). Res2Net archs are timm ``ResNet`` models: blocks are named ``layerN.i`` and their
stages come from that name. DLA's ``DlaBottle2neck`` shares the multi-scale middle (:class:`Res2NetMultiScale`).
"""

import torch
from timm.models import res2net as timm_res2net

from .block import EndsInConv3, SEResidualBlock
from .registry import conv_channels, register_se_block
from .timm_resnet import TimmDropPath


class Res2NetMultiScale:
    """Res2Net's multi-scale middle, from the block input to the concatenated channel groups (before ``conv3``).

    After ``conv1`` + ``bn1`` + ReLU the channels split into groups of ``width``; each group's 3x3 conv also sees the
    previous group's output, except in the first (strided) block, whose last group is average-pooled instead of
    passed on. timm's ``Bottle2neck`` and ``DlaBottle2neck`` both compute it this way.
    """

    def multi_scale(self, x: torch.Tensor) -> torch.Tensor:
        spx = torch.split(self.relu(self.bn1(self.conv1(x))), self.width, 1)
        spo = []
        sp = spx[0]
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):  # noqa: B905 (TorchScript: no strict=)
            sp = spx[i] if i == 0 or self.is_first else sp + spx[i]
            sp = self.relu(bn(conv(sp)))
            spo.append(sp)
        if self.scale > 1:
            spo.append(self.pool(spx[-1]) if self.pool is not None else spx[-1])
        return torch.cat(spo, 1)


class SETimmBottle2neck(Res2NetMultiScale, EndsInConv3, TimmDropPath, SEResidualBlock, timm_res2net.Bottle2neck):
    """timm ``Bottle2neck`` with SE: 1x1, multi-scale 3x3s, 1x1 + bn3, SE, (+ shortcut), ReLU."""

    last_norm = "bn3"

    def residual_before_last_conv(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_block(self.multi_scale(x))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn3(self.residual_before_norm(x))

    def final_act(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x)


register_se_block(
    timm_res2net.Bottle2neck,
    SETimmBottle2neck,
    channels=conv_channels("conv3"),
    description="timm Res2Net Bottle2neck (SE after bn3, before the add, as SE-Res2Net)",
)
