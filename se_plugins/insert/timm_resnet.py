"""SE adapter for timm's ResNet blocks: ResNet, ResNeXt, Wide-ResNet, ResNet-D/T/S and the AA/blur variants."""

import torch
from timm.models import resnet as timm_resnet

from .block import SEResidualBlock
from .registry import conv_channels, register_se_block


class _TimmDropPath:
    """timm blocks carry ``drop_path`` (None or a DropPath module)."""

    def branch_drop(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_path is not None:
            return self.drop_path(x)
        return x

    def drop_path_active(self) -> bool:
        return self.drop_path is not None and self.training


class SETimmBasicBlock(_TimmDropPath, SEResidualBlock, timm_resnet.BasicBlock):
    """timm ``BasicBlock`` with SE."""

    last_norm = "bn2"

    def residual_before_norm(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.drop_block(self.bn1(self.conv1(x))))
        return self.conv2(self.aa(x))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.residual_before_norm(x))

    def final_act(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(x)


class SETimmBottleneck(_TimmDropPath, SEResidualBlock, timm_resnet.Bottleneck):
    """timm ``Bottleneck`` with SE."""

    last_norm = "bn3"

    def residual_before_norm(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
        return self.conv3(x)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn3(self.residual_before_norm(x))

    def final_act(self, x: torch.Tensor) -> torch.Tensor:
        return self.act3(x)


register_se_block(
    timm_resnet.BasicBlock, SETimmBasicBlock, channels=conv_channels("conv2"), description="timm ResNet BasicBlock"
)
register_se_block(
    timm_resnet.Bottleneck, SETimmBottleneck, channels=conv_channels("conv3"), description="timm ResNet Bottleneck"
)
