"""``se_plugin_<arch>`` for timm's MobileNetV2 architectures (timm's ``efficientnet`` module builds them).

Registered from a module named ``efficientnet`` like timm's, so ``timm.list_models(module="efficientnet")`` lists
the SE twins beside ``mobilenetv2_*``. SE fills each block's own SE slot (after the depthwise conv, as in
MobileNetV3/EfficientNet; see :mod:`se_plugins.insert.timm_mobilenet`). Pretrained weights are the base's, loaded
through timm's mechanism with SE identity-initialised, as for the ResNet twins.
"""

from __future__ import annotations

from timm.models import efficientnet as timm_efficientnet
from timm.models import list_models

from ._factory import register_se_twins


def base_architectures() -> list[str]:
    """The timm MobileNetV2 architectures that get an ``se_plugin_`` twin."""
    return list_models("mobilenetv2_*", exclude_filters=["*test*"])


MODELS = register_se_twins(__name__, timm_efficientnet, base_architectures())
