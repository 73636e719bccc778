"""Insert Squeeze-and-Excitation into existing models: :func:`add_se` and one adapter per block family.

Supported today: timm ``BasicBlock``/``Bottleneck`` (ResNet, ResNeXt, Wide-ResNet, ResNet-D/T/S, AA/blur variants),
torchvision ``BasicBlock``/``Bottleneck`` (plain models, Faster R-CNN backbones with FrozenBatchNorm2d, smp's ResNet
encoders), timm's efficientnet-builder ``InvertedResidual``/``DepthwiseSeparableConv``/``EdgeResidual`` built without
SE (MobileNetV1/V2, MNASNet-B1, FBNet-C, SPNASNet, EfficientNet-Lite, EfficientNet-EdgeTPU, MobileNetV3-Minimal) and
MobileNetV4's ``UniversalInvertedResidual``, torchvision's MobileNetV2 ``InvertedResidual`` and MNASNet
``_InvertedResidual``, the RegNetX blocks of timm and torchvision, timm's
pre-activation ResNet-V2 blocks, timm's Res2Net ``Bottle2neck``, DLA ``DlaBasic``/``DlaBottleneck``/``DlaBottle2neck``,
DPN ``DualPathBlock``, HRNet (its branches are timm ResNet blocks), timm's CSPNet/CSPDarkNet/DarkNet blocks and BYOB
blocks (RepVGG, MobileOne, GENet, ResNet-*ts; SE in each block's own attention slot, as timm's SE variants), timm's
ConvNeXt V1/V2 ``ConvNeXtBlock`` and torchvision's ConvNeXt ``CNBlock``, the dense layers of timm's and torchvision's
DenseNet (SE on each layer's new features) and the conv units of their VGGs (SE after each conv's ReLU; sites found
by the VGG container, :func:`register_se_sites`), the Inception-v3 modules of timm and torchvision, torchvision's
GoogLeNet ``Inception``, timm's Inception-v4 modules (SE on the module output), timm's Inception-ResNet-v2
``Block35/17/8``, torchvision's ShuffleNetV2 ``InvertedResidual``, timm's Xception blocks (legacy ``Block``,
aligned ``XceptionModule`` and ``PreXceptionModule``) and smp's own DPN, Inception-v4, Inception-ResNet-v2 and
Xception encoders (the same placements as timm's). A block gets SE by switching its class to an SE subclass
(module-level, so models stay picklable, scriptable, traceable, compilable and exportable) and adding the submodule
``se`` (or filling the block's own attention slot): existing state-dict keys never change.
:func:`register_se_block` makes a user's own block class supported.
"""

from . import (  # noqa: F401  (register the adapters)
    densenet,
    smp_dpn,
    smp_inception_resnet_v2,
    smp_inception_v4,
    smp_xception,
    timm_byobnet,
    timm_convnext,
    timm_cspnet,
    timm_dla,
    timm_dpn,
    timm_inception_resnet_v2,
    timm_inception_v3,
    timm_inception_v4,
    timm_mobilenet,
    timm_regnet,
    timm_res2net,
    timm_resnet,
    timm_resnetv2,
    timm_xception,
    torchvision_convnext,
    torchvision_inception,
    torchvision_mnasnet,
    torchvision_mobilenet,
    torchvision_regnet,
    torchvision_resnet,
    torchvision_shufflenet,
    vgg,
)
from .add import SEPosition, add_se, has_se, iter_residual_blocks, iter_se_blocks, se_modules, set_se_fused
from .block import SE_POSITIONS, SEResidualBlock
from .output_block import SEOutputBlock
from .registry import SEAdapter, adapter_for, conv_channels, register_se_block, register_se_sites, supported_blocks
from .slot_block import SESlotBlock

__all__ = [
    "SE_POSITIONS",
    "SEAdapter",
    "SEPosition",
    "SEOutputBlock",
    "SEResidualBlock",
    "SESlotBlock",
    "adapter_for",
    "add_se",
    "conv_channels",
    "has_se",
    "iter_residual_blocks",
    "iter_se_blocks",
    "register_se_block",
    "register_se_sites",
    "se_modules",
    "set_se_fused",
    "supported_blocks",
]
