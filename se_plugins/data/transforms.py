"""Transform presets built from ``torchvision.transforms.v2``: boxes and masks move with the image.

Both presets take and return the datasets' samples: ``(image, target_dict)`` for detection,
``(image, mask)`` for segmentation. Masks are resized with nearest-neighbour interpolation (v2 does
that for ``tv_tensors.Mask``) and padded with 255 (ignore). Every operation works on images of any channel count
(1, 3, 4, 13, ...) and leaves float images unscaled (``ToDtype(float32, scale=True)`` only scales integer
tensors), so values decoded by ``se_plugins.data.decode.ImageReader`` reach the model as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from se_plugins.data.voc import IGNORE_INDEX

PER_BOX_KEYS = ("labels", "area", "iscrowd", "difficult")
"""Target entries that hold one value per box; ``SanitizeBoundingBoxes`` filters them with the boxes."""


def per_box_fields(inputs: Any) -> tuple[torch.Tensor, ...] | None:
    """``labels_getter`` for ``v2.SanitizeBoundingBoxes``: the per-box tensors of an ``(image, target)``."""
    target = inputs[1] if isinstance(inputs, tuple | list) and len(inputs) > 1 else inputs
    if not isinstance(target, dict):
        return None
    return tuple(target[k] for k in PER_BOX_KEYS if isinstance(target.get(k), torch.Tensor))


def detection_transforms(
    train: bool,
    min_size: int | Sequence[int] | None = 512,
    max_size: int = 853,
    hflip_prob: float = 0.5,
) -> v2.Compose:
    """Detection preset for ``(image, target)`` samples.

    Train: horizontal flip, resize of the shorter side to a random choice of ``min_size`` (multi-scale)
    with the longer side at most ``max_size``, removal of boxes that became degenerate (with their
    labels/area/iscrowd/difficult), float32 (integer tensors scaled to [0, 1]). Eval: resize of the shorter side to
    ``min_size`` (its last entry for a list) or, with ``min_size=None``, no resize.

    Note that an eval resize puts predictions in resized coordinates; torchvision's detection models
    resize internally and map boxes back, so ``min_size=None`` is the usual choice for evaluation.

    Args:
        train: Training (random) or evaluation (deterministic) preset.
        min_size: Shorter-side size(s) in pixels, or None for no resize.
        max_size: Upper bound for the longer side.
        hflip_prob: Probability of a horizontal flip (train only).

    Example:
        >>> ds = CocoDetection(img_dir, ann_file, transforms=detection_transforms(True, [480, 512, 544]))
    """
    sizes = [min_size] if isinstance(min_size, int) else (list(min_size) if min_size is not None else [])
    if any(s <= 0 for s in sizes) or (min_size is not None and not sizes):
        raise ValueError(
            f"min_size must be a positive int, a non-empty list of them or None, got {min_size!r}"
        )
    if sizes and max(sizes) >= max_size:
        raise ValueError(f"max_size ({max_size}) must be larger than min_size ({min_size})")
    ops: list[Any] = [v2.ToImage()]
    if train:
        if hflip_prob > 0:
            ops.append(v2.RandomHorizontalFlip(hflip_prob))
        if sizes:
            ops.append(v2.RandomShortestSize(sizes, max_size=max_size))
        ops.append(v2.SanitizeBoundingBoxes(labels_getter=per_box_fields))
    elif sizes:
        ops.append(v2.Resize(sizes[-1], max_size=max_size))
    ops.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(ops)


class PadToMultiple:
    """Pad ``(image, mask)`` at the bottom/right so height and width are multiples of ``divisor``.

    The image is padded with 0 and a ``tv_tensors.Mask`` with 255 (ignore), so metrics are unaffected;
    U-Net-style models need sizes divisible by their output stride (32).
    """

    def __init__(self, divisor: int = 32, fill: int = 0, mask_fill: int = IGNORE_INDEX) -> None:
        self.divisor, self.fill, self.mask_fill = divisor, fill, mask_fill

    def __call__(self, image: Any, target: Any = None) -> Any:
        height, width = F.get_size(image)
        padding = [0, 0, -width % self.divisor, -height % self.divisor]  # left, top, right, bottom
        if any(padding):
            image = F.pad(image, padding, fill=self.fill)
            if isinstance(target, tv_tensors.Mask):
                target = F.pad(target, padding, fill=self.mask_fill)
        return image if target is None else (image, target)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(divisor={self.divisor})"


def segmentation_transforms(
    train: bool,
    crop_size: int = 512,
    scale_range: tuple[float, float] = (0.5, 2.0),
    hflip_prob: float = 0.5,
    *,
    base_size: int | None = None,
    eval_size: int | None = None,
    size_divisor: int = 32,
) -> v2.Compose:
    """Segmentation preset for ``(image, mask)`` samples.

    Train: resize of the shorter side to a random size in ``scale_range * base_size``, random
    ``crop_size`` crop (image padded with 0, mask with 255 where the image is smaller), horizontal flip,
    float32 (integer tensors scaled to [0, 1]). Eval: optional resize of the shorter side to ``eval_size``, then
    padding to a multiple of ``size_divisor`` (mask padded with 255), float32.

    Args:
        train: Training (random) or evaluation (deterministic) preset.
        crop_size: Side of the square training crop.
        scale_range: Range of the random shorter-side size, relative to ``base_size``.
        hflip_prob: Probability of a horizontal flip (train only).
        base_size: Reference shorter side for ``scale_range`` (default ``crop_size``).
        eval_size: Shorter side at evaluation (None: keep the original size).
        size_divisor: Eval padding multiple (1 or 0: no padding).

    Example:
        >>> ds = VOCSegmentation(root, "train", transforms=segmentation_transforms(True, crop_size=256))
    """
    ops: list[Any] = [v2.ToImage()]
    if train:
        base = base_size or crop_size
        low, high = round(scale_range[0] * base), round(scale_range[1] * base)
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be increasing and positive, got {scale_range}")
        ops.append(v2.RandomResize(low, high + 1) if high > low else v2.Resize(low))
        fill = {tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}
        ops.append(v2.RandomCrop(crop_size, pad_if_needed=True, fill=fill))
        if hflip_prob > 0:
            ops.append(v2.RandomHorizontalFlip(hflip_prob))
    else:
        if eval_size:
            ops.append(v2.Resize(eval_size))
        if size_divisor and size_divisor > 1:
            ops.append(PadToMultiple(size_divisor))
    ops.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(ops)
