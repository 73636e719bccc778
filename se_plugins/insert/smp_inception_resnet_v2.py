"""SE adapter for smp's own Inception-ResNet-v2 encoder (``smp.Unet("inceptionresnetv2")``): ``Block35``,
``Block17``, ``Block8``, the modules of timm's Inception-ResNet-v2 under their original names, so SE sits where
:mod:`.timm_inception_resnet_v2` puts it (on the scaled residual branch, before the add; every position) with the
same stages (1 = ``repeat``, 2 = ``repeat_1``, 3 = ``repeat_2`` + ``block8``). smp's final ``block8`` has
``noReLU`` set and no ReLU after its add.
"""

import torch
from segmentation_models_pytorch.encoders import _inceptionresnetv2 as smp_irv2

from .block import SEResidualBlock
from .registry import register_se_block
from .timm_inception_resnet_v2 import ThreeBranches, TwoBranches, branch_channels


class SESmpBlock35(ThreeBranches, SEResidualBlock, smp_irv2.Block35):
    """smp ``Block35`` (Inception-ResNet-A) with SE on the scaled residual branch."""

    def final_act(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x)


class SESmpBlock17(TwoBranches, SEResidualBlock, smp_irv2.Block17):
    """smp ``Block17`` (Inception-ResNet-B) with SE on the scaled residual branch."""

    def final_act(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x)


class SESmpBlock8(TwoBranches, SEResidualBlock, smp_irv2.Block8):
    """smp ``Block8`` (Inception-ResNet-C) with SE on the scaled residual branch; no ReLU where ``noReLU``."""

    def final_act(self, x: torch.Tensor) -> torch.Tensor:
        if self.noReLU:
            return x
        return self.relu(x)


for _block, _se_block, _stage in (
    (smp_irv2.Block35, SESmpBlock35, 1),
    (smp_irv2.Block17, SESmpBlock17, 2),
    (smp_irv2.Block8, SESmpBlock8, 3),
):
    register_se_block(
        _block,
        _se_block,
        channels=branch_channels,
        stage=lambda name, stage=_stage: stage,
        num_stages=3,
        description=f"smp Inception-ResNet-v2 {_block.__name__}",
    )
