"""Small I/O helpers shared by the dataset readers and the shapes generator."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from typing import Any

from pycocotools.coco import COCO
from torchvision import tv_tensors

from se_plugins.data import decode
from se_plugins.errors import DataError

DEFAULT_READER = decode.ImageReader()
"""What ``load_rgb_image`` uses: 3 channels, alpha ``blend_black``, intensity ``auto``."""


def load_rgb_image(path: str | os.PathLike) -> tv_tensors.Image:
    """Decode an image file as 3-channel float32 CHW in [0, 1] (raises DataError naming the file).

    The default :class:`~se_plugins.data.decode.ImageReader`: 8-bit /255, 16-bit /65535, float as is, gray
    repeated to RGB, alpha blended over black. Data sets take an ``image_reader`` for other settings.
    """
    return DEFAULT_READER(path)


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """Return ``(height, width)`` from the image header without decoding the pixels."""
    return decode.read_image_size(path)


def coco_from_dict(dataset: dict[str, Any]) -> COCO:
    """Build a pycocotools ``COCO`` object from an in-memory dict, without its progress prints."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_json(path: str | os.PathLike) -> Any:
    """Load a JSON file, raising DataError (naming the file) if it is missing or malformed."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON ({e})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read annotation file ({e})") from e


def fit_box(
    box: tuple[float, float, float, float], height: int, width: int, min_size: float = 1.0
) -> tuple[str, tuple[float, float, float, float] | None]:
    """Clip an XYXY box to the image and classify it.

    Returns:
        ``("ok", clipped_box)``, ``("degenerate", None)`` when the clipped box is narrower or lower than
        ``min_size`` pixels, or ``("outside", None)`` when a box of real size lies entirely outside the image.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return "degenerate", None
    if x2 - x1 >= min_size and y2 - y1 >= min_size and (x1 >= width or y1 >= height or x2 <= 0 or y2 <= 0):
        return "outside", None
    x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
    y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
    if x2 - x1 < min_size or y2 - y1 < min_size:
        return "degenerate", None
    return "ok", (x1, y1, x2, y2)
