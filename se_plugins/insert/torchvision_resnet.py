"""SE adapter for torchvision's ResNet blocks (classifiers, detection backbones with FrozenBatchNorm2d, smp)."""

import torch
import torchvision.models.resnet as tv_resnet

from .block import EndsInConv3, SEResidualBlock
from .registry import conv_channels, register_se_block


class SETorchvisionBasicBlock(SEResidualBlock, tv_resnet.BasicBlock):
    """torchvision ``BasicBlock`` with SE."""

    last_norm = "bn2"

    def residual_before_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.bn1(self.conv1(x))))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.residual_before_norm(x))

    def final_act(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x)


class SETorchvisionBottleneck(EndsInConv3, SEResidualBlock, tv_resnet.Bottleneck):
    """torchvision ``Bottleneck`` with SE."""

    last_norm = "bn3"

    def residual_before_last_conv(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn3(self.residual_before_norm(x))

    def final_act(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x)


register_se_block(
    tv_resnet.BasicBlock,
    SETorchvisionBasicBlock,
    channels=conv_channels("conv2"),
    description="torchvision ResNet BasicBlock (also Faster R-CNN backbones, smp ResNet encoders)",
)
register_se_block(
    tv_resnet.Bottleneck,
    SETorchvisionBottleneck,
    channels=conv_channels("conv3"),
    description="torchvision ResNet Bottleneck (also Faster R-CNN backbones, smp ResNet encoders)",
)
