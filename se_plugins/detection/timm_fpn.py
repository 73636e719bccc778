"""Any timm ``features_only`` backbone + torchvision's FPN, under Faster/Mask R-CNN, RetinaNet or FCOS heads.

One builder, :func:`build_timm_fpn_detector`, serves the four detectors; what differs between them is a row of
``ARCHS`` (the model class, the anchors, the RoI pooling). The public entry points only choose the row and
the defaults: R-CNNs read P2-P5 plus a max-pool level, RetinaNet and FCOS P3-P5 plus P6/P7 (as torchvision).
With an ``se_plugin_*`` backbone the SE is in the backbone itself; plain timm backbones give the baselines.

Example:
    >>> model = maskrcnn_timm_fpn("se_plugin_resnet50", num_classes=21, pretrained_backbone="resnet50.pth")
    >>> model = retinanet_timm_fpn("se_plugin_resnet18", num_classes=5, fpn_channels=128)
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Dict, Literal  # noqa: UP035 (TorchScript needs typing.Dict)

import timm
import torch
from timm.utils import freeze as timm_freeze
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _validate_trainable_layers
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from se_plugins.errors import CheckpointError
from se_plugins.models import PREFIX as SE_PLUGIN_PREFIX

from .surgery import set_se_trainable
from .weights_file import load_state_dict_file

ExtraBlocks = Literal["maxpool", "p6p7"] | None
_EXTRA_LEVELS = {"maxpool": 1, "p6p7": 2, None: 0}


# ------------------------------------------------------------------------------------------------------------
# backbone + FPN


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
        self.fpn = FeaturePyramidNetwork(self.in_channels_list, out_channels, extra_blocks=extra, norm_layer=norm_layer)
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


# ------------------------------------------------------------------------------------------------------------
# what differs between the detectors


@dataclass(frozen=True)
class Arch:
    """One detector family on a timm backbone.

    Attributes:
        model_cls: The torchvision model class.
        anchor_key: The keyword of ``model_cls`` that takes the ``AnchorGenerator``.
        stride_factor: Default anchor size per level = ``stride_factor x stride`` (torchvision's anchors:
            8 for the R-CNN RPN, 4 for RetinaNet, 1 for FCOS, whose "anchors" are the level's points).
        scales: Anchor sizes per level as multiples of the base size (RetinaNet: three octave scales).
        aspect_ratios: Default aspect ratios, the same on every level.
        roi_pools: ``(keyword, output size)`` of the ``MultiScaleRoIAlign`` poolers over the backbone levels.
        out_indices: Default backbone levels fed to the FPN.
        extra_blocks: Default extra FPN levels.
    """

    model_cls: type[nn.Module]
    anchor_key: str
    stride_factor: int
    scales: tuple[float, ...]
    aspect_ratios: tuple[float, ...]
    roi_pools: tuple[tuple[str, int], ...]
    out_indices: tuple[int, ...]
    extra_blocks: ExtraBlocks


_RCNN_RATIOS = (0.5, 1.0, 2.0)
ARCHS: dict[str, Arch] = {
    "fasterrcnn": Arch(FasterRCNN, "rpn_anchor_generator", 8, (1.0,), _RCNN_RATIOS, (("box_roi_pool", 7),),
                       (1, 2, 3, 4), "maxpool"),
    "maskrcnn": Arch(MaskRCNN, "rpn_anchor_generator", 8, (1.0,), _RCNN_RATIOS,
                     (("box_roi_pool", 7), ("mask_roi_pool", 14)), (1, 2, 3, 4), "maxpool"),
    "retinanet": Arch(RetinaNet, "anchor_generator", 4, (1.0, 2 ** (1 / 3), 2 ** (2 / 3)), _RCNN_RATIOS, (),
                      (2, 3, 4), "p6p7"),
    "fcos": Arch(FCOS, "anchor_generator", 1, (1.0,), (1.0,), (), (2, 3, 4), "p6p7"),
}  # fmt: skip
"""Detector family -> how it sits on a timm backbone (``<family>_timm_fpn``)."""


def _default_anchor_sizes(strides: Sequence[int], num_extra_levels: int, arch: Arch) -> tuple[tuple[int, ...], ...]:
    """``stride_factor x stride x scale`` per level (extra levels double the stride), as torchvision's."""
    strides = list(strides) + [strides[-1] * 2 ** (i + 1) for i in range(num_extra_levels)]
    return tuple(tuple(int(arch.stride_factor * s * scale) for scale in arch.scales) for s in strides)


def _anchor_generator(
    anchor_sizes: Sequence[int | Sequence[int]] | None,
    aspect_ratios: Sequence[float],
    backbone: TimmBackboneWithFPN,
    arch: Arch,
) -> AnchorGenerator:
    num_maps = len(backbone.strides) + backbone.num_extra_levels
    if anchor_sizes is None:
        sizes = _default_anchor_sizes(backbone.strides, backbone.num_extra_levels, arch)
    else:
        sizes = tuple((s,) if isinstance(s, int | float) else tuple(s) for s in anchor_sizes)
        if len(sizes) != num_maps:
            raise ValueError(
                f"anchor_sizes needs one entry per feature map ({num_maps}: {len(backbone.strides)} backbone "
                f"levels + {backbone.num_extra_levels} extra), got {len(sizes)}"
            )
        if len({len(s) for s in sizes}) != 1:
            raise ValueError(f"anchor_sizes: every level needs the same number of sizes, got {anchor_sizes!r}")
    return AnchorGenerator(sizes, (tuple(aspect_ratios),) * num_maps)


def _create_timm_body(
    backbone: str,
    pretrained_backbone: bool | str | os.PathLike,
    backbone_kwargs: dict[str, Any],
    out_indices: Sequence[int],
    trained_detector: bool = False,
) -> nn.Module:
    for key in ("features_only", "out_indices", "pretrained"):
        if key in backbone_kwargs:
            raise ValueError(f"backbone_kwargs: {key!r} is set by the detector builder; use its own argument")
    kwargs = dict(backbone_kwargs)
    pretrained = bool(pretrained_backbone)
    if not isinstance(pretrained_backbone, bool) and pretrained_backbone is not None:
        path = os.fspath(pretrained_backbone)
        if not os.path.isfile(path):
            raise CheckpointError(f"pretrained_backbone {path!r}: no such file")
        kwargs["pretrained_cfg_overlay"] = {**kwargs.get("pretrained_cfg_overlay", {}), "file": path}
        pretrained = True
    if backbone.startswith(SE_PLUGIN_PREFIX) and not {"se_init", "init"} & kwargs.keys():
        kwargs["se_init"] = "identity" if pretrained or trained_detector else "random"
    try:
        return timm.create_model(
            backbone, pretrained=pretrained, features_only=True, out_indices=tuple(out_indices), **kwargs
        )
    except IndexError:  # timm's feature wrapper indexes its levels with out_indices
        with torch.device("meta"):
            levels = len(timm.create_model(backbone, features_only=True).feature_info)
        raise ValueError(
            f"out_indices {tuple(out_indices)}: timm {backbone!r} has {levels} feature levels "
            f"(indices 0..{levels - 1}); pick the FPN levels from those"
        ) from None


def _freeze_units(body: nn.Module, trainable_backbone_layers: int | None, is_trained: bool, se_trainable: bool) -> None:
    units = _stage_units(body)
    if units is None:
        if trainable_backbone_layers is not None:
            raise ValueError(
                f"trainable_backbone_layers: cannot find the stages of {type(body).__name__} (its feature "
                "levels are not top-level modules); freeze its parameters yourself"
            )
        return
    trainable = _validate_trainable_layers(is_trained, trainable_backbone_layers, len(units), min(3, len(units)))
    frozen = [name for unit in units[: len(units) - trainable] for name in unit]
    if frozen:
        timm_freeze(body, frozen)
    set_se_trainable(body, se_trainable)


def build_timm_fpn_detector(
    arch: str,
    backbone: str | nn.Module,
    *,
    num_classes: int,
    pretrained_backbone: bool | str | os.PathLike = False,
    weights_file: str | os.PathLike | None = None,
    heads: Callable[[nn.Module], None] | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    out_indices: Sequence[int] | None = None,
    fpn_channels: int = 256,
    extra_blocks: ExtraBlocks | Literal["default"] = "default",
    trainable_backbone_layers: int | None = None,
    se_trainable: bool = True,
    min_size: int = 800,
    max_size: int = 1333,
    anchor_sizes: Sequence[int | Sequence[int]] | None = None,
    aspect_ratios: Sequence[float] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """The detector ``ARCHS[arch]`` on a timm backbone + FPN (see :func:`fasterrcnn_timm_fpn` for the arguments).

    ``out_indices=None``, ``extra_blocks="default"`` and ``aspect_ratios=None`` take the family's defaults.
    ``heads`` changes the built model's heads in place (the wrappers' head options) before ``weights_file``
    loads, so the file's head weights land in the final heads.
    """
    if weights_file is not None and pretrained_backbone:
        raise ValueError("pretrained_backbone has no effect with detector weights (weights_file); give one of them")
    spec = ARCHS[arch]
    out_indices = spec.out_indices if out_indices is None else tuple(out_indices)
    extra_blocks = spec.extra_blocks if extra_blocks == "default" else extra_blocks
    if isinstance(backbone, str):
        body = _create_timm_body(
            backbone, pretrained_backbone, backbone_kwargs or {}, out_indices, trained_detector=weights_file is not None
        )
        is_trained = bool(pretrained_backbone) or weights_file is not None
    elif isinstance(backbone, nn.Module):
        if pretrained_backbone or backbone_kwargs:
            raise ValueError("pretrained_backbone/backbone_kwargs apply to a backbone name, not to a module")
        body = backbone
        is_trained = trainable_backbone_layers is not None or weights_file is not None
    else:
        raise TypeError(f"backbone must be a timm model name or a features_only module, got {type(backbone)}")
    fpn_backbone = TimmBackboneWithFPN(body, fpn_channels, extra_blocks)
    _freeze_units(body, trainable_backbone_layers, is_trained, se_trainable)

    if anchor_sizes is not None and spec.anchor_key in kwargs:
        raise ValueError(f"give anchor_sizes or {spec.anchor_key}, not both")
    if spec.anchor_key not in kwargs:
        ratios = spec.aspect_ratios if aspect_ratios is None else aspect_ratios
        kwargs[spec.anchor_key] = _anchor_generator(anchor_sizes, ratios, fpn_backbone, spec)
    for key, size in spec.roi_pools:
        if key not in kwargs:
            kwargs[key] = MultiScaleRoIAlign(featmap_names=fpn_backbone.level_names, output_size=size, sampling_ratio=2)
    cfg = getattr(body, "pretrained_cfg", None) or {}
    if "mean" in cfg and "std" in cfg:
        kwargs.setdefault("image_mean", list(cfg["mean"]))
        kwargs.setdefault("image_std", list(cfg["std"]))
    model = spec.model_cls(fpn_backbone, num_classes=num_classes, min_size=min_size, max_size=max_size, **kwargs)
    if heads is not None:
        heads(model)
    if weights_file is not None:
        expected = f"a {arch} state dict of this backbone, FPN and heads (num_classes={num_classes})"
        load_state_dict_file(model, weights_file, "weights_file", expected, keep_missing_se=True)
    return model


def fasterrcnn_timm_fpn(
    backbone: str | nn.Module,
    *,
    num_classes: int,
    pretrained_backbone: bool | str | os.PathLike = False,
    weights_file: str | os.PathLike | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    out_indices: Sequence[int] = (1, 2, 3, 4),
    fpn_channels: int = 256,
    extra_blocks: ExtraBlocks = "maxpool",
    trainable_backbone_layers: int | None = None,
    se_trainable: bool = True,
    min_size: int = 800,
    max_size: int = 1333,
    anchor_sizes: Sequence[int | Sequence[int]] | None = None,
    aspect_ratios: Sequence[float] = _RCNN_RATIOS,
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
        weights_file: A local state dict of the whole detector (or a checkpoint of this package holding one
            under ``"model"``, e.g. ``last.pth``), loaded strictly once the model is built: the same backbone,
            FPN, heads and ``num_classes``. SE modules the file has no weights for keep their init, so the
            weights of an SE-free detector give, with ``se_init="identity"`` (the default then), exactly its
            detections. Counts as trained weights for ``trainable_backbone_layers`` (as torchvision's
            ``weights``); not together with ``pretrained_backbone``.
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
    return build_timm_fpn_detector(
        "fasterrcnn", backbone, num_classes=num_classes, pretrained_backbone=pretrained_backbone,
        weights_file=weights_file, backbone_kwargs=backbone_kwargs, out_indices=out_indices,
        fpn_channels=fpn_channels, extra_blocks=extra_blocks, trainable_backbone_layers=trainable_backbone_layers,
        se_trainable=se_trainable, min_size=min_size, max_size=max_size, anchor_sizes=anchor_sizes,
        aspect_ratios=aspect_ratios, **kwargs,
    )  # fmt: skip


def maskrcnn_timm_fpn(
    backbone: str | nn.Module,
    *,
    num_classes: int,
    pretrained_backbone: bool | str | os.PathLike = False,
    weights_file: str | os.PathLike | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    out_indices: Sequence[int] = (1, 2, 3, 4),
    fpn_channels: int = 256,
    extra_blocks: ExtraBlocks = "maxpool",
    trainable_backbone_layers: int | None = None,
    se_trainable: bool = True,
    min_size: int = 800,
    max_size: int = 1333,
    anchor_sizes: Sequence[int | Sequence[int]] | None = None,
    aspect_ratios: Sequence[float] = _RCNN_RATIOS,
    mask_head_channels: int = 256,
    **kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN + FPN on any timm ``features_only`` backbone: :func:`fasterrcnn_timm_fpn` plus the mask branch.

    The mask branch is torchvision's: RoIAlign 14x14 over the backbone levels, four 3x3 convs
    (``MaskRCNNHeads``) and a 2x deconvolution predictor (``MaskRCNNPredictor``), 28x28 masks per class.

    Args:
        mask_head_channels: Width of the mask head convs and predictor (torchvision: 256).
        Others: as :func:`fasterrcnn_timm_fpn`; ``**kwargs`` go to ``MaskRCNN`` (``mask_roi_pool``, ...).

    Example:
        >>> model = maskrcnn_timm_fpn("se_plugin_resnet50", num_classes=81, pretrained_backbone="r50.pth")
    """

    def narrow_mask_head(model: nn.Module) -> None:
        width = mask_head_channels  # MaskRCNN hard-codes 256 for its default predictor's input
        model.roi_heads.mask_head = MaskRCNNHeads(fpn_channels, [width] * 4, 1)
        model.roi_heads.mask_predictor = MaskRCNNPredictor(width, width, num_classes)

    narrow = mask_head_channels != 256 and "mask_head" not in kwargs and "mask_predictor" not in kwargs
    return build_timm_fpn_detector(
        "maskrcnn", backbone, heads=narrow_mask_head if narrow else None, num_classes=num_classes,
        pretrained_backbone=pretrained_backbone,
        weights_file=weights_file, backbone_kwargs=backbone_kwargs, out_indices=out_indices,
        fpn_channels=fpn_channels, extra_blocks=extra_blocks, trainable_backbone_layers=trainable_backbone_layers,
        se_trainable=se_trainable, min_size=min_size, max_size=max_size, anchor_sizes=anchor_sizes,
        aspect_ratios=aspect_ratios, **kwargs,
    )  # fmt: skip


def retinanet_timm_fpn(
    backbone: str | nn.Module,
    *,
    num_classes: int,
    pretrained_backbone: bool | str | os.PathLike = False,
    weights_file: str | os.PathLike | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    out_indices: Sequence[int] = (2, 3, 4),
    fpn_channels: int = 256,
    extra_blocks: ExtraBlocks = "p6p7",
    trainable_backbone_layers: int | None = None,
    se_trainable: bool = True,
    min_size: int = 800,
    max_size: int = 1333,
    anchor_sizes: Sequence[int | Sequence[int]] | None = None,
    aspect_ratios: Sequence[float] = _RCNN_RATIOS,
    head_group_norm: bool = False,
    **kwargs: Any,
) -> RetinaNet:
    """RetinaNet + FPN (P3-P7 by default) on any timm ``features_only`` backbone.

    Default anchors as torchvision's RetinaNet: ``4 x stride`` with three octave scales (x1, x2^(1/3),
    x2^(2/3)) and aspect ratios (0.5, 1, 2) per level: 9 anchors per location, 32..512 px over strides 8..128.
    The head is torchvision's ``RetinaNetHead`` (focal loss) on ``fpn_channels``.

    Args:
        head_group_norm: GroupNorm(32) after each head conv, as torchvision's RetinaNet v2 head (needs
            ``fpn_channels`` divisible by 32).
        Others: as :func:`fasterrcnn_timm_fpn`; ``**kwargs`` go to ``RetinaNet`` (``score_thresh``,
            ``detections_per_img``, ``topk_candidates``, ``fg_iou_thresh``, ...).

    Example:
        >>> model = retinanet_timm_fpn("se_plugin_resnet50", num_classes=81, pretrained_backbone="r50.pth")
    """

    def group_norm_head(model: nn.Module) -> None:
        if fpn_channels % 32:
            raise ValueError(f"head_group_norm: fpn_channels must be a multiple of 32, got {fpn_channels}")
        anchors = model.anchor_generator.num_anchors_per_location()[0]
        model.head = RetinaNetHead(fpn_channels, anchors, num_classes, norm_layer=functools.partial(nn.GroupNorm, 32))

    gn_head = head_group_norm and "head" not in kwargs
    return build_timm_fpn_detector(
        "retinanet", backbone, heads=group_norm_head if gn_head else None, num_classes=num_classes,
        pretrained_backbone=pretrained_backbone,
        weights_file=weights_file, backbone_kwargs=backbone_kwargs, out_indices=out_indices,
        fpn_channels=fpn_channels, extra_blocks=extra_blocks, trainable_backbone_layers=trainable_backbone_layers,
        se_trainable=se_trainable, min_size=min_size, max_size=max_size, anchor_sizes=anchor_sizes,
        aspect_ratios=aspect_ratios, **kwargs,
    )  # fmt: skip


def fcos_timm_fpn(
    backbone: str | nn.Module,
    *,
    num_classes: int,
    pretrained_backbone: bool | str | os.PathLike = False,
    weights_file: str | os.PathLike | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    out_indices: Sequence[int] = (2, 3, 4),
    fpn_channels: int = 256,
    extra_blocks: ExtraBlocks = "p6p7",
    trainable_backbone_layers: int | None = None,
    se_trainable: bool = True,
    min_size: int = 800,
    max_size: int = 1333,
    anchor_sizes: Sequence[int | Sequence[int]] | None = None,
    aspect_ratios: Sequence[float] = (1.0,),
    **kwargs: Any,
) -> FCOS:
    """FCOS + FPN (P3-P7 by default) on any timm ``features_only`` backbone.

    FCOS is anchor-free: torchvision reads one square "anchor" per location whose size is the level's stride
    (its centre-sampling radius and per-level regression ranges come from it), so the default anchors are
    ``1 x stride`` with aspect ratio 1 (torchvision's 8..128 over strides 8..128). Keep them so.

    Args: as :func:`fasterrcnn_timm_fpn`; ``**kwargs`` go to ``FCOS`` (``score_thresh``,
    ``center_sampling_radius``, ``detections_per_img``, ...).

    Example:
        >>> model = fcos_timm_fpn("se_plugin_resnet50", num_classes=81, pretrained_backbone="r50.pth")
    """
    if fpn_channels % 32 and "head" not in kwargs:
        raise ValueError(f"fpn_channels must be a multiple of 32 for FCOS's GroupNorm(32) head, got {fpn_channels}")
    return build_timm_fpn_detector(
        "fcos", backbone, num_classes=num_classes, pretrained_backbone=pretrained_backbone,
        weights_file=weights_file, backbone_kwargs=backbone_kwargs, out_indices=out_indices,
        fpn_channels=fpn_channels, extra_blocks=extra_blocks, trainable_backbone_layers=trainable_backbone_layers,
        se_trainable=se_trainable, min_size=min_size, max_size=max_size, anchor_sizes=anchor_sizes,
        aspect_ratios=aspect_ratios, **kwargs,
    )  # fmt: skip
