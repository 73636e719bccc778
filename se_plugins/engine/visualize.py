"""Predictions drawn on images: detection boxes and segmentation masks, as uint8 tensors and PNG files.

Thin wrappers over ``torchvision.utils.draw_bounding_boxes`` / ``draw_segmentation_masks`` with one colour per
class (the same class gets the same colour in every picture) and label texts built from class names.

Example:
    >>> panel = draw_detections(image, out["boxes"], out["labels"], out["scores"], ["cat", "dog"], 0.5)
    >>> save_png(hstack_images([draw_detections(image, gt_boxes, gt_labels), panel]), "pred/000.png")
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from se_plugins.atomic import atomic_write_bytes

_BASE_COLORS: list[tuple[int, int, int]] = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
    (128, 128, 128),
]
"""Twenty well-separated colours (Sasha Trubetskoy's list); class ``k`` uses entry ``(k - 1) % 20``."""

IGNORE_COLOR = (255, 255, 255)
"""Colour of ignored pixels (``ignore_index``) in :func:`draw_mask`."""


def class_color(label: int) -> tuple[int, int, int]:
    """RGB colour of class ``label`` (1, 2, ...; label 0 gets the last colour)."""
    return _BASE_COLORS[(int(label) - 1) % len(_BASE_COLORS)]


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """A ``[C, H, W]`` image as uint8 RGB: floats are read as [0, 1] (clamped), 1 channel is repeated."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected an image of shape [1 or 3, H, W], got {tuple(image.shape)}")
    image = image.detach().cpu().as_subclass(torch.Tensor)
    if image.dtype != torch.uint8:
        image = (image.float() * 255).round().clamp_(0, 255).to(torch.uint8)
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return image.contiguous()


DISPLAY_PERCENTILES = (0.5, 99.5)
"""Percentiles mapped to black and white by :func:`render_image`'s stretch."""


def render_image(image: torch.Tensor, min_span: float = 0.5) -> torch.Tensor:
    """An 8-bit RGB view of a model input of any channel count and intensity range, for prediction PNGs.

    The single channel (1 or 2 channels) or the first three channels are shown. 1- and 3-channel float images whose
    values span at least ``min_span`` of [0, 1] between the 0.5th and 99.5th percentiles (ordinary 8-bit photos)
    are drawn as they are (``x * 255``); other images (16-bit data normalised by the type's range, which uses a
    sliver of it, and all multi-band data) get a per-channel 0.5-99.5 percentile stretch.

    Args:
        image: ``[C, H, W]`` uint8, or float (any range).
        min_span: Percentile span below which a 1-/3-channel image is stretched.

    Returns:
        ``[3, H, W]`` uint8.
    """
    if image.ndim != 3:
        raise ValueError(f"expected an image of shape [C, H, W], got {tuple(image.shape)}")
    image = image.detach().cpu().as_subclass(torch.Tensor)
    shown = image[:3] if image.shape[0] >= 3 else image[:1]
    if image.dtype == torch.uint8 and image.shape[0] in (1, 3):
        return to_uint8(image)
    shown = shown.float() / 255.0 if shown.dtype == torch.uint8 else shown.float()
    lo, hi = np.percentile(shown.numpy().reshape(shown.shape[0], -1), DISPLAY_PERCENTILES, axis=1)
    if image.shape[0] in (1, 3) and float((hi - lo).max()) >= min_span:
        return to_uint8(shown)
    lo_t = torch.from_numpy(lo).float().view(-1, 1, 1)
    span = torch.from_numpy(hi - lo).float().view(-1, 1, 1)
    stretched = torch.where(span > 0, (shown - lo_t) / span.clamp(min=1e-12), shown.clamp(0, 1))
    return to_uint8(stretched)


def draw_detections(
    image: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    scores: torch.Tensor | Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.0,
    width: int = 2,
    masks: torch.Tensor | None = None,
    mask_alpha: float = 0.45,
) -> torch.Tensor:
    """Draw boxes with class-coloured outlines and ``"name score"`` labels, over instance masks if given.

    Args:
        image: ``[3, H, W]`` (or ``[1, H, W]``) uint8, or float in [0, 1].
        boxes: ``[N, 4]`` XYXY boxes in absolute pixels.
        labels: ``N`` class labels 1..K (0 = background is drawn as ``"0"`` if it occurs).
        scores: ``N`` scores, or None for ground truth (no score in the text, nothing filtered).
        class_names: Names of labels 1..K (label ``k`` is ``class_names[k - 1]``); None = the numbers.
        score_threshold: Boxes with a score below this are not drawn.
        width: Outline width in pixels.
        masks: ``[N, H, W]`` (or ``[N, 1, H, W]``) instance masks, one per box: bool/integer (non-zero inside)
            or probabilities (> 0.5 inside); each is filled in its box's class colour.
        mask_alpha: Opacity of the mask fill.

    Returns:
        The drawing, ``[3, H, W]`` uint8 (the input is not modified).

    Raises:
        ValueError: Lengths differ, or the masks do not match the image size.
    """
    canvas = to_uint8(image)
    boxes = torch.as_tensor(boxes).detach().cpu().as_subclass(torch.Tensor).float().reshape(-1, 4)
    label_list = [int(v) for v in torch.as_tensor(labels).reshape(-1).tolist()]
    score_list = None if scores is None else [float(v) for v in torch.as_tensor(scores).reshape(-1).tolist()]
    if len(label_list) != len(boxes) or (score_list is not None and len(score_list) != len(boxes)):
        raise ValueError("boxes, labels and scores must have the same length")
    keep = [i for i in range(len(boxes)) if score_list is None or score_list[i] >= score_threshold]
    if masks is not None:
        masks = torch.as_tensor(masks).detach().cpu().as_subclass(torch.Tensor)
        masks = masks[:, 0] if masks.ndim == 4 and masks.shape[1] == 1 else masks
        if masks.ndim != 3 or len(masks) != len(boxes) or tuple(masks.shape[-2:]) != tuple(canvas.shape[-2:]):
            raise ValueError(
                f"masks of shape {tuple(masks.shape)} do not fit {len(boxes)} boxes on a "
                f"{tuple(canvas.shape[-2:])} image"
            )
        if keep:
            binary = masks[keep] > 0.5 if masks.is_floating_point() else masks[keep] != 0
            colors = [class_color(label_list[i]) for i in keep]
            canvas = draw_segmentation_masks(canvas, binary, alpha=mask_alpha, colors=colors)
    if not keep:
        return canvas
    texts = []
    for i in keep:
        label = label_list[i]
        name = class_names[label - 1] if class_names is not None and 1 <= label <= len(class_names) else str(label)
        texts.append(name if score_list is None else f"{name} {score_list[i]:.2f}")
    # draw_bounding_boxes rejects boxes with x1 > x2 or y1 > y2; clip to the canvas and order the corners
    height, width_px = canvas.shape[-2:]
    kept = boxes[keep]
    x = kept[:, 0::2].clamp(0, width_px - 1).sort(dim=1).values
    y = kept[:, 1::2].clamp(0, height - 1).sort(dim=1).values
    kept = torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)
    colors = [class_color(label_list[i]) for i in keep]
    return draw_bounding_boxes(canvas, kept, labels=texts, colors=colors, width=width)


def draw_mask(
    image: torch.Tensor, mask: torch.Tensor, num_classes: int, ignore_index: int = 255, alpha: float = 0.5
) -> torch.Tensor:
    """Overlay a class-index mask: classes 1..num_classes-1 in their colours, ``ignore_index`` in white.

    Args:
        image: ``[3, H, W]`` (or ``[1, H, W]``) uint8, or float in [0, 1].
        mask: ``[H, W]`` (or ``[1, H, W]``) integer class indices; 0 is background and stays undrawn.
        num_classes: Number of classes including background (values 0..num_classes-1 are valid).
        ignore_index: Value of ignored pixels.
        alpha: Opacity of the overlay (0 = invisible, 1 = opaque).

    Returns:
        ``[3, H, W]`` uint8.

    Raises:
        ValueError: ``mask`` does not match the image size or holds values outside the classes.
    """
    canvas = to_uint8(image)
    mask = torch.as_tensor(mask).detach().cpu().as_subclass(torch.Tensor)
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if tuple(mask.shape) != tuple(canvas.shape[-2:]):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the image {tuple(canvas.shape[-2:])}")
    mask = mask.long()
    bad = (mask < 0) | ((mask >= num_classes) & (mask != ignore_index))
    if bad.any():
        raise ValueError(f"mask value {int(mask[bad][0])} is outside 0..{num_classes - 1} and not {ignore_index}")
    values = [c for c in range(1, num_classes) if (mask == c).any()]
    colors: list[tuple[int, int, int]] = [class_color(c) for c in values]
    layers = [mask == c for c in values]
    if (mask == ignore_index).any():
        layers.append(mask == ignore_index)
        colors.append(IGNORE_COLOR)
    if not layers:
        return canvas
    return draw_segmentation_masks(canvas, torch.stack(layers), alpha=alpha, colors=colors)


def hstack_images(images: Sequence[torch.Tensor], gap: int = 4, fill: int = 255) -> torch.Tensor:
    """``[3, H, W]`` images side by side as uint8 (tops aligned, ``gap`` pixels of ``fill`` between them)."""
    if not images:
        raise ValueError("hstack_images needs at least one image")
    parts = [to_uint8(im) for im in images]
    height = max(p.shape[1] for p in parts)
    width = sum(p.shape[2] for p in parts) + gap * (len(parts) - 1)
    out = torch.full((3, height, width), fill, dtype=torch.uint8)
    x = 0
    for p in parts:
        out[:, : p.shape[1], x : x + p.shape[2]] = p
        x += p.shape[2] + gap
    return out


MIN_PANEL_SIZE = 256
"""Segmentation pictures: each panel is upscaled (an integer factor) until its shorter side is at least this."""

LEGEND_FONT_SIZE = 12
"""Text height of :func:`add_legend`, in pixels; the colour squares have the same side."""


def upscale_factor(height: int, width: int, min_size: int = MIN_PANEL_SIZE) -> int:
    """The smallest integer factor that makes the shorter side of a ``height x width`` picture >= ``min_size``."""
    return max(1, math.ceil(min_size / max(1, min(height, width))))


def upscale(image: torch.Tensor, factor: int, nearest: bool = False) -> torch.Tensor:
    """Enlarge ``[C, H, W]`` or ``[H, W]`` by an integer ``factor``.

    ``nearest=True`` (class masks): every pixel becomes a ``factor x factor`` block of the same value, dtype kept.
    Otherwise (images): bilinear, returned as float in [0, 1] (uint8 input is read as 0..255).
    """
    if factor == 1:
        return image
    if nearest:
        return image.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    x = image.detach().cpu().as_subclass(torch.Tensor)
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    return F.interpolate(x[None], scale_factor=factor, mode="bilinear", align_corners=False)[0].clamp_(0, 1)


def legend_entries(
    labels: Iterable[int], class_names: Sequence[str] | None = None, first_label: int = 1
) -> list[tuple[str, tuple[int, int, int]]]:
    """``(name, colour)`` of each distinct label, in label order, coloured as the drawing functions colour them.

    Args:
        labels: Labels present in a picture (repeats are fine).
        class_names: Label ``k`` is named ``class_names[k - first_label]``; labels outside the list (or all labels
            when None) are named by their number.
        first_label: The label of ``class_names[0]``: 1 for detection names (no background), 0 for segmentation
            names (background first).
    """
    entries = []
    for label in sorted({int(v) for v in labels}):
        i = label - first_label
        name = class_names[i] if class_names is not None and 0 <= i < len(class_names) else str(label)
        entries.append((name, class_color(label)))
    return entries


def mask_legend_entries(
    masks: Iterable[torch.Tensor], class_names: Sequence[str] | None = None, ignore_index: int = 255
) -> list[tuple[str, tuple[int, int, int]]]:
    """Legend of what :func:`draw_mask` draws for these class-index masks.

    The classes present (background 0 is not drawn, so not listed) named by ``class_names`` (background first),
    then ``("ignore", IGNORE_COLOR)`` if any pixel is ``ignore_index``.
    """
    values: set[int] = set()
    for mask in masks:
        values.update(int(v) for v in torch.as_tensor(mask).as_subclass(torch.Tensor).unique().tolist())
    entries = legend_entries(sorted(values - {0, ignore_index}), class_names, first_label=0)
    return entries + [("ignore", IGNORE_COLOR)] if ignore_index in values else entries


def add_legend(
    image: torch.Tensor, entries: Sequence[tuple[str, tuple[int, int, int]]], font_size: int = LEGEND_FONT_SIZE
) -> torch.Tensor:
    """``image`` with a white strip below it: a colour square and the name of each entry, rows as wide as the image.

    Args:
        image: ``[3, H, W]`` uint8, or float in [0, 1].
        entries: ``(name, RGB colour)`` pairs, e.g. from :func:`legend_entries`.
        font_size: Text height and square side in pixels.

    Returns:
        ``[3, H + strip, W]`` uint8 (the image unchanged when there are no entries). Each square is filled with the
        exact colour, inside a one-pixel grey outline.
    """
    canvas = to_uint8(image)
    if not entries:
        return canvas
    font = ImageFont.load_default(size=font_size)
    pad, width = max(2, font_size // 3), canvas.shape[-1]
    row = font_size + pad
    places, x, y = [], pad, pad
    for name, _ in entries:
        advance = font_size + pad + math.ceil(font.getlength(name)) + 3 * pad
        if x > pad and x + advance - 2 * pad > width:  # wrap to the next row
            x, y = pad, y + row
        places.append((x, y))
        x += advance
    strip = Image.new("RGB", (width, y + row), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for (name, color), (x, y) in zip(entries, places, strict=True):
        draw.rectangle((x, y, x + font_size - 1, y + font_size - 1), fill=tuple(color), outline=(96, 96, 96))
        top, bottom = font.getbbox(name)[1::2]
        draw.text((x + font_size + pad, y + (font_size - top - bottom) / 2), name, fill=(0, 0, 0), font=font)
    return torch.cat([canvas, torch.from_numpy(np.array(strip)).permute(2, 0, 1)], dim=1)


def save_png(image: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write a ``[C, H, W]`` image (uint8, or float in [0, 1]) as PNG, atomically; returns the path."""
    array = to_uint8(image).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path
