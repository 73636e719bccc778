"""Built-in synthetic classification data: one dominant shape per image, written as ImageFolder-style folders.

``make_shapes_classification(out_dir)`` writes::

    out_dir/train/<class>/train_000001.jpg     classes: circle, square, triangle, star (SHAPE_CLASSES)
    out_dir/val/<class>/val_000001.jpg
    out_dir/shapes.json                        generation parameters, written last

Each image holds one large shape of its class (extent 50-75% of the image side, drawn last, so never occluded)
on the same textured backgrounds as :func:`se_plugins.data.make_shapes`, plus up to ``max_distractors`` (1) small
shapes of other classes (10-20%). Classes are balanced (image ``i`` has class ``i % 4``). The output is a pure
function of the arguments (same seed, same bytes); a complete data set (its marker matches the arguments) is
reused, and regenerating first removes this generator's own old image files, so no stale image stays behind.

Example:
    >>> root = make_shapes_classification("data/shapes_cls", num_train=400, num_val=100, image_size=64)
    >>> ds = ImageFolderClassification(root / "train")
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from se_plugins.atomic import atomic_write_bytes, atomic_write_text
from se_plugins.data._io import load_json
from se_plugins.data.shapes import (
    SHAPE_CLASSES,
    _background,
    _encode,
    _pick_colour,
    _rasterize,
    _shape_polygon,
)

_FORMAT_VERSION = 1
_SPLITS = ("train", "val")
_DOMINANT_SIZE = (0.50, 0.75)  # extent of the class shape, fraction of the shorter image side
_DISTRACTOR_SIZE = (0.10, 0.20)  # extent of the small shapes of other classes
_SPLIT_SEED = 1000  # keeps these images' random streams apart from make_shapes' (which uses 0 and 1)


def make_shapes_classification(
    out_dir: str | os.PathLike,
    num_train: int = 400,
    num_val: int = 100,
    image_size: int = 64,
    seed: int = 0,
    max_distractors: int = 1,
    overwrite: bool = False,
) -> Path:
    """Write the shapes classification set under ``out_dir`` (see the module docstring); return its root.

    Args:
        out_dir: Output folder (created); ``train/`` and ``val/`` are ImageFolder roots.
        num_train: Training images (balanced over the 4 classes).
        num_val: Validation images.
        image_size: Square image side in pixels (>= 32).
        seed: Random seed; the output depends only on the arguments.
        max_distractors: Most small shapes of other classes per image.
        overwrite: Regenerate even if a complete data set with the same arguments is there.

    Raises:
        ValueError: a negative count, an image side under 32 px or a negative ``max_distractors``.
    """
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train and num_val must be >= 0, got {num_train} and {num_val}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
    if max_distractors < 0:
        raise ValueError(f"max_distractors must be >= 0, got {max_distractors}")
    root = Path(out_dir).resolve()
    params = dict(
        kind="classification",
        version=_FORMAT_VERSION,
        num_train=num_train,
        num_val=num_val,
        image_size=image_size,
        seed=seed,
        max_distractors=max_distractors,
    )
    marker = root / "shapes.json"
    if not overwrite and marker.is_file():
        try:
            if load_json(marker) == params:
                return root
        except ValueError:
            pass  # unreadable marker: regenerate
    marker.unlink(missing_ok=True)
    for split_index, split in enumerate(_SPLITS):
        _remove_own_images(root / split, split)
        for i in range(num_train if split == "train" else num_val):
            label = i % len(SHAPE_CLASSES)
            rng = np.random.default_rng([seed, _SPLIT_SEED + split_index, i])
            pixels = _render_dominant(rng, image_size, label, max_distractors)
            jpeg = _encode(Image.fromarray(pixels), "JPEG", quality=90)
            # bulk files need no fsync: the marker written last says the data set is complete
            path = root / split / SHAPE_CLASSES[label] / f"{split}_{i + 1:06d}.jpg"
            atomic_write_bytes(path, jpeg, durable=False)
    atomic_write_text(marker, json.dumps(params, indent=2) + "\n")
    return root


def _remove_own_images(split_dir: Path, split: str) -> None:
    """Delete images this generator wrote earlier (``<class>/<split>_NNNNNN.jpg``); nothing else is touched."""
    pattern = re.compile(rf"{split}_\d{{6}}\.jpg")
    for name in SHAPE_CLASSES:
        folder = split_dir / name
        if folder.is_dir():
            for path in folder.iterdir():
                if pattern.fullmatch(path.name):
                    path.unlink()


def _render_dominant(rng: np.random.Generator, side: int, label: int, max_distractors: int) -> np.ndarray:
    """uint8 ``side x side x 3`` pixels: small shapes of other classes, then one large shape of ``label``."""
    canvas = _background(rng, side, side)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    others = [k for k in range(len(SHAPE_CLASSES)) if k != label]
    count = int(rng.integers(0, max_distractors + 1))
    shapes = [(others[int(rng.integers(len(others)))], _DISTRACTOR_SIZE) for _ in range(count)]
    shapes.append((label, _DOMINANT_SIZE))
    for k, (low, high) in shapes:
        for _attempt in range(30):
            size = rng.uniform(low, high) * side
            margin = 0.5 * size if k == label else 0.3 * size
            cx, cy = rng.uniform(margin, side - margin), rng.uniform(margin, side - margin)
            drawn = _rasterize(_shape_polygon(SHAPE_CLASSES[k], cx, cy, size, rng), side, side)
            colour = _pick_colour(rng, canvas[drawn]) if drawn.sum() >= 16 else None
            if colour is None and k == label and drawn.any():  # the class shape is always drawn
                colour = 255.0 - canvas[drawn].reshape(-1, 3).mean(axis=0)
            if colour is None:
                continue
            angle = rng.uniform(0, 2 * math.pi)
            ramp = ((xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)) / (size / 2)
            canvas = np.where(drawn[..., None], colour + rng.uniform(10, 35) * ramp[..., None], canvas)
            break
    canvas = canvas + rng.normal(0.0, rng.uniform(2.0, 7.0), canvas.shape)
    return np.clip(canvas, 0, 255).round().astype(np.uint8)
