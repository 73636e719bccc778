"""``se_plugin_<arch>`` timm registrations, one module per timm family, named like timm's (importing registers)."""

from . import (
    efficientnet,
    inception_resnet_v2,
    inception_v3,
    inception_v4,
    regnet,
    resnet,
    resnetv2,
    xception,
    xception_aligned,
)
from ._factory import PREFIX, complete_se_state_dict, create_se_plugin, pop_se_kwargs, register_se_twins

__all__ = [
    "PREFIX",
    "complete_se_state_dict",
    "create_se_plugin",
    "efficientnet",
    "inception_resnet_v2",
    "inception_v3",
    "inception_v4",
    "pop_se_kwargs",
    "register_se_twins",
    "regnet",
    "resnet",
    "resnetv2",
    "xception",
    "xception_aligned",
]
