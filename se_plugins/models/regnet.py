"""``se_plugin_<arch>`` for timm's RegNetX architectures, with SE where RegNetY has it.

Registered from a module named ``regnet`` like timm's. SE fills each block's own SE slot (after the 3x3 group conv;
see :mod:`se_plugins.insert.timm_regnet`). With ``se_reduction=4`` a twin is RegNetY's structure: ``regnety_002``
weights load strictly into ``se_plugin_regnetx_002`` (the same widths) and give the same outputs.

timm's RegNet entrypoints fix their own ``pretrained_filter_fn`` (it remaps pycls/classy-vision checkpoints), so the
twins build through ``build_model_with_cfg`` as those entrypoints do, with that filter applied before ours.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from timm.models import build_model_with_cfg, list_models
from timm.models import regnet as timm_regnet
from torch import nn

from ._factory import register_se_twins


def base_architectures() -> list[str]:
    """The timm RegNetX architectures (no SE of their own) that get an ``se_plugin_`` twin."""
    return list_models("regnetx_*")


def _base_entrypoint(variant: str) -> Callable[..., nn.Module]:
    """timm's ``regnetx_*`` entrypoint, taking a ``pretrained_filter_fn`` that runs after timm's RegNet filter."""

    def entrypoint(pretrained: bool = False, pretrained_filter_fn: Callable | None = None, **kwargs: Any) -> nn.Module:
        def filter_fn(state_dict: dict, model: nn.Module) -> dict:
            state_dict = timm_regnet._filter_fn(state_dict)
            return pretrained_filter_fn(state_dict, model) if pretrained_filter_fn is not None else state_dict

        return build_model_with_cfg(
            timm_regnet.RegNet,
            variant,
            pretrained,
            model_cfg=timm_regnet.model_cfgs[variant],
            pretrained_filter_fn=filter_fn,
            **kwargs,
        )

    entrypoint.__name__ = variant
    return entrypoint


MODELS = register_se_twins(__name__, timm_regnet, base_architectures(), base_entrypoint=_base_entrypoint)
