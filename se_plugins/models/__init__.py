"""``se_plugin_<arch>`` timm registrations, one module per timm family, named like timm's (importing registers)."""

from . import densenet, efficientnet, regnet, resnet, resnetv2, vgg
from ._factory import PREFIX, complete_se_state_dict, create_se_plugin, pop_se_kwargs, register_se_twins

__all__ = [
    "PREFIX",
    "complete_se_state_dict",
    "create_se_plugin",
    "densenet",
    "efficientnet",
    "pop_se_kwargs",
    "register_se_twins",
    "regnet",
    "resnet",
    "resnetv2",
    "vgg",
]
