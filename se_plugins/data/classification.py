"""Image classification folders (ImageNet / torchvision ``ImageFolder`` layout) and their transform presets.

A split is a folder with one sub-folder per class (``root/<class>/<image>``), e.g. ImageNet's ``train/`` and
``val/`` after the usual val re-sorting. Classes are the sub-folder names in sorted order (label 0..K-1), or a
given list. Unreadable images raise ``DataError`` naming the file.

Example:
    >>> ds = ImageFolderClassification("imagenet/train", transform=classification_transforms(True, 224))
    >>> image, label = ds[0]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from se_plugins.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_rgb_pil(path: str) -> Image.Image:
    """Open an image file as an RGB PIL image (raises DataError naming the file)."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: cannot read image (file not found)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot read image ({' '.join(str(e).split())})") from None


class ImageFolderClassification(ImageFolder):
    """torchvision ``ImageFolder`` with clear errors and an optional fixed class list.

    Args:
        root: Split folder holding one sub-folder per class.
        transform: Applied to the PIL image.
        classes: Class names in label order; ``None`` = the sorted sub-folder names. With a list, every name
            must be a sub-folder (others are ignored).

    Attributes:
        class_names: The class names in label order (``classes`` of ``ImageFolder``).

    Raises:
        DataError: missing folder, no class folder, a listed class without folder, no image at all.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        self._given_classes = list(classes) if classes is not None else None
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: image folder not found (expected one sub-folder per class)")
        try:
            super().__init__(str(root), transform=transform, loader=load_rgb_pil)
        except FileNotFoundError as e:  # no class folder, or a class folder without images
            raise DataError(f"{root}: {' '.join(str(e).split())}") from None

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        """Sorted sub-folder names, or the given class list (each must be a sub-folder)."""
        found, _ = super().find_classes(directory)
        if self._given_classes is None:
            return found, {name: i for i, name in enumerate(found)}
        missing = [c for c in self._given_classes if c not in found]
        if missing:
            raise DataError(f"{directory}: no folder for class {missing[0]!r} (folders: {', '.join(found)})")
        return self._given_classes, {name: i for i, name in enumerate(self._given_classes)}

    @property
    def class_names(self) -> list[str]:
        """Class names in label order."""
        return list(self.classes)


def classification_transforms(
    train: bool,
    image_size: int = 224,
    crop_pct: float = 0.875,
    scale: tuple[float, float] = (0.08, 1.0),
    hflip_prob: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """The standard ImageNet presets (timm's / torchvision's): normalised float32 ``[3, S, S]`` tensors.

    Training: ``RandomResizedCrop(image_size, scale)`` (bilinear), horizontal flip. Evaluation: resize the shorter
    side to ``image_size / crop_pct``, then ``CenterCrop(image_size)``.
    """
    if train:
        ops: list[Any] = [v2.RandomResizedCrop(image_size, scale=tuple(scale), antialias=True)]
        if hflip_prob > 0:
            ops.append(v2.RandomHorizontalFlip(hflip_prob))
    else:
        ops = [v2.Resize(int(round(image_size / crop_pct)), antialias=True), v2.CenterCrop(image_size)]
    ops += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(ops)
