"""Faster R-CNN with Squeeze-and-Excitation: torchvision's R50-FPN recipes, timm backbones + FPN, surgery.

The builders follow torchvision's ``fasterrcnn_resnet50_fpn(_v2)`` step by step (``weights`` and
``weights_backbone`` enums, ``_validate_trainable_layers``, ``_resnet_fpn_extractor``, ``FasterRCNN``) and
then insert SE with :func:`se_plugins.add_se`. Pretrained weights always load into the model *without* SE; SE
is added afterwards with identity initialisation, so every pretrained key loads strictly and the detections
stay the same.

Example:
    >>> from se_plugins.detection import fasterrcnn_se_resnet50_fpn
    >>> model = fasterrcnn_se_resnet50_fpn(num_classes=21, backbone_weights_file="resnet50-0676ba61.pth")
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Dict, Literal  # noqa: UP035 (TorchScript needs typing.Dict)

import timm
import torch
from timm.utils import freeze as timm_freeze
from torch import nn
from torchvision.models import ResNet50_Weights, resnet50
from torchvision.models._utils import _ovewrite_value_param
from torchvision.models.detection._utils import overwrite_eps
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor, _validate_trainable_layers
from torchvision.models.detection.faster_rcnn import (
    FasterRCNN,
    FasterRCNN_ResNet50_FPN_V2_Weights,
    FasterRCNN_ResNet50_FPN_Weights,
    FastRCNNConvFCHead,
    RPNHead,
    _default_anchorgen,
)
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from .errors import CheckpointError, ConfigError
from .insert import SEPosition, add_se, se_modules
from .layers import SEInit
from .models import PREFIX as SE_PLUGIN_PREFIX

__all__ = [
    "DETECTION_MODELS",
    "TimmBackboneWithFPN",
    "add_se_to_detector",
    "create_detection_model",
    "fasterrcnn_se_resnet50_fpn",
    "fasterrcnn_se_resnet50_fpn_v2",
    "fasterrcnn_timm_fpn",
]

ExtraBlocks = Literal["maxpool", "p6p7"] | None
_EXTRA_LEVELS = {"maxpool": 1, "p6p7": 2, None: 0}
_ASPECT_RATIOS = (0.5, 1.0, 2.0)


# ------------------------------------------------------------------------------------------------------------
# SE on an existing detector


def _set_se_trainable(model: nn.Module, se_trainable: bool) -> None:
    """SE trains everywhere (``True``) or, with ``False``, only in blocks whose own weights train."""
    for name, se in se_modules(model).items():
        block = model.get_submodule(name.rpartition(".")[0])
        block_trains = any(p.requires_grad for n, p in block.named_parameters() if not n.startswith("se."))
        se.requires_grad_(se_trainable or block_trains)


def add_se_to_detector(
    model: nn.Module,
    *,
    reduction: float = 16,
    stages: Iterable[int] | None = None,
    position: SEPosition = "standard",
    init: SEInit = "identity",
    fused: bool = True,
    se_trainable: bool = True,
) -> nn.Module:
    """Insert SE into the ResNet backbone of an existing detector (in place), keeping every pretrained key.

    Works on any torchvision detector with a torchvision or timm ResNet backbone (Faster/Mask R-CNN,
    RetinaNet, FCOS; ``FrozenBatchNorm2d`` or ``BatchNorm2d``). With ``init="identity"`` the detector returns
    exactly the same detections as before. ``se_plugins.add_se(model)`` does the same insertion; this function
    also decides whether SE in frozen backbone stages trains.

    Args:
        model: The detector (its state dict keys stay unchanged; new ones appear under ``...<block>.se.``).
        reduction: SE reduction ratio r.
        stages: ResNet stages (1..4) that get SE; ``None`` = all.
        position: ``"standard"``, ``"pre"``, ``"post"`` or ``"identity"`` (see :func:`se_plugins.add_se`).
        init: ``"identity"`` (keeps the detections) or ``"random"`` (the paper's initialisation).
        fused: Fold the SE scale into the residual add (same results, less memory traffic).
        se_trainable: SE parameters train even in frozen backbone stages; ``False``: SE in a frozen stage is
            frozen like the stage.

    Returns:
        ``model``.

    Example:
        >>> import torchvision
        >>> det = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
        >>> det = add_se_to_detector(det)
    """
    add_se(model, reduction=reduction, stages=stages, position=position, init=init, fused=fused)
    _set_se_trainable(model, se_trainable)
    return model


# ------------------------------------------------------------------------------------------------------------
# torchvision R50-FPN recipes with SE


def _load_backbone_weights(
    backbone: nn.Module,
    weights_backbone: ResNet50_Weights | None,
    backbone_weights_file: str | os.PathLike | None,
    progress: bool,
) -> None:
    """Load ImageNet weights into the (SE-free) ResNet as torchvision's ``resnet50(weights=...)`` does."""
    if weights_backbone is not None:
        backbone.load_state_dict(weights_backbone.get_state_dict(progress=progress, check_hash=True))
        return
    if backbone_weights_file is None:
        return
    path = os.fspath(backbone_weights_file)
    if not os.path.isfile(path):
        raise CheckpointError(f"backbone_weights_file {path!r}: no such file")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise CheckpointError(f"backbone_weights_file {path!r}: cannot read it as a state dict ({e})") from e
    for key in ("model", "state_dict"):  # a checkpoint wrapping the state dict
        if isinstance(state_dict, dict) and isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
    if not isinstance(state_dict, dict):
        raise CheckpointError(
            f"backbone_weights_file {path!r}: expected a state dict, got {type(state_dict)}"
        )
    try:
        backbone.load_state_dict(state_dict)
    except RuntimeError as e:
        details = " ".join(line.strip() for line in str(e).splitlines()[1:])
        details = details if len(details) <= 300 else details[:300] + "..."
        raise CheckpointError(
            f"backbone_weights_file {path!r} is not a torchvision resnet50 state dict: {details}"
        ) from e


def _fasterrcnn_se_resnet50_fpn(
    *,
    v2: bool,
    weights: FasterRCNN_ResNet50_FPN_Weights | FasterRCNN_ResNet50_FPN_V2_Weights | None,
    progress: bool,
    num_classes: int | None,
    weights_backbone: ResNet50_Weights | None,
    trainable_backbone_layers: int | None,
    se_reduction: float,
    se_stages: Iterable[int] | None,
    se_position: SEPosition,
    se_init: SEInit | None,
    se_trainable: bool,
    backbone_weights_file: str | os.PathLike | None,
    **kwargs: Any,
) -> FasterRCNN:
    weights = (FasterRCNN_ResNet50_FPN_V2_Weights if v2 else FasterRCNN_ResNet50_FPN_Weights).verify(weights)
    weights_backbone = ResNet50_Weights.verify(weights_backbone)
    if weights_backbone is not None and backbone_weights_file is not None:
        raise ValueError("give either weights_backbone or backbone_weights_file, not both")
    if weights is not None:
        if backbone_weights_file is not None:
            raise ValueError("backbone_weights_file has no effect with detector weights; give one of them")
        weights_backbone = None
        num_classes = _ovewrite_value_param("num_classes", num_classes, len(weights.meta["categories"]))
    elif num_classes is None:
        num_classes = 91
    is_trained = weights is not None or weights_backbone is not None or backbone_weights_file is not None
    trainable_backbone_layers = _validate_trainable_layers(is_trained, trainable_backbone_layers, 5, 3)

    if v2:
        backbone = resnet50(weights=None, progress=progress)
        _load_backbone_weights(backbone, weights_backbone, backbone_weights_file, progress)
        backbone = _resnet_fpn_extractor(backbone, trainable_backbone_layers, norm_layer=nn.BatchNorm2d)
        rpn_anchor_generator = _default_anchorgen()
        rpn_head = RPNHead(
            backbone.out_channels, rpn_anchor_generator.num_anchors_per_location()[0], conv_depth=2
        )
        box_head = FastRCNNConvFCHead(
            (backbone.out_channels, 7, 7), [256, 256, 256, 256], [1024], norm_layer=nn.BatchNorm2d
        )
        model = FasterRCNN(
            backbone,
            num_classes=num_classes,
            rpn_anchor_generator=rpn_anchor_generator,
            rpn_head=rpn_head,
            box_head=box_head,
            **kwargs,
        )
    else:
        norm_layer = misc_nn_ops.FrozenBatchNorm2d if is_trained else nn.BatchNorm2d
        backbone = resnet50(weights=None, progress=progress, norm_layer=norm_layer)
        _load_backbone_weights(backbone, weights_backbone, backbone_weights_file, progress)
        backbone = _resnet_fpn_extractor(backbone, trainable_backbone_layers)
        model = FasterRCNN(backbone, num_classes=num_classes, **kwargs)

    if weights is not None:
        model.load_state_dict(weights.get_state_dict(progress=progress, check_hash=True))
        if weights == FasterRCNN_ResNet50_FPN_Weights.COCO_V1:
            overwrite_eps(model, 0.0)

    se_stages = None if se_stages is None else tuple(se_stages)
    if se_stages == ():
        return model  # se_stages=(): the plain torchvision model (the baseline)
    add_se_to_detector(
        model,
        reduction=se_reduction,
        stages=se_stages,
        position=se_position,
        init=se_init or ("identity" if is_trained else "random"),
        se_trainable=se_trainable,
    )
    return model


def fasterrcnn_se_resnet50_fpn(
    *,
    weights: FasterRCNN_ResNet50_FPN_Weights | None = None,
    progress: bool = True,
    num_classes: int | None = None,
    weights_backbone: ResNet50_Weights | None = None,
    trainable_backbone_layers: int | None = None,
    se_reduction: float = 16,
    se_stages: Iterable[int] | None = None,
    se_position: SEPosition = "standard",
    se_init: SEInit | None = None,
    se_trainable: bool = True,
    backbone_weights_file: str | os.PathLike | None = None,
    **kwargs: Any,
) -> FasterRCNN:
    """Faster R-CNN with an SE-ResNet-50-FPN backbone: torchvision's ``fasterrcnn_resnet50_fpn`` plus SE.

    ``FrozenBatchNorm2d`` in the backbone when pretrained weights are given (``BatchNorm2d`` otherwise), as
    torchvision. With r=16 on all stages SE adds 2,530,992 parameters to the base's 41,755,286 (91 classes,
    pretrained backbone).

    Args:
        weights: Detector weights of the *base* model (COCO); they load before SE is inserted with identity
            init, so the detections are preserved. Sets ``num_classes`` (91) and ignores ``weights_backbone``.
        progress: Show a download progress bar.
        num_classes: Number of classes including background (default 91).
        weights_backbone: ImageNet weights of the ResNet-50 (``ResNet50_Weights``).
        trainable_backbone_layers: Trainable backbone stages counted from ``layer4`` (0..5, default 3 with
            pretrained weights, 5 without), exactly as torchvision; SE parameters train regardless unless
            ``se_trainable=False``.
        se_reduction: SE reduction ratio r.
        se_stages: ResNet stages (1..4) with SE; ``None`` = all; ``()`` = none (plain torchvision baseline).
        se_position: ``"standard"`` (paper), ``"pre"``, ``"post"`` or ``"identity"``.
        se_init: ``"identity"`` or ``"random"``; default ``"identity"`` when any pretrained weights are given,
            else ``"random"`` (the paper's).
        se_trainable: Whether SE in frozen backbone stages trains.
        backbone_weights_file: A local torchvision ``resnet50`` state dict, loaded like ``weights_backbone``.
        **kwargs: Passed to ``torchvision.models.detection.FasterRCNN`` (``min_size``, ``max_size``,
            ``box_detections_per_img``, ``box_score_thresh``, ...).

    Returns:
        A ``FasterRCNN``; SE parameters live under ``backbone.body.layerN.M.se.``.

    Example:
        >>> model = fasterrcnn_se_resnet50_fpn(num_classes=21, backbone_weights_file="resnet50-0676ba61.pth")
    """
    return _fasterrcnn_se_resnet50_fpn(
        v2=False,
        weights=weights,
        progress=progress,
        num_classes=num_classes,
        weights_backbone=weights_backbone,
        trainable_backbone_layers=trainable_backbone_layers,
        se_reduction=se_reduction,
        se_stages=se_stages,
        se_position=se_position,
        se_init=se_init,
        se_trainable=se_trainable,
        backbone_weights_file=backbone_weights_file,
        **kwargs,
    )


def fasterrcnn_se_resnet50_fpn_v2(
    *,
    weights: FasterRCNN_ResNet50_FPN_V2_Weights | None = None,
    progress: bool = True,
    num_classes: int | None = None,
    weights_backbone: ResNet50_Weights | None = None,
    trainable_backbone_layers: int | None = None,
    se_reduction: float = 16,
    se_stages: Iterable[int] | None = None,
    se_position: SEPosition = "standard",
    se_init: SEInit | None = None,
    se_trainable: bool = True,
    backbone_weights_file: str | os.PathLike | None = None,
    **kwargs: Any,
) -> FasterRCNN:
    """Faster R-CNN v2 with an SE-ResNet-50-FPN backbone: torchvision's ``fasterrcnn_resnet50_fpn_v2`` + SE.

    The v2 recipe: ``BatchNorm2d`` backbone and FPN, an RPN head with two 3x3 convs, a 4conv1fc box head with
    ``BatchNorm2d`` (torchvision's v2 RPN head has no norm layer).

    Args: as :func:`fasterrcnn_se_resnet50_fpn`, with ``weights`` a ``FasterRCNN_ResNet50_FPN_V2_Weights``.

    Example:
        >>> model = fasterrcnn_se_resnet50_fpn_v2(num_classes=21, backbone_weights_file="resnet50.pth")
    """
    return _fasterrcnn_se_resnet50_fpn(
        v2=True,
        weights=weights,
        progress=progress,
        num_classes=num_classes,
        weights_backbone=weights_backbone,
        trainable_backbone_layers=trainable_backbone_layers,
        se_reduction=se_reduction,
        se_stages=se_stages,
        se_position=se_position,
        se_init=se_init,
        se_trainable=se_trainable,
        backbone_weights_file=backbone_weights_file,
        **kwargs,
    )


# ------------------------------------------------------------------------------------------------------------
# timm backbones + torchvision FPN


class TimmBackboneWithFPN(nn.Module):
    """A timm ``features_only`` model with torchvision's ``FeaturePyramidNetwork`` on top.

    The backbone interface of torchvision detectors: ``out_channels`` and a forward returning an
    ``OrderedDict`` of FPN maps ``"0", "1", ...`` (one per backbone level, finest first) plus the extra levels
    (``"pool"`` or ``"p6", "p7"``). Attribute names mirror torchvision's ``BackboneWithFPN``: ``body``,
    ``fpn``.

    Args:
        body: A timm ``features_only`` model (``feature_info`` gives channels and strides).
        out_channels: FPN channels.
        extra_blocks: ``"maxpool"`` (torchvision's ``LastLevelMaxPool``), ``"p6p7"`` (``LastLevelP6P7`` on P5)
            or ``None``.
        norm_layer: Optional norm layer of the FPN convs.
    """

    def __init__(
        self,
        body: nn.Module,
        out_channels: int = 256,
        extra_blocks: ExtraBlocks = "maxpool",
        norm_layer: Callable[..., nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if extra_blocks not in _EXTRA_LEVELS:
            raise ValueError(f"extra_blocks must be 'maxpool', 'p6p7' or None, got {extra_blocks!r}")
        feature_info = getattr(body, "feature_info", None)
        if feature_info is None or not hasattr(feature_info, "channels"):
            raise ValueError(
                f"backbone {type(body).__name__} is not a timm features_only model (it has no feature_info); "
                "build it with timm.create_model(name, features_only=True)"
            )
        self.body = body
        self.in_channels_list: list[int] = list(feature_info.channels())
        self.strides: list[int] = list(feature_info.reduction())
        self.num_extra_levels = _EXTRA_LEVELS[extra_blocks]
        extra: ExtraFPNBlock | None = None
        if extra_blocks == "maxpool":
            extra = LastLevelMaxPool()
        elif extra_blocks == "p6p7":
            extra = LastLevelP6P7(out_channels, out_channels)
        self.fpn = FeaturePyramidNetwork(
            self.in_channels_list, out_channels, extra_blocks=extra, norm_layer=norm_layer
        )
        self.out_channels = out_channels

    @property
    def level_names(self) -> list[str]:
        """Names of the FPN maps built from backbone levels (the RoI pooling levels)."""
        return [str(i) for i in range(len(self.in_channels_list))]

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:  # noqa: UP006 (TorchScript needs typing.Dict)
        features = self.body(x)
        if torch.jit.isinstance(features, Dict[str, torch.Tensor]):  # noqa: UP006 (a timm FeatureDictNet)
            features = list(features.values())
        levels: Dict[str, torch.Tensor] = OrderedDict()  # noqa: UP006
        for i, feature in enumerate(features):
            levels[str(i)] = feature
        return self.fpn(levels)


def _stage_units(body: nn.Module) -> list[list[str]] | None:
    """The backbone's top-level children grouped like torchvision's ``[conv1, layer1, ..., layer4]``.

    Each feature level's module is a unit; children between levels join the next unit that has parameters (a
    stem before the first stage is its own unit). ``None`` when the levels are not top-level children.
    """
    children = [name for name, _ in body.named_children()]
    level_modules = {info["module"].replace(".", "_") for info in body.feature_info.info}
    if not level_modules & set(children):
        return None
    units: list[list[str]] = [[]]
    for name in children:
        if name in level_modules and units[-1]:
            units.append([])
        units[-1].append(name)
        if name in level_modules:
            units.append([])
    merged: list[list[str]] = []
    pending: list[str] = []
    for unit in units:
        pending += unit
        if any(True for name in unit for _ in body.get_submodule(name).parameters()):
            merged.append(pending)
            pending = []
    if pending and merged:
        merged[-1] += pending
    return merged


def _default_anchor_sizes(strides: Sequence[int], num_extra_levels: int) -> tuple[tuple[int, ...], ...]:
    """torchvision's 32, 64, ... for strides 4, 8, ...: eight times each level's stride (extra levels x2)."""
    strides = list(strides) + [strides[-1] * 2 ** (i + 1) for i in range(num_extra_levels)]
    return tuple((8 * s,) for s in strides)


def _anchor_generator(
    anchor_sizes: Sequence[int | Sequence[int]] | None,
    aspect_ratios: Sequence[float],
    backbone: TimmBackboneWithFPN,
) -> AnchorGenerator:
    num_maps = len(backbone.strides) + backbone.num_extra_levels
    if anchor_sizes is None:
        sizes = _default_anchor_sizes(backbone.strides, backbone.num_extra_levels)
    else:
        sizes = tuple((s,) if isinstance(s, int | float) else tuple(s) for s in anchor_sizes)
        if len(sizes) != num_maps:
            raise ValueError(
                f"anchor_sizes needs one entry per feature map ({num_maps}: {len(backbone.strides)} backbone "
                f"levels + {backbone.num_extra_levels} extra), got {len(sizes)}"
            )
        if len({len(s) for s in sizes}) != 1:
            raise ValueError(
                f"anchor_sizes: every level needs the same number of sizes, got {anchor_sizes!r}"
            )
    return AnchorGenerator(sizes, (tuple(aspect_ratios),) * num_maps)


def _create_timm_body(
    backbone: str,
    pretrained_backbone: bool | str | os.PathLike,
    backbone_kwargs: dict[str, Any],
    out_indices: Sequence[int],
) -> nn.Module:
    for key in ("features_only", "out_indices", "pretrained"):
        if key in backbone_kwargs:
            raise ValueError(f"backbone_kwargs: {key!r} is set by fasterrcnn_timm_fpn; use its own argument")
    kwargs = dict(backbone_kwargs)
    pretrained = bool(pretrained_backbone)
    if not isinstance(pretrained_backbone, bool) and pretrained_backbone is not None:
        path = os.fspath(pretrained_backbone)
        if not os.path.isfile(path):
            raise CheckpointError(f"pretrained_backbone {path!r}: no such file")
        kwargs["pretrained_cfg_overlay"] = {**kwargs.get("pretrained_cfg_overlay", {}), "file": path}
        pretrained = True
    if backbone.startswith(SE_PLUGIN_PREFIX) and not {"se_init", "init"} & kwargs.keys():
        kwargs["se_init"] = "identity" if pretrained else "random"
    return timm.create_model(
        backbone, pretrained=pretrained, features_only=True, out_indices=tuple(out_indices), **kwargs
    )


def fasterrcnn_timm_fpn(
    backbone: str | nn.Module,
    *,
    num_classes: int,
    pretrained_backbone: bool | str | os.PathLike = False,
    backbone_kwargs: dict[str, Any] | None = None,
    out_indices: Sequence[int] = (1, 2, 3, 4),
    fpn_channels: int = 256,
    extra_blocks: ExtraBlocks = "maxpool",
    trainable_backbone_layers: int | None = None,
    se_trainable: bool = True,
    min_size: int = 800,
    max_size: int = 1333,
    anchor_sizes: Sequence[int | Sequence[int]] | None = None,
    aspect_ratios: Sequence[float] = _ASPECT_RATIOS,
    **kwargs: Any,
) -> FasterRCNN:
    """Faster R-CNN + FPN on any timm ``features_only`` backbone (``se_plugin_*``, ResNets, ConvNeXt, ...).

    The FPN is torchvision's ``FeaturePyramidNetwork`` over ``feature_info.channels()``. Anchors match the
    levels: one size per FPN map, by default ``8 x stride`` (torchvision's 32, 64, 128, 256 for strides 4..32,
    512 for the max-pool level), aspect ratios (0.5, 1, 2); RoIAlign (7x7, sampling ratio 2) pools from the
    backbone levels, not the extra ones. Image normalisation defaults to the backbone's pretrained-cfg
    mean/std.

    Args:
        backbone: A timm model name (created with ``features_only=True``) or a timm ``features_only`` module
            (used as is; ``out_indices``, ``pretrained_backbone`` and ``backbone_kwargs`` do not apply).
        num_classes: Number of classes including background.
        pretrained_backbone: ``True``: timm's pretrained weights (hub); a path: a local checkpoint through
            timm's ``pretrained_cfg_overlay=dict(file=path)``. ``se_plugin_*`` backbones load the base weights
            with SE identity-initialised (``se_init`` defaults to ``"random"`` without pretrained weights).
        backbone_kwargs: More ``timm.create_model`` kwargs (``se_reduction``, ``se_stages``,
            ``drop_path_rate``, ...).
        out_indices: Backbone levels fed to the FPN (timm's feature indices; ConvNeXt: ``(0, 1, 2, 3)``).
        fpn_channels: FPN width.
        extra_blocks: ``"maxpool"`` (one extra level, torchvision's default), ``"p6p7"`` (two) or ``None``.
        trainable_backbone_layers: Trainable units counted from the last stage, torchvision's way: the units
            are the stem and the stages (5 for a ResNet with ``out_indices=(1, 2, 3, 4)``); frozen units get
            their parameters frozen and BatchNorm turned into ``FrozenBatchNorm2d`` (``timm.utils.freeze``).
            Default 3 with pretrained weights, all without (a given module: all unless set).
        se_trainable: SE parameters train even in frozen units (``False``: they freeze with their unit).
        min_size: Shorter image side after resizing (``GeneralizedRCNNTransform``).
        max_size: Longest image side cap.
        anchor_sizes: One size (or a tuple of sizes) per FPN map, extra levels included.
        aspect_ratios: Anchor aspect ratios, the same on every level.
        **kwargs: Passed to ``FasterRCNN`` (``box_detections_per_img``, ``image_mean``, ``rpn_*``, ``box_*``).

    Returns:
        A ``FasterRCNN`` whose ``backbone`` is a :class:`TimmBackboneWithFPN`.

    Example:
        >>> model = fasterrcnn_timm_fpn("se_plugin_resnet50", num_classes=21, pretrained_backbone="r50.pth")
    """
    if isinstance(backbone, str):
        body = _create_timm_body(backbone, pretrained_backbone, backbone_kwargs or {}, out_indices)
        is_trained = bool(pretrained_backbone)
    elif isinstance(backbone, nn.Module):
        if pretrained_backbone or backbone_kwargs:
            raise ValueError("pretrained_backbone/backbone_kwargs apply to a backbone name, not to a module")
        body = backbone
        is_trained = trainable_backbone_layers is not None
    else:
        raise TypeError(f"backbone must be a timm model name or a features_only module, got {type(backbone)}")
    fpn_backbone = TimmBackboneWithFPN(body, fpn_channels, extra_blocks)

    units = _stage_units(body)
    if units is None:
        if trainable_backbone_layers is not None:
            raise ValueError(
                f"trainable_backbone_layers: cannot find the stages of {type(body).__name__} (its feature "
                "levels are not top-level modules); freeze its parameters yourself"
            )
    else:
        trainable = _validate_trainable_layers(
            is_trained, trainable_backbone_layers, len(units), min(3, len(units))
        )
        frozen = [name for unit in units[: len(units) - trainable] for name in unit]
        if frozen:
            timm_freeze(body, frozen)
        _set_se_trainable(body, se_trainable)

    if anchor_sizes is not None and "rpn_anchor_generator" in kwargs:
        raise ValueError("give anchor_sizes or rpn_anchor_generator, not both")
    if "rpn_anchor_generator" not in kwargs:
        kwargs["rpn_anchor_generator"] = _anchor_generator(anchor_sizes, aspect_ratios, fpn_backbone)
    if "box_roi_pool" not in kwargs:
        kwargs["box_roi_pool"] = MultiScaleRoIAlign(
            featmap_names=fpn_backbone.level_names, output_size=7, sampling_ratio=2
        )
    cfg = getattr(body, "pretrained_cfg", None) or {}
    if "mean" in cfg and "std" in cfg:
        kwargs.setdefault("image_mean", list(cfg["mean"]))
        kwargs.setdefault("image_std", list(cfg["std"]))
    return FasterRCNN(fpn_backbone, num_classes=num_classes, min_size=min_size, max_size=max_size, **kwargs)


# ------------------------------------------------------------------------------------------------------------
# registry

DETECTION_MODELS: dict[str, Callable[..., FasterRCNN]] = {
    "fasterrcnn_se_resnet50_fpn": fasterrcnn_se_resnet50_fpn,
    "fasterrcnn_se_resnet50_fpn_v2": fasterrcnn_se_resnet50_fpn_v2,
    "fasterrcnn_timm_fpn": fasterrcnn_timm_fpn,
    # the same recipes without SE (baselines), with the same keywords (backbone_weights_file, ...)
    "fasterrcnn_resnet50_fpn": functools.partial(fasterrcnn_se_resnet50_fpn, se_stages=()),
    "fasterrcnn_resnet50_fpn_v2": functools.partial(fasterrcnn_se_resnet50_fpn_v2, se_stages=()),
}


def create_detection_model(name: str, **kwargs: Any) -> FasterRCNN:
    """Build the detection model registered as ``name`` in :data:`DETECTION_MODELS` with ``kwargs``.

    Raises:
        ConfigError: ``name`` is not registered.
    """
    if name not in DETECTION_MODELS:
        raise ConfigError(
            f"unknown detection model {name!r}; available: {', '.join(sorted(DETECTION_MODELS))}"
        )
    return DETECTION_MODELS[name](**kwargs)
