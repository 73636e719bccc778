"""SE adapter for smp's own DPN encoder (``smp.Unet("dpn68")``): its ``DualPathBlock`` is the original (Cadene)
port, which passes the two paths between blocks as a ``(residual, dense)`` pair. SE sits where
:mod:`.timm_dpn` puts it -- on the residual path's part of the branch output, before its add; the dense channels
are carried on unscaled -- ``position="standard"`` only, the scale folded into the add (``se_fused``), the same
stages (``features.conv2_*`` .. ``conv5_*`` = 1 .. 4). The SE class runs the block's own submodules in the order
smp's forward does; identity insertion is bit for bit smp's forward (tested).
"""

import torch
from segmentation_models_pytorch.encoders import _dpn as smp_dpn

from .block import SEResidualBlock
from .registry import register_se_block
from .timm_dpn import residual_path_channels, stage_from_dpn_name


class SESmpDualPathBlock(SEResidualBlock, smp_dpn.DualPathBlock):
    """smp ``DualPathBlock`` with SE on the residual path's branch output: ``(x_s1 + SE(out1), [x_s2, out2])``."""

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x_in = torch.cat(x, dim=1) if isinstance(x, tuple) else x
        if self.has_proj:
            x_s = self.c1x1_w_s2(x_in) if self.key_stride == 2 else self.c1x1_w_s1(x_in)
            x_s1, x_s2 = x_s[:, : self.num_1x1_c], x_s[:, self.num_1x1_c :]
        else:
            x_s1, x_s2 = x[0], x[1]
        out = self.c1x1_c(self.c3x3_b(self.c1x1_a(x_in)))
        if self.b:
            out1, out2 = self.c1x1_c1(out), self.c1x1_c2(out)
        else:
            out1, out2 = out[:, : self.num_1x1_c], out[:, self.num_1x1_c :]
        if self.se_fused:
            resid = torch.addcmul(x_s1, out1, self.se.gate(out1))
        else:
            resid = x_s1 + self.se(out1)
        return resid, torch.cat([x_s2, out2], dim=1)


register_se_block(
    smp_dpn.DualPathBlock,
    SESmpDualPathBlock,
    channels=residual_path_channels,
    positions=("standard",),
    stage=stage_from_dpn_name,
    description="smp DPN DualPathBlock (SE on the residual path's branch, before the add)",
)
