"""SE adapter for VGG (timm and torchvision, with or without BatchNorm): SE after the non-linearity of each conv.

The SE paper (Hu et al., Sec. 3.3): "The SE block can be integrated into standard architectures such as VGGNet by
insertion after the non-linearity following each convolution"; its SE-VGG-16 (Table 2) adds BatchNorm after each conv
(timm/torchvision ``vgg*_bn``). VGG has no block class: ``features`` is a flat ``nn.Sequential`` of
``Conv2d[, BatchNorm2d], ReLU`` units and ``MaxPool2d``. So the sites are found from the model (registered for the
VGG classes with :func:`~se_plugins.insert.registry.register_se_sites`): every ``ReLU`` of ``features`` that follows
a conv (through its BN) has its class switched to :class:`SEReLU`, ``se = se(relu(x))`` on that conv's channels, and
its SE module sits beside it (``features.<i>.se.fc1.weight``; ReLU has no keys, so none change). ``nn.ReLU`` itself
is never registered: no other model's ReLUs get SE. Stages are the five conv groups between max-pools (1..5). timm's
``ConvMlp`` pre-logits head (``pre_logits``) and torchvision's classifier get none (the paper's SE is on conv maps).

A timm ``features_only`` VGG is flattened into ``features_<i>`` modules with the VGG container gone, so ``add_se``
cannot tell its sites: build the ``se_plugin_vgg*`` twin instead (it inserts SE before timm wraps the model).
"""

from collections.abc import Iterator

import torchvision.models.vgg as tv_vgg
from timm.models import vgg as timm_vgg
from torch import nn

from .output_block import OUTPUT_POSITIONS, SEOutputBlock
from .registry import register_se_sites

VGG_STAGES = 5


class SEReLU(SEOutputBlock, nn.ReLU):
    """``nn.ReLU`` followed by SE (``se(relu(x))``): the unit of a VGG conv with SE after its non-linearity."""


def vgg_sites(vgg: nn.Module) -> Iterator[tuple[nn.Module, int, int]]:
    """``(relu, stage, channels)`` for each ReLU of ``vgg.features`` after a conv (stage: 1 + max-pools before it)."""
    stage, channels = 1, None
    for layer in vgg.features:
        if isinstance(layer, nn.MaxPool2d):
            stage += 1
        elif isinstance(layer, nn.Conv2d):
            channels = layer.out_channels
        elif isinstance(layer, nn.ReLU) and channels is not None:
            yield layer, stage, channels
            channels = None


for _container in (timm_vgg.VGG, tv_vgg.VGG):
    register_se_sites(
        _container,
        SEReLU,
        vgg_sites,
        positions=OUTPUT_POSITIONS,
        description="timm/torchvision VGG conv unit (SE after the ReLU of each conv)",
        num_stages=VGG_STAGES,
    )
