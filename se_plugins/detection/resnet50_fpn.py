"""torchvision's ResNet-50-FPN detectors with SE: Faster R-CNN, Mask R-CNN, RetinaNet, FCOS (v1 and v2 recipes).

Every builder follows its torchvision twin step by step (``weights`` / ``weights_backbone`` enums,
``_validate_trainable_layers``, the norm layer, ``_resnet_fpn_extractor`` with the same returned layers and
extra blocks, the same heads), all through one table of recipes. Pretrained weights always load into the model
*without* SE; SE is added afterwards with :func:`se_plugins.add_se`, identity-initialised, so every pretrained
key loads strictly and the detections (and masks) stay bit-identical.

Keywords common to all builders (torchvision's plus the SE options):

- ``weights``: detector weights of the *base* model (a torchvision ``*_Weights`` enum, from the hub cache);
  ``weights_file``: the same from a local state-dict file (e.g. a torchvision COCO checkpoint).
- ``weights_backbone`` (``ResNet50_Weights``) or ``backbone_weights_file`` (a local torchvision ``resnet50``
  state dict): ImageNet backbone weights.
- ``num_classes`` (91 by default, with background), ``trainable_backbone_layers`` (0..5; 3 with pretrained
  weights, 5 without), ``progress``, ``**kwargs`` to the torchvision model class.
- ``se_reduction`` (16), ``se_stages`` (``None`` = all of 1..4, ``()`` = the plain torchvision model),
  ``se_position``, ``se_init`` (default ``"identity"`` with any pretrained weights, else the paper's
  ``"random"``), ``se_trainable`` (SE trains also in frozen stages).

Example:
    >>> model = maskrcnn_se_resnet50_fpn(num_classes=21, backbone_weights_file="resnet50-0676ba61.pth")
    >>> model = retinanet_se_resnet50_fpn(weights_file="retinanet_resnet50_fpn_coco-eeacb38b.pth")
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn
from torchvision.models import ResNet50_Weights, resnet50
from torchvision.models._api import WeightsEnum
from torchvision.models._utils import _ovewrite_value_param
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection._utils import overwrite_eps
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor, _validate_trainable_layers
from torchvision.models.detection.faster_rcnn import (
    FasterRCNN_ResNet50_FPN_V2_Weights,
    FasterRCNN_ResNet50_FPN_Weights,
    FastRCNNConvFCHead,
    RPNHead,
    _default_anchorgen,
)
from torchvision.models.detection.fcos import FCOS_ResNet50_FPN_Weights
from torchvision.models.detection.mask_rcnn import (
    MaskRCNN_ResNet50_FPN_V2_Weights,
    MaskRCNN_ResNet50_FPN_Weights,
    MaskRCNNHeads,
)
from torchvision.models.detection.retinanet import (
    RetinaNet_ResNet50_FPN_V2_Weights,
    RetinaNet_ResNet50_FPN_Weights,
    RetinaNetHead,
)
from torchvision.models.detection.retinanet import _default_anchorgen as _retinanet_anchorgen
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelP6P7

from se_plugins.insert import SEPosition
from se_plugins.layers import SEInit

from .surgery import add_se_to_detector
from .weights_file import load_state_dict_file

Detector = FasterRCNN | RetinaNet | FCOS


# ------------------------------------------------------------------------------------------------------------
# the model part of each recipe (after the backbone + FPN)


def _faster_v2(backbone: nn.Module, num_classes: int, mask: bool, **kwargs: Any) -> FasterRCNN:
    """torchvision's v2 R-CNN heads: two-conv RPN head, 4conv1fc box head (and 4-conv mask head) with BN."""
    anchor_generator = _default_anchorgen()
    rpn_head = RPNHead(backbone.out_channels, anchor_generator.num_anchors_per_location()[0], conv_depth=2)
    box_head = FastRCNNConvFCHead(
        (backbone.out_channels, 7, 7), [256, 256, 256, 256], [1024], norm_layer=nn.BatchNorm2d
    )
    heads: dict[str, Any] = dict(rpn_anchor_generator=anchor_generator, rpn_head=rpn_head, box_head=box_head)
    if mask:
        heads["mask_head"] = MaskRCNNHeads(backbone.out_channels, [256, 256, 256, 256], 1, norm_layer=nn.BatchNorm2d)
    return (MaskRCNN if mask else FasterRCNN)(backbone, num_classes=num_classes, **heads, **kwargs)


def _retinanet_v2(backbone: nn.Module, num_classes: int, **kwargs: Any) -> RetinaNet:
    """torchvision's RetinaNet v2 head: GroupNorm(32) convs and a GIoU box loss."""
    anchor_generator = _retinanet_anchorgen()
    head = RetinaNetHead(
        backbone.out_channels,
        anchor_generator.num_anchors_per_location()[0],
        num_classes,
        norm_layer=functools.partial(nn.GroupNorm, 32),
    )
    head.regression_head._loss_type = "giou"
    return RetinaNet(backbone, num_classes, anchor_generator=anchor_generator, head=head, **kwargs)


@dataclass(frozen=True)
class Recipe:
    """What distinguishes torchvision's ResNet-50-FPN detector builders from each other.

    Attributes:
        weights_enum: The detector weights enum (``weights=`` accepts its members or their names).
        frozen_bn: ``FrozenBatchNorm2d`` in the backbone when any pretrained weights are given (v1 recipes);
            ``False``: ``BatchNorm2d`` always.
        fpn_bn: ``BatchNorm2d`` in the FPN (the R-CNN v2 recipes).
        returned_layers: ResNet stages fed to the FPN (``None``: torchvision's default 1..4).
        extra_blocks: Factory of the FPN's extra block (``None``: torchvision's default max-pool level).
        head: ``(backbone, num_classes, **kwargs) -> model``.
        zero_eps: Weights after whose loading torchvision sets ``FrozenBatchNorm2d.eps`` to 0.
    """

    weights_enum: type[WeightsEnum]
    frozen_bn: bool
    fpn_bn: bool
    returned_layers: list[int] | None
    extra_blocks: Callable[[], ExtraFPNBlock] | None
    head: Callable[..., nn.Module]
    zero_eps: tuple[WeightsEnum, ...] = ()


RECIPES: dict[str, Recipe] = {
    "fasterrcnn_resnet50_fpn": Recipe(
        FasterRCNN_ResNet50_FPN_Weights, True, False, None, None,
        lambda backbone, num_classes, **kw: FasterRCNN(backbone, num_classes=num_classes, **kw),
        (FasterRCNN_ResNet50_FPN_Weights.COCO_V1,),
    ),
    "fasterrcnn_resnet50_fpn_v2": Recipe(
        FasterRCNN_ResNet50_FPN_V2_Weights, False, True, None, None, functools.partial(_faster_v2, mask=False)
    ),
    "maskrcnn_resnet50_fpn": Recipe(
        MaskRCNN_ResNet50_FPN_Weights, True, False, None, None,
        lambda backbone, num_classes, **kw: MaskRCNN(backbone, num_classes=num_classes, **kw),
        (MaskRCNN_ResNet50_FPN_Weights.COCO_V1,),
    ),
    "maskrcnn_resnet50_fpn_v2": Recipe(
        MaskRCNN_ResNet50_FPN_V2_Weights, False, True, None, None, functools.partial(_faster_v2, mask=True)
    ),
    "retinanet_resnet50_fpn": Recipe(
        RetinaNet_ResNet50_FPN_Weights, True, False, [2, 3, 4], lambda: LastLevelP6P7(256, 256),
        lambda backbone, num_classes, **kw: RetinaNet(backbone, num_classes, **kw),
        (RetinaNet_ResNet50_FPN_Weights.COCO_V1,),
    ),
    "retinanet_resnet50_fpn_v2": Recipe(
        RetinaNet_ResNet50_FPN_V2_Weights, False, False, [2, 3, 4], lambda: LastLevelP6P7(2048, 256),
        _retinanet_v2,
    ),
    "fcos_resnet50_fpn": Recipe(
        FCOS_ResNet50_FPN_Weights, True, False, [2, 3, 4], lambda: LastLevelP6P7(256, 256),
        lambda backbone, num_classes, **kw: FCOS(backbone, num_classes, **kw),
    ),
}  # fmt: skip
"""torchvision builder name -> its recipe (the SE builders are named ``<arch>_se_resnet50_fpn[_v2]``)."""


# ------------------------------------------------------------------------------------------------------------
# weights


def _load_backbone_weights(
    backbone: nn.Module,
    weights_backbone: ResNet50_Weights | None,
    backbone_weights_file: str | os.PathLike | None,
    progress: bool,
) -> None:
    """Load ImageNet weights into the (SE-free) ResNet as torchvision's ``resnet50(weights=...)`` does."""
    if weights_backbone is not None:
        backbone.load_state_dict(weights_backbone.get_state_dict(progress=progress, check_hash=True))
    elif backbone_weights_file is not None:
        load_state_dict_file(
            backbone, backbone_weights_file, "backbone_weights_file", "a torchvision resnet50 state dict"
        )


# ------------------------------------------------------------------------------------------------------------
# the one builder


def build_se_resnet50_fpn(
    arch: str,
    *,
    weights: WeightsEnum | str | None = None,
    weights_file: str | os.PathLike | None = None,
    progress: bool = True,
    num_classes: int | None = None,
    weights_backbone: ResNet50_Weights | str | None = None,
    backbone_weights_file: str | os.PathLike | None = None,
    trainable_backbone_layers: int | None = None,
    se_reduction: float = 16,
    se_stages: Iterable[int] | None = None,
    se_position: SEPosition = "standard",
    se_init: SEInit | None = None,
    se_trainable: bool = True,
    **kwargs: Any,
) -> Detector:
    """torchvision's ``RECIPES[arch]`` builder, then SE (see the module docstring for the keywords).

    Raises:
        ValueError: Conflicting weights arguments, or ``num_classes`` differing from the detector weights'.
        CheckpointError: A weights file is missing, unreadable or does not fit the model.
    """
    recipe = RECIPES[arch]
    weights = recipe.weights_enum.verify(weights)
    weights_backbone = ResNet50_Weights.verify(weights_backbone)
    if weights is not None and weights_file is not None:
        raise ValueError("give either weights or weights_file, not both")
    if weights_backbone is not None and backbone_weights_file is not None:
        raise ValueError("give either weights_backbone or backbone_weights_file, not both")
    has_detector_weights = weights is not None or weights_file is not None
    if has_detector_weights and backbone_weights_file is not None:
        raise ValueError("backbone_weights_file has no effect with detector weights; give one of them")
    if weights is not None:
        weights_backbone = None
        num_classes = _ovewrite_value_param("num_classes", num_classes, len(weights.meta["categories"]))
    elif num_classes is None:
        num_classes = 91
    if weights_file is not None:
        weights_backbone = None
    is_trained = has_detector_weights or weights_backbone is not None or backbone_weights_file is not None
    trainable_backbone_layers = _validate_trainable_layers(is_trained, trainable_backbone_layers, 5, 3)

    norm_layer = misc_nn_ops.FrozenBatchNorm2d if recipe.frozen_bn and is_trained else nn.BatchNorm2d
    body = resnet50(weights=None, progress=progress, norm_layer=norm_layer)
    _load_backbone_weights(body, weights_backbone, backbone_weights_file, progress)
    backbone = _resnet_fpn_extractor(
        body,
        trainable_backbone_layers,
        returned_layers=recipe.returned_layers,
        extra_blocks=recipe.extra_blocks() if recipe.extra_blocks else None,
        norm_layer=nn.BatchNorm2d if recipe.fpn_bn else None,
    )
    model = recipe.head(backbone, num_classes, **kwargs)

    if weights is not None:
        model.load_state_dict(weights.get_state_dict(progress=progress, check_hash=True))
        if weights in recipe.zero_eps:
            overwrite_eps(model, 0.0)
    elif weights_file is not None:
        load_state_dict_file(
            model, weights_file, "weights_file", f"a torchvision {arch} state dict with num_classes={num_classes}"
        )

    se_stages = None if se_stages is None else tuple(se_stages)
    if se_stages == ():
        return model  # se_stages=(): the plain torchvision model (the baseline)
    return add_se_to_detector(
        model,
        reduction=se_reduction,
        stages=se_stages,
        position=se_position,
        init=se_init or ("identity" if is_trained else "random"),
        se_trainable=se_trainable,
    )


# ------------------------------------------------------------------------------------------------------------
# public builders (torchvision's names with _se_)


def fasterrcnn_se_resnet50_fpn(
    *,
    weights: FasterRCNN_ResNet50_FPN_Weights | str | None = None,
    weights_file: str | os.PathLike | None = None,
    progress: bool = True,
    num_classes: int | None = None,
    weights_backbone: ResNet50_Weights | str | None = None,
    backbone_weights_file: str | os.PathLike | None = None,
    trainable_backbone_layers: int | None = None,
    se_reduction: float = 16,
    se_stages: Iterable[int] | None = None,
    se_position: SEPosition = "standard",
    se_init: SEInit | None = None,
    se_trainable: bool = True,
    **kwargs: Any,
) -> FasterRCNN:
    """Faster R-CNN with an SE-ResNet-50-FPN backbone: torchvision's ``fasterrcnn_resnet50_fpn`` plus SE.

    ``FrozenBatchNorm2d`` in the backbone with pretrained weights (``BatchNorm2d`` otherwise), as torchvision.
    With r=16 on all stages SE adds 2,530,992 parameters to the base's 41,755,286 (91 classes, pretrained).

    Args:
        weights: Detector weights of the *base* model (``FasterRCNN_ResNet50_FPN_Weights``); they load before SE is
            inserted with identity init, so the detections are preserved. Set ``num_classes``.
        weights_file: The same from a local state dict of torchvision's ``fasterrcnn_resnet50_fpn``.
        progress: Show a download progress bar.
        num_classes: Number of classes including background (default 91).
        weights_backbone: ImageNet weights of the ResNet-50 (``ResNet50_Weights``).
        backbone_weights_file: A local torchvision ``resnet50`` state dict, loaded like ``weights_backbone``.
        trainable_backbone_layers: Trainable backbone stages counted from ``layer4`` (0..5; default 3 with
            pretrained weights, 5 without), as torchvision; SE trains regardless unless ``se_trainable=False``.
        se_reduction: SE reduction ratio r.
        se_stages: ResNet stages (1..4) with SE; ``None`` = all; ``()`` = none (the torchvision baseline).
        se_position: ``"standard"`` (paper), ``"pre"``, ``"post"`` or ``"identity"``.
        se_init: ``"identity"`` or ``"random"``; default ``"identity"`` with any pretrained weights, else
            ``"random"`` (the paper's).
        se_trainable: Whether SE in frozen backbone stages trains.
        **kwargs: Passed to ``torchvision.models.detection.FasterRCNN``.

    Returns:
        A ``FasterRCNN``; SE parameters live under ``backbone.body.layerN.M.se.``.

    Example:
        >>> model = fasterrcnn_se_resnet50_fpn(num_classes=21, backbone_weights_file="resnet50-0676ba61.pth")
    """
    return build_se_resnet50_fpn(
        "fasterrcnn_resnet50_fpn",
        weights=weights,
        weights_file=weights_file,
        progress=progress,
        num_classes=num_classes,
        weights_backbone=weights_backbone,
        backbone_weights_file=backbone_weights_file,
        trainable_backbone_layers=trainable_backbone_layers,
        se_reduction=se_reduction,
        se_stages=se_stages,
        se_position=se_position,
        se_init=se_init,
        se_trainable=se_trainable,
        **kwargs,
    )


def fasterrcnn_se_resnet50_fpn_v2(
    *,
    weights: FasterRCNN_ResNet50_FPN_V2_Weights | str | None = None,
    weights_file: str | os.PathLike | None = None,
    progress: bool = True,
    num_classes: int | None = None,
    weights_backbone: ResNet50_Weights | str | None = None,
    backbone_weights_file: str | os.PathLike | None = None,
    trainable_backbone_layers: int | None = None,
    se_reduction: float = 16,
    se_stages: Iterable[int] | None = None,
    se_position: SEPosition = "standard",
    se_init: SEInit | None = None,
    se_trainable: bool = True,
    **kwargs: Any,
) -> FasterRCNN:
    """Faster R-CNN v2 with an SE-ResNet-50-FPN backbone: torchvision's ``fasterrcnn_resnet50_fpn_v2`` plus SE.

    The v2 recipe: ``BatchNorm2d`` backbone and FPN, an RPN head with two 3x3 convs, a 4conv1fc box head with
    ``BatchNorm2d``. SE adds 2,530,992 parameters to 43,712,278.

    Args:
        weights: Detector weights of the *base* model (``FasterRCNN_ResNet50_FPN_V2_Weights``); they load before SE is
            inserted with identity init, so the detections are preserved. Set ``num_classes``.
        weights_file: The same from a local state dict of torchvision's ``fasterrcnn_resnet50_fpn_v2``.
        progress: Show a download progress bar.
        num_classes: Number of classes including background (default 91).
        weights_backbone: ImageNet weights of the ResNet-50 (``ResNet50_Weights``).
        backbone_weights_file: A local torchvision ``resnet50`` state dict, loaded like ``weights_backbone``.
        trainable_backbone_layers: Trainable backbone stages counted from ``layer4`` (0..5; default 3 with
            pretrained weights, 5 without), as torchvision; SE trains regardless unless ``se_trainable=False``.
        se_reduction: SE reduction ratio r.
        se_stages: ResNet stages (1..4) with SE; ``None`` = all; ``()`` = none (the torchvision baseline).
        se_position: ``"standard"`` (paper), ``"pre"``, ``"post"`` or ``"identity"``.
        se_init: ``"identity"`` or ``"random"``; default ``"identity"`` with any pretrained weights, else
            ``"random"`` (the paper's).
        se_trainable: Whether SE in frozen backbone stages trains.
        **kwargs: Passed to ``torchvision.models.detection.FasterRCNN``.

    Returns:
        A ``FasterRCNN``; SE parameters live under ``backbone.body.layerN.M.se.``.

    Example:
        >>> model = fasterrcnn_se_resnet50_fpn_v2(num_classes=21, backbone_weights_file="resnet50-0676ba61.pth")
    """
    return build_se_resnet50_fpn(
        "fasterrcnn_resnet50_fpn_v2",
        weights=weights,
        weights_file=weights_file,
        progress=progress,
        num_classes=num_classes,
        weights_backbone=weights_backbone,
        backbone_weights_file=backbone_weights_file,
        trainable_backbone_layers=trainable_backbone_layers,
        se_reduction=se_reduction,
        se_stages=se_stages,
        se_position=se_position,
        se_init=se_init,
        se_trainable=se_trainable,
        **kwargs,
    )


def maskrcnn_se_resnet50_fpn(
    *,
    weights: MaskRCNN_ResNet50_FPN_Weights | str | None = None,
    weights_file: str | os.PathLike | None = None,
    progress: bool = True,
    num_classes: int | None = None,
    weights_backbone: ResNet50_Weights | str | None = None,
    backbone_weights_file: str | os.PathLike | None = None,
    trainable_backbone_layers: int | None = None,
    se_reduction: float = 16,
    se_stages: Iterable[int] | None = None,
    se_position: SEPosition = "standard",
    se_init: SEInit | None = None,
    se_trainable: bool = True,
    **kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN with an SE-ResNet-50-FPN backbone: torchvision's ``maskrcnn_resnet50_fpn`` plus SE.

    ``FrozenBatchNorm2d`` in the backbone with pretrained weights, as torchvision. SE adds 2,530,992 parameters
    to 44,401,393.

    Args:
        weights: Detector weights of the *base* model (``MaskRCNN_ResNet50_FPN_Weights``); they load before SE is
            inserted with identity init, so the detections are preserved. Set ``num_classes``.
        weights_file: The same from a local state dict of torchvision's ``maskrcnn_resnet50_fpn``.
        progress: Show a download progress bar.
        num_classes: Number of classes including background (default 91).
        weights_backbone: ImageNet weights of the ResNet-50 (``ResNet50_Weights``).
        backbone_weights_file: A local torchvision ``resnet50`` state dict, loaded like ``weights_backbone``.
        trainable_backbone_layers: Trainable backbone stages counted from ``layer4`` (0..5; default 3 with
            pretrained weights, 5 without), as torchvision; SE trains regardless unless ``se_trainable=False``.
        se_reduction: SE reduction ratio r.
        se_stages: ResNet stages (1..4) with SE; ``None`` = all; ``()`` = none (the torchvision baseline).
        se_position: ``"standard"`` (paper), ``"pre"``, ``"post"`` or ``"identity"``.
        se_init: ``"identity"`` or ``"random"``; default ``"identity"`` with any pretrained weights, else
            ``"random"`` (the paper's).
        se_trainable: Whether SE in frozen backbone stages trains.
        **kwargs: Passed to ``torchvision.models.detection.MaskRCNN``.

    Returns:
        A ``MaskRCNN``; SE parameters live under ``backbone.body.layerN.M.se.``.

    Example:
        >>> model = maskrcnn_se_resnet50_fpn(num_classes=21, backbone_weights_file="resnet50-0676ba61.pth")
    """
    return build_se_resnet50_fpn(
        "maskrcnn_resnet50_fpn",
        weights=weights,
        weights_file=weights_file,
        progress=progress,
        num_classes=num_classes,
        weights_backbone=weights_backbone,
        backbone_weights_file=backbone_weights_file,
        trainable_backbone_layers=trainable_backbone_layers,
        se_reduction=se_reduction,
        se_stages=se_stages,
        se_position=se_position,
        se_init=se_init,
        se_trainable=se_trainable,
        **kwargs,
    )


def maskrcnn_se_resnet50_fpn_v2(
    *,
    weights: MaskRCNN_ResNet50_FPN_V2_Weights | str | None = None,
    weights_file: str | os.PathLike | None = None,
    progress: bool = True,
    num_classes: int | None = None,
    weights_backbone: ResNet50_Weights | str | None = None,
    backbone_weights_file: str | os.PathLike | None = None,
    trainable_backbone_layers: int | None = None,
    se_reduction: float = 16,
    se_stages: Iterable[int] | None = None,
    se_position: SEPosition = "standard",
    se_init: SEInit | None = None,
    se_trainable: bool = True,
    **kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN v2 with an SE-ResNet-50-FPN backbone: torchvision's ``maskrcnn_resnet50_fpn_v2`` plus SE.

    The v2 recipe: ``BatchNorm2d`` backbone and FPN, two-conv RPN head, 4conv1fc box head and 4-conv mask head
    with ``BatchNorm2d``. SE adds 2,530,992 parameters to 46,359,409.

    Args:
        weights: Detector weights of the *base* model (``MaskRCNN_ResNet50_FPN_V2_Weights``); they load before SE is
            inserted with identity init, so the detections are preserved. Set ``num_classes``.
        weights_file: The same from a local state dict of torchvision's ``maskrcnn_resnet50_fpn_v2``.
        progress: Show a download progress bar.
        num_classes: Number of classes including background (default 91).
        weights_backbone: ImageNet weights of the ResNet-50 (``ResNet50_Weights``).
        backbone_weights_file: A local torchvision ``resnet50`` state dict, loaded like ``weights_backbone``.
        trainable_backbone_layers: Trainable backbone stages counted from ``layer4`` (0..5; default 3 with
            pretrained weights, 5 without), as torchvision; SE trains regardless unless ``se_trainable=False``.
        se_reduction: SE reduction ratio r.
        se_stages: ResNet stages (1..4) with SE; ``None`` = all; ``()`` = none (the torchvision baseline).
        se_position: ``"standard"`` (paper), ``"pre"``, ``"post"`` or ``"identity"``.
        se_init: ``"identity"`` or ``"random"``; default ``"identity"`` with any pretrained weights, else
            ``"random"`` (the paper's).
        se_trainable: Whether SE in frozen backbone stages trains.
        **kwargs: Passed to ``torchvision.models.detection.MaskRCNN``.

    Returns:
        A ``MaskRCNN``; SE parameters live under ``backbone.body.layerN.M.se.``.

    Example:
        >>> model = maskrcnn_se_resnet50_fpn_v2(num_classes=21, backbone_weights_file="resnet50-0676ba61.pth")
    """
    return build_se_resnet50_fpn(
        "maskrcnn_resnet50_fpn_v2",
        weights=weights,
        weights_file=weights_file,
        progress=progress,
        num_classes=num_classes,
        weights_backbone=weights_backbone,
        backbone_weights_file=backbone_weights_file,
        trainable_backbone_layers=trainable_backbone_layers,
        se_reduction=se_reduction,
        se_stages=se_stages,
        se_position=se_position,
        se_init=se_init,
        se_trainable=se_trainable,
        **kwargs,
    )


def retinanet_se_resnet50_fpn(
    *,
    weights: RetinaNet_ResNet50_FPN_Weights | str | None = None,
    weights_file: str | os.PathLike | None = None,
    progress: bool = True,
    num_classes: int | None = None,
    weights_backbone: ResNet50_Weights | str | None = None,
    backbone_weights_file: str | os.PathLike | None = None,
    trainable_backbone_layers: int | None = None,
    se_reduction: float = 16,
    se_stages: Iterable[int] | None = None,
    se_position: SEPosition = "standard",
    se_init: SEInit | None = None,
    se_trainable: bool = True,
    **kwargs: Any,
) -> RetinaNet:
    """RetinaNet with an SE-ResNet-50-FPN backbone: torchvision's ``retinanet_resnet50_fpn`` plus SE.

    FPN on C3-C5 plus P6/P7 from P5; ``FrozenBatchNorm2d`` in the backbone with pretrained weights. SE adds
    2,530,992 parameters to 34,014,999.

    Args:
        weights: Detector weights of the *base* model (``RetinaNet_ResNet50_FPN_Weights``); they load before SE is
            inserted with identity init, so the detections are preserved. Set ``num_classes``.
        weights_file: The same from a local state dict of torchvision's ``retinanet_resnet50_fpn``.
        progress: Show a download progress bar.
        num_classes: Number of classes including background (default 91).
        weights_backbone: ImageNet weights of the ResNet-50 (``ResNet50_Weights``).
        backbone_weights_file: A local torchvision ``resnet50`` state dict, loaded like ``weights_backbone``.
        trainable_backbone_layers: Trainable backbone stages counted from ``layer4`` (0..5; default 3 with
            pretrained weights, 5 without), as torchvision; SE trains regardless unless ``se_trainable=False``.
        se_reduction: SE reduction ratio r.
        se_stages: ResNet stages (1..4) with SE; ``None`` = all; ``()`` = none (the torchvision baseline).
        se_position: ``"standard"`` (paper), ``"pre"``, ``"post"`` or ``"identity"``.
        se_init: ``"identity"`` or ``"random"``; default ``"identity"`` with any pretrained weights, else
            ``"random"`` (the paper's).
        se_trainable: Whether SE in frozen backbone stages trains.
        **kwargs: Passed to ``torchvision.models.detection.RetinaNet``.

    Returns:
        A ``RetinaNet``; SE parameters live under ``backbone.body.layerN.M.se.``.

    Example:
        >>> model = retinanet_se_resnet50_fpn(num_classes=21, backbone_weights_file="resnet50-0676ba61.pth")
    """
    return build_se_resnet50_fpn(
        "retinanet_resnet50_fpn",
        weights=weights,
        weights_file=weights_file,
        progress=progress,
        num_classes=num_classes,
        weights_backbone=weights_backbone,
        backbone_weights_file=backbone_weights_file,
        trainable_backbone_layers=trainable_backbone_layers,
        se_reduction=se_reduction,
        se_stages=se_stages,
        se_position=se_position,
        se_init=se_init,
        se_trainable=se_trainable,
        **kwargs,
    )


def retinanet_se_resnet50_fpn_v2(
    *,
    weights: RetinaNet_ResNet50_FPN_V2_Weights | str | None = None,
    weights_file: str | os.PathLike | None = None,
    progress: bool = True,
    num_classes: int | None = None,
    weights_backbone: ResNet50_Weights | str | None = None,
    backbone_weights_file: str | os.PathLike | None = None,
    trainable_backbone_layers: int | None = None,
    se_reduction: float = 16,
    se_stages: Iterable[int] | None = None,
    se_position: SEPosition = "standard",
    se_init: SEInit | None = None,
    se_trainable: bool = True,
    **kwargs: Any,
) -> RetinaNet:
    """RetinaNet v2 with an SE-ResNet-50-FPN backbone: torchvision's ``retinanet_resnet50_fpn_v2`` plus SE.

    The v2 recipe: ``BatchNorm2d`` backbone, P6/P7 from C5, GroupNorm head, GIoU box loss. SE adds 2,530,992
    parameters to 38,198,935.

    Args:
        weights: Detector weights of the *base* model (``RetinaNet_ResNet50_FPN_V2_Weights``); they load before SE is
            inserted with identity init, so the detections are preserved. Set ``num_classes``.
        weights_file: The same from a local state dict of torchvision's ``retinanet_resnet50_fpn_v2``.
        progress: Show a download progress bar.
        num_classes: Number of classes including background (default 91).
        weights_backbone: ImageNet weights of the ResNet-50 (``ResNet50_Weights``).
        backbone_weights_file: A local torchvision ``resnet50`` state dict, loaded like ``weights_backbone``.
        trainable_backbone_layers: Trainable backbone stages counted from ``layer4`` (0..5; default 3 with
            pretrained weights, 5 without), as torchvision; SE trains regardless unless ``se_trainable=False``.
        se_reduction: SE reduction ratio r.
        se_stages: ResNet stages (1..4) with SE; ``None`` = all; ``()`` = none (the torchvision baseline).
        se_position: ``"standard"`` (paper), ``"pre"``, ``"post"`` or ``"identity"``.
        se_init: ``"identity"`` or ``"random"``; default ``"identity"`` with any pretrained weights, else
            ``"random"`` (the paper's).
        se_trainable: Whether SE in frozen backbone stages trains.
        **kwargs: Passed to ``torchvision.models.detection.RetinaNet``.

    Returns:
        A ``RetinaNet``; SE parameters live under ``backbone.body.layerN.M.se.``.

    Example:
        >>> model = retinanet_se_resnet50_fpn_v2(num_classes=21, backbone_weights_file="resnet50-0676ba61.pth")
    """
    return build_se_resnet50_fpn(
        "retinanet_resnet50_fpn_v2",
        weights=weights,
        weights_file=weights_file,
        progress=progress,
        num_classes=num_classes,
        weights_backbone=weights_backbone,
        backbone_weights_file=backbone_weights_file,
        trainable_backbone_layers=trainable_backbone_layers,
        se_reduction=se_reduction,
        se_stages=se_stages,
        se_position=se_position,
        se_init=se_init,
        se_trainable=se_trainable,
        **kwargs,
    )


def fcos_se_resnet50_fpn(
    *,
    weights: FCOS_ResNet50_FPN_Weights | str | None = None,
    weights_file: str | os.PathLike | None = None,
    progress: bool = True,
    num_classes: int | None = None,
    weights_backbone: ResNet50_Weights | str | None = None,
    backbone_weights_file: str | os.PathLike | None = None,
    trainable_backbone_layers: int | None = None,
    se_reduction: float = 16,
    se_stages: Iterable[int] | None = None,
    se_position: SEPosition = "standard",
    se_init: SEInit | None = None,
    se_trainable: bool = True,
    **kwargs: Any,
) -> FCOS:
    """FCOS with an SE-ResNet-50-FPN backbone: torchvision's ``fcos_resnet50_fpn`` plus SE.

    FPN on C3-C5 plus P6/P7 from P5; ``FrozenBatchNorm2d`` in the backbone with pretrained weights. SE adds
    2,530,992 parameters to 32,269,600.

    Args:
        weights: Detector weights of the *base* model (``FCOS_ResNet50_FPN_Weights``); they load before SE is
            inserted with identity init, so the detections are preserved. Set ``num_classes``.
        weights_file: The same from a local state dict of torchvision's ``fcos_resnet50_fpn``.
        progress: Show a download progress bar.
        num_classes: Number of classes including background (default 91).
        weights_backbone: ImageNet weights of the ResNet-50 (``ResNet50_Weights``).
        backbone_weights_file: A local torchvision ``resnet50`` state dict, loaded like ``weights_backbone``.
        trainable_backbone_layers: Trainable backbone stages counted from ``layer4`` (0..5; default 3 with
            pretrained weights, 5 without), as torchvision; SE trains regardless unless ``se_trainable=False``.
        se_reduction: SE reduction ratio r.
        se_stages: ResNet stages (1..4) with SE; ``None`` = all; ``()`` = none (the torchvision baseline).
        se_position: ``"standard"`` (paper), ``"pre"``, ``"post"`` or ``"identity"``.
        se_init: ``"identity"`` or ``"random"``; default ``"identity"`` with any pretrained weights, else
            ``"random"`` (the paper's).
        se_trainable: Whether SE in frozen backbone stages trains.
        **kwargs: Passed to ``torchvision.models.detection.FCOS``.

    Returns:
        A ``FCOS``; SE parameters live under ``backbone.body.layerN.M.se.``.

    Example:
        >>> model = fcos_se_resnet50_fpn(num_classes=21, backbone_weights_file="resnet50-0676ba61.pth")
    """
    return build_se_resnet50_fpn(
        "fcos_resnet50_fpn",
        weights=weights,
        weights_file=weights_file,
        progress=progress,
        num_classes=num_classes,
        weights_backbone=weights_backbone,
        backbone_weights_file=backbone_weights_file,
        trainable_backbone_layers=trainable_backbone_layers,
        se_reduction=se_reduction,
        se_stages=se_stages,
        se_position=se_position,
        se_init=se_init,
        se_trainable=se_trainable,
        **kwargs,
    )
