"""``se_plugin_<arch>`` for timm's pre-activation ResNet-V2 architectures (ResNet-V2, BiT; all without attention).

Registered from a module named ``resnetv2`` like timm's; SE at the end of each block's branch, before the add (see
:mod:`se_plugins.insert.timm_resnetv2`).
"""

from __future__ import annotations

from timm.models import list_models
from timm.models import resnetv2 as timm_resnetv2

from ._factory import register_se_twins


def base_architectures() -> list[str]:
    """The timm ResNet-V2 architectures that get an ``se_plugin_`` twin."""
    return list_models("resnetv2_*")


MODELS = register_se_twins(__name__, timm_resnetv2, base_architectures())
