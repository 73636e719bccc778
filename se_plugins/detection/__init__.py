"""Detectors with Squeeze-and-Excitation: torchvision's R50-FPN recipes, timm backbones + FPN, surgery.

- :mod:`.resnet50_fpn`: ``fasterrcnn/maskrcnn/retinanet_se_resnet50_fpn(_v2)`` and ``fcos_se_resnet50_fpn``,
  torchvision's builders step by step with SE inserted after the pretrained weights are loaded (identity init:
  the detections stay the same).
- :mod:`.timm_fpn`: ``fasterrcnn/maskrcnn/retinanet/fcos_timm_fpn`` on any timm ``features_only`` backbone
  (``se_plugin_*`` for SE), one shared builder.
- :mod:`.surgery`: :func:`add_se_to_detector` for a detector you already have.

``DETECTION_MODELS`` names every builder (and the SE-free baselines) for configs; ``DETECTION_MODEL_TYPES``
the torchvision class each builds.

Example:
    >>> from se_plugins.detection import maskrcnn_se_resnet50_fpn
    >>> model = maskrcnn_se_resnet50_fpn(num_classes=21, backbone_weights_file="resnet50-0676ba61.pth")
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet

from se_plugins.errors import ConfigError

from .resnet50_fpn import (
    RECIPES,
    fasterrcnn_se_resnet50_fpn,
    fasterrcnn_se_resnet50_fpn_v2,
    fcos_se_resnet50_fpn,
    maskrcnn_se_resnet50_fpn,
    maskrcnn_se_resnet50_fpn_v2,
    retinanet_se_resnet50_fpn,
    retinanet_se_resnet50_fpn_v2,
)
from .surgery import add_se_to_detector
from .timm_fpn import (
    ARCHS,
    TimmBackboneWithFPN,
    fasterrcnn_timm_fpn,
    fcos_timm_fpn,
    maskrcnn_timm_fpn,
    retinanet_timm_fpn,
)

__all__ = [
    "DETECTION_MODELS",
    "DETECTION_MODEL_TYPES",
    "TimmBackboneWithFPN",
    "add_se_to_detector",
    "create_detection_model",
    "fasterrcnn_se_resnet50_fpn",
    "fasterrcnn_se_resnet50_fpn_v2",
    "fasterrcnn_timm_fpn",
    "fcos_se_resnet50_fpn",
    "fcos_timm_fpn",
    "maskrcnn_se_resnet50_fpn",
    "maskrcnn_se_resnet50_fpn_v2",
    "maskrcnn_timm_fpn",
    "retinanet_se_resnet50_fpn",
    "retinanet_se_resnet50_fpn_v2",
    "retinanet_timm_fpn",
]

_SE_RECIPES: dict[str, Callable[..., nn.Module]] = {
    "fasterrcnn_resnet50_fpn": fasterrcnn_se_resnet50_fpn,
    "fasterrcnn_resnet50_fpn_v2": fasterrcnn_se_resnet50_fpn_v2,
    "maskrcnn_resnet50_fpn": maskrcnn_se_resnet50_fpn,
    "maskrcnn_resnet50_fpn_v2": maskrcnn_se_resnet50_fpn_v2,
    "retinanet_resnet50_fpn": retinanet_se_resnet50_fpn,
    "retinanet_resnet50_fpn_v2": retinanet_se_resnet50_fpn_v2,
    "fcos_resnet50_fpn": fcos_se_resnet50_fpn,
}
assert set(_SE_RECIPES) == set(RECIPES)

DETECTION_MODELS: dict[str, Callable[..., nn.Module]] = {
    **{fn.__name__: fn for fn in _SE_RECIPES.values()},
    **{f"{arch}_timm_fpn": fn for arch, fn in zip(
        ARCHS, (fasterrcnn_timm_fpn, maskrcnn_timm_fpn, retinanet_timm_fpn, fcos_timm_fpn), strict=True
    )},
    # the same recipes without SE (baselines), with the same keywords (backbone_weights_file, ...)
    **{name: functools.partial(fn, se_stages=()) for name, fn in _SE_RECIPES.items()},
}  # fmt: skip
"""Config name -> builder: the SE recipes, the timm routes and the SE-free torchvision baselines."""

DETECTION_MODEL_TYPES: dict[str, type[nn.Module]] = {
    name: {"fasterrcnn": FasterRCNN, "maskrcnn": MaskRCNN, "retinanet": RetinaNet, "fcos": FCOS}[name.split("_")[0]]
    for name in DETECTION_MODELS
}
"""Config name -> the torchvision class the builder returns (``MaskRCNN`` ones predict instance masks)."""


def create_detection_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the detection model registered as ``name`` in :data:`DETECTION_MODELS` with ``kwargs``.

    Raises:
        ConfigError: ``name`` is not registered.
    """
    if name not in DETECTION_MODELS:
        raise ConfigError(f"unknown detection model {name!r}; available: {', '.join(sorted(DETECTION_MODELS))}")
    return DETECTION_MODELS[name](**kwargs)
