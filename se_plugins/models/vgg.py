"""``se_plugin_<arch>`` for timm's VGGs (with and without BatchNorm): SE after the ReLU of each conv, as SE-VGG.

Registered from a module named ``vgg`` like timm's. SE sits after the non-linearity of each conv of ``features`` (the
SE paper's SE-VGG; see :mod:`se_plugins.insert.vgg`), not in timm's ``ConvMlp`` pre-logits head. Pretrained weights
are the base's, loaded through timm's mechanism (timm's VGG key filter first) with SE identity-initialised.

timm's VGG entrypoints fix their own ``pretrained_filter_fn``, so the twins build through ``build_model_with_cfg`` as
``timm.models.vgg._create_vgg`` does (timm's ``cfgs`` table, six feature levels by default). A ``features_only`` twin
gets SE before timm flattens ``features`` into ``features_<i>`` modules (:class:`~se_plugins.models._features.
SEFeatureListNet`): after flattening, the VGG container that tells where the sites are is gone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from timm.models import build_model_with_cfg, list_models
from timm.models import vgg as timm_vgg
from torch import nn

from ._factory import register_se_twins
from ._features import SEFeatureDictNet, SEFeatureListNet


def base_architectures() -> list[str]:
    """The timm VGG architectures (no attention of their own) that get an ``se_plugin_`` twin: all of them."""
    return list_models("vgg*")


def _feature_cls(feature_cls: Any) -> Any:
    """The SE-inserting twin of timm's flattening list/dict wrappers (FX and getter wrappers keep the model)."""
    name = feature_cls.lower() if isinstance(feature_cls, str) else feature_cls
    if name in (None, "list"):
        return SEFeatureListNet
    if name == "dict":
        return SEFeatureDictNet
    if name in ("fx", "getter") or isinstance(name, type):
        return feature_cls
    raise ValueError(f"se_plugin_vgg*: features_only with feature_cls={feature_cls!r} is not supported; "
                     "use 'list', 'dict', 'fx' or 'getter'")  # fmt: skip


def base_entrypoint(variant: str) -> Callable[..., nn.Module]:
    """timm's ``vgg*`` build, taking a ``pretrained_filter_fn`` that runs after timm's VGG filter."""

    def entrypoint(pretrained: bool = False, pretrained_filter_fn: Callable | None = None, **kwargs: Any) -> nn.Module:
        def filter_fn(state_dict: dict, model: nn.Module) -> dict:
            state_dict = timm_vgg._filter_fn(state_dict)
            return pretrained_filter_fn(state_dict, model) if pretrained_filter_fn is not None else state_dict

        out_indices = kwargs.pop("out_indices", (0, 1, 2, 3, 4, 5))  # timm's VGG default: stride 1 .. 32
        if variant.endswith("_bn"):  # as timm's vgg*_bn entrypoints
            kwargs.setdefault("norm_layer", nn.BatchNorm2d)
        if kwargs.get("features_only"):
            kwargs["feature_cls"] = _feature_cls(kwargs.get("feature_cls"))
        return build_model_with_cfg(
            timm_vgg.VGG,
            variant,
            pretrained,
            model_cfg=timm_vgg.cfgs[variant.split("_")[0]],
            feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
            pretrained_filter_fn=filter_fn,
            **kwargs,
        )

    entrypoint.__name__ = variant
    return entrypoint


MODELS = register_se_twins(__name__, timm_vgg, base_architectures(), base_entrypoint=base_entrypoint)
