"""SE on an existing detector: :func:`add_se_to_detector`, and which SE blocks train in frozen stages."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from se_plugins.insert import SEPosition, add_se, se_modules
from se_plugins.layers import SEInit


def set_se_trainable(model: nn.Module, se_trainable: bool) -> None:
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
    exactly the same detections (and masks) as before. ``se_plugins.add_se(model)`` does the same insertion;
    this function also decides whether SE in frozen backbone stages trains.

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
        >>> det = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
        >>> det = add_se_to_detector(det)
    """
    add_se(model, reduction=reduction, stages=stages, position=position, init=init, fused=fused)
    set_se_trainable(model, se_trainable)
    return model
