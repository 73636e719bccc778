"""Insert Squeeze-and-Excitation into existing models: :func:`add_se` and one adapter per block family.

Supported today: timm ``BasicBlock``/``Bottleneck`` (ResNet, ResNeXt, Wide-ResNet, ResNet-D/T/S, AA/blur variants),
torchvision ``BasicBlock``/``Bottleneck`` (plain models, Faster R-CNN backbones with FrozenBatchNorm2d, smp's ResNet
encoders), timm's efficientnet-builder ``InvertedResidual``/``DepthwiseSeparableConv`` built without SE (MobileNetV2),
torchvision's MobileNetV2 ``InvertedResidual``, the RegNetX blocks of timm and torchvision, timm's pre-activation
ResNet-V2 blocks, the Inception-v3 modules of timm and torchvision, torchvision's GoogLeNet ``Inception``, timm's
Inception-v4 modules (SE on the module output), timm's Inception-ResNet-v2 ``Block35/17/8``, torchvision's
ShuffleNetV2 ``InvertedResidual`` and timm's Xception blocks (legacy ``Block``, aligned ``XceptionModule`` and
``PreXceptionModule``). A block gets SE by switching its class to an SE subclass (module-level, so models stay
picklable, scriptable, traceable, compilable and exportable) and adding the submodule ``se``: existing state-dict keys
never change. :func:`register_se_block` makes a user's own block class supported.
"""

from . import (  # noqa: F401  (register the adapters)
    timm_inception_resnet_v2,
    timm_inception_v3,
    timm_inception_v4,
    timm_mobilenet,
    timm_regnet,
    timm_resnet,
    timm_resnetv2,
    timm_xception,
    torchvision_inception,
    torchvision_mobilenet,
    torchvision_regnet,
    torchvision_resnet,
    torchvision_shufflenet,
)
from .add import SEPosition, add_se, has_se, iter_residual_blocks, iter_se_blocks, se_modules, set_se_fused
from .block import SE_POSITIONS, SEResidualBlock
from .output_block import SEOutputBlock
from .registry import SEAdapter, adapter_for, conv_channels, register_se_block, supported_blocks

__all__ = [
    "SE_POSITIONS",
    "SEAdapter",
    "SEPosition",
    "SEOutputBlock",
    "SEResidualBlock",
    "adapter_for",
    "add_se",
    "conv_channels",
    "has_se",
    "iter_residual_blocks",
    "iter_se_blocks",
    "register_se_block",
    "se_modules",
    "set_se_fused",
    "supported_blocks",
]
