"""COCO instance segmentations (polygons, RLE): checked once when a data set is built, decoded per sample.

:func:`check_segmentation` validates an annotation's ``segmentation`` against its image size without decoding
it, so bad input stops before the first training step with one line naming the file and the annotation id;
:func:`decode_segmentation` turns the checked form into a binary mask (pycocotools' rasteriser, as
``COCO.annToMask``).

Example:
    >>> segm, dropped = check_segmentation(ann, height, width, "instances_train.json")
    >>> mask = decode_segmentation(segm, height, width)  # uint8 [H, W]
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from se_plugins.errors import DataError

Segmentation = list[list[float]] | dict[str, Any]
"""Polygons ``[[x0, y0, x1, y1, ...], ...]`` or an RLE ``{"size": [h, w], "counts": str | list[int]}``."""


def check_segmentation(ann: dict[str, Any], height: int, width: int, source: str) -> tuple[Segmentation, int]:
    """Validate ``ann["segmentation"]`` for an image of ``height`` x ``width``.

    Polygons with fewer than 3 points are dropped (pycocotools would read a 4-number polygon as a box) and
    counted, as long as the annotation keeps at least one polygon.

    Args:
        ann: A COCO annotation (``id`` and ``segmentation`` are read).
        height: Height of its image (the ``images`` entry).
        width: Width of its image.
        source: The annotation file, for error messages.

    Returns:
        ``(segmentation, dropped)``: the usable segmentation and how many degenerate polygons were dropped.

    Raises:
        DataError: One line naming ``source`` and the annotation id: no segmentation, malformed polygons, only
            degenerate polygons, or an RLE whose size is not the image's.
    """
    where = f"{source}: annotation {ann.get('id', '?')}"
    segm = ann.get("segmentation")
    if isinstance(segm, dict):
        return _check_rle(segm, height, width, where), 0
    if not isinstance(segm, list) or not segm:
        raise DataError(f"{where}: no instance mask (segmentation must be polygons or an RLE, got {_brief(segm)})")
    kept = []
    for i, poly in enumerate(segm):
        if not isinstance(poly, list) or not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in poly
        ):
            raise DataError(f"{where}: polygon {i} is not a list of finite numbers ({_brief(poly)})")
        if len(poly) % 2:
            raise DataError(f"{where}: polygon {i} has an odd number of coordinates ({len(poly)})")
        if len(poly) >= 6:
            kept.append([float(v) for v in poly])
    if not kept:
        points = ", ".join(str(len(p) // 2) for p in segm)
        raise DataError(f"{where}: every polygon has fewer than 3 points ({points}); the instance has no mask")
    return kept, len(segm) - len(kept)


def _check_rle(rle: dict[str, Any], height: int, width: int, where: str) -> dict[str, Any]:
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)):
        raise DataError(f"{where}: RLE has no valid 'size' [height, width] (got {_brief(size)})")
    if size != [height, width]:
        raise DataError(f"{where}: RLE size {size} does not match its {width}x{height} image ([{height}, {width}])")
    if isinstance(counts, list):
        if not all(isinstance(v, int) and v >= 0 for v in counts) or sum(counts) != height * width:
            raise DataError(
                f"{where}: uncompressed RLE counts must be non-negative integers summing to {height}x{width} = "
                f"{height * width}, got a sum of {sum(v for v in counts if isinstance(v, int))}"
            )
        return {"size": size, "counts": counts}
    if isinstance(counts, bytes | str) and counts:
        return {"size": size, "counts": counts}
    raise DataError(f"{where}: RLE 'counts' must be a string or a list of integers (got {_brief(counts)})")


def decode_segmentation(segm: Segmentation, height: int, width: int) -> np.ndarray:
    """A checked segmentation as a ``uint8`` mask ``[height, width]`` (1 inside), like ``COCO.annToMask``."""
    if isinstance(segm, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    elif isinstance(segm["counts"], list):
        rle = mask_utils.frPyObjects(segm, height, width)
    else:
        counts = segm["counts"]
        rle = {"size": segm["size"], "counts": counts.encode() if isinstance(counts, str) else counts}
    return mask_utils.decode(rle)


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
