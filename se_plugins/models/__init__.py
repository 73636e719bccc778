"""``se_plugin_<arch>`` timm registrations, one module per timm family, named like timm's (importing registers)."""

from . import (
    byobnet,
    convnext,
    cspnet,
    densenet,
    dla,
    dpn,
    efficientnet,
    hrnet,
    regnet,
    res2net,
    resnet,
    resnetv2,
    vgg,
)
from ._factory import PREFIX, complete_se_state_dict, create_se_plugin, pop_se_kwargs, register_se_twins

__all__ = [
    "PREFIX",
    "byobnet",
    "convnext",
    "cspnet",
    "complete_se_state_dict",
    "create_se_plugin",
    "dla",
    "dpn",
    "densenet",
    "efficientnet",
    "hrnet",
    "pop_se_kwargs",
    "register_se_twins",
    "regnet",
    "res2net",
    "resnet",
    "resnetv2",
    "vgg",
]
