"""``se_plugin_<arch>`` for timm's DenseNets (none has attention of its own): SE on each dense layer's new features.

Registered from a module named ``densenet`` like timm's. SE sits on the ``growth_rate`` channels each dense layer
adds, before the concatenation (see :mod:`se_plugins.insert.densenet`). Pretrained weights are the base's, loaded
through timm's mechanism (torchvision-format checkpoints through timm's own key filter first) with SE
identity-initialised.

timm's DenseNet entrypoints fix their own ``pretrained_filter_fn`` (torchvision key remapping), so the twins build
through ``build_model_with_cfg`` as those entrypoints do, with the architectures' arguments from ``MODEL_ARGS`` (the
entrypoints' own; tests/test_densenet.py checks each builds the base's exact state-dict shapes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from timm.layers import BlurPool2d
from timm.models import build_model_with_cfg
from timm.models import densenet as timm_densenet
from torch import nn

from ._factory import register_se_twins

MODEL_ARGS: dict[str, dict[str, Any]] = {
    "densenet121": dict(growth_rate=32, block_config=(6, 12, 24, 16)),
    "densenetblur121d": dict(growth_rate=32, block_config=(6, 12, 24, 16), stem_type="deep", aa_layer=BlurPool2d),
    "densenet169": dict(growth_rate=32, block_config=(6, 12, 32, 32)),
    "densenet201": dict(growth_rate=32, block_config=(6, 12, 48, 32)),
    "densenet161": dict(growth_rate=48, block_config=(6, 12, 36, 24)),
    "densenet264d": dict(growth_rate=48, block_config=(6, 12, 64, 48), stem_type="deep"),
}


def base_architectures() -> list[str]:
    """The timm DenseNet architectures that get an ``se_plugin_`` twin (all of them)."""
    return sorted(MODEL_ARGS)


def base_entrypoint(variant: str) -> Callable[..., nn.Module]:
    """timm's ``densenet*`` build, taking a ``pretrained_filter_fn`` that runs after timm's DenseNet filter."""

    def entrypoint(pretrained: bool = False, pretrained_filter_fn: Callable | None = None, **kwargs: Any) -> nn.Module:
        def filter_fn(state_dict: dict, model: nn.Module) -> dict:
            state_dict = timm_densenet._filter_torchvision_pretrained(state_dict)
            return pretrained_filter_fn(state_dict, model) if pretrained_filter_fn is not None else state_dict

        return build_model_with_cfg(
            timm_densenet.DenseNet,
            variant,
            pretrained,
            feature_cfg=dict(flatten_sequential=True),
            pretrained_filter_fn=filter_fn,
            **{**MODEL_ARGS[variant], **kwargs},
        )

    entrypoint.__name__ = variant
    return entrypoint


MODELS = register_se_twins(__name__, timm_densenet, base_architectures(), base_entrypoint=base_entrypoint)
