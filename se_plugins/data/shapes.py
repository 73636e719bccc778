"""Built-in synthetic data: coloured shapes on textured backgrounds, written as real COCO and VOC datasets.

``make_shapes(out_dir)`` writes::

    out_dir/coco/{train,val}/*.jpg
    out_dir/coco/annotations/instances_{train,val}.json   polygons, bbox, area; category ids 1, 3, 5, 7
    out_dir/voc/JPEGImages/*.jpg                           the same images
    out_dir/voc/Annotations/*.xml                          1-based boxes, difficult=1 for very small shapes
    out_dir/voc/ImageSets/{Main,Segmentation}/{train,val}.txt
    out_dir/voc/SegmentationClass/*.png                    VOC palette PNG, 255 on a 2 px band around shapes
    out_dir/shapes.json                                    generation parameters, written last

so the demo configs run through the same loaders as real data. Shapes may overlap (later ones are drawn
over earlier ones); every shape keeps at least half of its pixels visible. COCO polygons trace the
visible pixels exactly (pycocotools rasterises them back to the PNG masks pixel for pixel), boxes are
tight around the visible pixels. Output is a pure function of the arguments: same seed, same bytes.

Example:
    >>> paths = make_shapes("data/shapes", num_train=200, num_val=50)
    >>> ds = CocoDetection(paths.coco_train_images, paths.coco_train_ann)
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from se_plugins.atomic import atomic_write_bytes, atomic_write_text
from se_plugins.data._io import load_json
from se_plugins.data.voc import voc_palette

SHAPE_CLASSES: list[str] = ["circle", "square", "triangle", "star"]
"""Class names of the shapes data set, in label order (detection label i + 1, segmentation class i + 1)."""

SHAPE_CATEGORY_IDS: list[int] = [1, 3, 5, 7]
"""COCO category ids of ``SHAPE_CLASSES``: deliberately non-contiguous, like real COCO."""

_FORMAT_VERSION = 1
_SPLITS = ("train", "val")
_MIN_SIZE, _MAX_SIZE = 0.10, 0.45  # shape extent as a fraction of the shorter image side
_DIFFICULT_SIZE = 0.12  # a visible box shorter than this fraction of the image side is "difficult"
_MIN_VISIBLE = 0.5  # an occluded shape keeps at least this fraction of its pixels
_RADIUS_SCALE = {"circle": 1.0, "square": 1.2, "triangle": 1.25, "star": 1.25}


@dataclass(frozen=True)
class ShapesPaths:
    """Where ``make_shapes`` put the data (all paths absolute)."""

    root: Path
    coco_train_images: Path
    coco_train_ann: Path
    coco_val_images: Path
    coco_val_ann: Path
    voc_root: Path
    class_names: tuple[str, ...] = tuple(SHAPE_CLASSES)

    @classmethod
    def under(cls, out_dir: str | os.PathLike) -> ShapesPaths:
        """The paths ``make_shapes(out_dir)`` writes to (whether or not they exist yet)."""
        root = Path(out_dir).resolve()
        coco = root / "coco"
        return cls(
            root=root,
            coco_train_images=coco / "train",
            coco_train_ann=coco / "annotations" / "instances_train.json",
            coco_val_images=coco / "val",
            coco_val_ann=coco / "annotations" / "instances_val.json",
            voc_root=root / "voc",
        )


@dataclass
class _Instance:
    label: int  # 0-based index into SHAPE_CLASSES
    visible: np.ndarray  # bool HxW, pixels of this shape not hidden by later shapes
    drawn_pixels: int  # pixels the shape covered when drawn (inside the image)
    truncated: bool  # the shape extends beyond the image border


def make_shapes(
    out_dir: str | os.PathLike,
    num_train: int = 200,
    num_val: int = 50,
    image_size: int | tuple[int, int] = (256, 256),
    seed: int = 0,
    min_shapes: int = 1,
    max_shapes: int = 4,
    overwrite: bool = False,
) -> ShapesPaths:
    """Write the shapes data set as COCO and VOC under ``out_dir``.

    Args:
        out_dir: Output folder (created).
        num_train: Number of training images.
        num_val: Number of validation images.
        image_size: ``(height, width)`` or one int for square images.
        seed: Random seed; the output depends only on the arguments.
        min_shapes: Fewest shapes per image.
        max_shapes: Most shapes per image (fewer if no valid placement is found).
        overwrite: Regenerate even if ``out_dir`` already holds a complete data set made with the same
            arguments (otherwise that one is reused).

    Returns:
        The paths of the COCO images/annotation files and of the VOC root.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train and num_val must be >= 0, got {num_train} and {num_val}")
    if min(height, width) < 32:
        raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
    if not 0 <= min_shapes <= max_shapes:
        raise ValueError(f"need 0 <= min_shapes <= max_shapes, got {min_shapes} and {max_shapes}")
    paths = ShapesPaths.under(out_dir)
    params = dict(
        version=_FORMAT_VERSION,
        num_train=num_train,
        num_val=num_val,
        image_size=[height, width],
        seed=seed,
        min_shapes=min_shapes,
        max_shapes=max_shapes,
    )
    marker = paths.root / "shapes.json"
    if not overwrite and marker.is_file():
        try:
            if load_json(marker) == params:
                return paths
        except ValueError:
            pass  # unreadable marker: regenerate

    voc = paths.voc_root
    palette = voc_palette()
    coco_files, split_ids = {}, {}
    for split_index, split in enumerate(_SPLITS):
        count = num_train if split == "train" else num_val
        images, annotations, ids = [], [], []
        img_dir = paths.coco_train_images if split == "train" else paths.coco_val_images
        for i in range(count):
            rng = np.random.default_rng([seed, split_index, i])
            pixels, instances = _render(rng, height, width, min_shapes, max_shapes)
            name = f"{split}_{i + 1:06d}"
            jpeg = _encode(Image.fromarray(pixels), "JPEG", quality=90)
            # bulk files need no fsync: the marker file written last says the data set is complete
            atomic_write_bytes(img_dir / f"{name}.jpg", jpeg, durable=False)
            atomic_write_bytes(voc / "JPEGImages" / f"{name}.jpg", jpeg, durable=False)
            png = _class_png(instances, height, width, palette)
            atomic_write_bytes(voc / "SegmentationClass" / f"{name}.png", png, durable=False)
            xml = _voc_xml(name, height, width, instances)
            atomic_write_text(voc / "Annotations" / f"{name}.xml", xml, durable=False)
            image_id = i + 1
            images.append(dict(id=image_id, file_name=f"{name}.jpg", height=height, width=width))
            for inst in instances:
                annotations.append(_coco_annotation(len(annotations) + 1, image_id, inst))
            ids.append(name)
        split_ids[split] = ids
        coco_files[split] = dict(
            info=dict(description="se_plugins synthetic shapes", version=str(_FORMAT_VERSION)),
            licenses=[],
            images=images,
            annotations=annotations,
            categories=[
                dict(id=cid, name=name, supercategory="shape")
                for cid, name in zip(SHAPE_CATEGORY_IDS, SHAPE_CLASSES, strict=True)
            ],
        )
    # Index files and JSON last: an interrupted run never leaves a data set that looks complete.
    for split, ids in split_ids.items():
        listing = "".join(f"{name}\n" for name in ids)
        atomic_write_text(voc / "ImageSets" / "Main" / f"{split}.txt", listing)
        atomic_write_text(voc / "ImageSets" / "Segmentation" / f"{split}.txt", listing)
    for split, ann_file in (("train", paths.coco_train_ann), ("val", paths.coco_val_ann)):
        atomic_write_text(ann_file, json.dumps(coco_files[split], separators=(",", ":")))
    atomic_write_text(marker, json.dumps(params, indent=2) + "\n")
    return paths


# ----------------------------------------------------------------------------------------------- drawing


def _render(
    rng: np.random.Generator, height: int, width: int, min_shapes: int, max_shapes: int
) -> tuple[np.ndarray, list[_Instance]]:
    """Draw one image; return its uint8 HxWx3 pixels and its shapes (in drawing order)."""
    canvas = _background(rng, height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    side = min(height, width)
    instances: list[_Instance] = []
    for _ in range(int(rng.integers(min_shapes, max_shapes + 1))):
        for _attempt in range(30):
            label = int(rng.integers(len(SHAPE_CLASSES)))
            size = rng.uniform(_MIN_SIZE, _MAX_SIZE) * side
            margin = 0.3 * size  # at most ~20% of a shape lies outside the image
            cx, cy = rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)
            poly = _shape_polygon(SHAPE_CLASSES[label], cx, cy, size, rng)
            drawn = _rasterize(poly, height, width)
            if drawn.sum() < 16 or not _fits(drawn, instances):
                continue
            colour = _pick_colour(rng, canvas[drawn])
            if colour is None:
                continue
            for inst in instances:
                inst.visible &= ~drawn
            angle = rng.uniform(0, 2 * math.pi)
            ramp = ((xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)) / (size / 2)
            shade = rng.uniform(10, 35) * ramp[..., None]
            canvas = np.where(drawn[..., None], colour + shade, canvas)
            truncated = bool((poly < 0).any() or (poly[:, 0] > width).any() or (poly[:, 1] > height).any())
            instances.append(_Instance(label, drawn.copy(), int(drawn.sum()), truncated))
            break
    canvas = canvas + rng.normal(0.0, rng.uniform(2.0, 7.0), canvas.shape)
    return np.clip(canvas, 0, 255).round().astype(np.uint8), instances


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A float HxWx3 textured background: gradient, stripes, smooth noise or checkerboard."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(0, 255, 3)
    kind = int(rng.integers(4))
    if kind == 0:  # linear gradient between two random colours
        angle = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(angle) + yy * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        return base + (rng.uniform(0, 255, 3) - base) * t[..., None]
    if kind == 1:  # soft stripes
        angle, period = rng.uniform(0, math.pi), rng.uniform(6, 30) * max(height, width) / 256
        t = 0.5 + 0.5 * np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period)
        return base + rng.normal(0, 45, 3) * t[..., None]
    if kind == 2:  # smooth colour noise
        cells = int(rng.integers(3, 9))
        grid = np.clip(base + rng.normal(0, 50, (cells, cells, 3)), 0, 255).astype(np.uint8)
        return np.asarray(Image.fromarray(grid).resize((width, height), Image.BICUBIC), dtype=np.float64)
    cell = max(2, int(rng.uniform(0.03, 0.12) * min(height, width)))  # low-contrast checkerboard
    t = ((xx // cell + yy // cell) % 2).astype(np.float32)
    return base + rng.normal(0, 30, 3) * t[..., None]


def _shape_polygon(name: str, cx: float, cy: float, size: float, rng: np.random.Generator) -> np.ndarray:
    """Vertices (N, 2) in pixel-edge coordinates of a shape of extent ``size`` centred at ``(cx, cy)``."""
    radius = size / 2 * _RADIUS_SCALE[name]
    rot = rng.uniform(0, 2 * math.pi)
    if name == "circle":
        angles, radii = np.linspace(0, 2 * math.pi, 64, endpoint=False), np.full(64, radius)
    elif name == "square":
        angles, radii = rot + np.arange(4) * math.pi / 2, np.full(4, radius)
    elif name == "triangle":
        angles, radii = rot + np.arange(3) * 2 * math.pi / 3, radius * rng.uniform(0.85, 1.0, 3)
    else:  # five-pointed star
        angles = rot + np.arange(10) * math.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * rng.uniform(0.38, 0.5))
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)


def _rasterize(poly: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bool mask of a polygon given in pixel-edge coordinates (PIL addresses pixel centres)."""
    img = Image.new("L", (width, height), 0)
    ImageDraw.Draw(img).polygon([(float(x) - 0.5, float(y) - 0.5) for x, y in poly], fill=1)
    return np.asarray(img, dtype=bool)


def _fits(drawn: np.ndarray, instances: list[_Instance]) -> bool:
    """Whether drawing ``drawn`` on top keeps every earlier shape visible enough and free of holes."""
    for inst in instances:
        if not (inst.visible & drawn).any():
            continue
        left = inst.visible & ~drawn
        if left.sum() < _MIN_VISIBLE * inst.drawn_pixels or _has_holes(left):
            return False
    return True


def _has_holes(mask: np.ndarray) -> bool:
    """Whether ``mask`` encloses background pixels (COCO polygons cannot express holes)."""
    try:
        mask_to_polygons(mask)
    except ValueError:
        return True
    return False


def _pick_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray | None:
    """A random colour far enough from the mean colour of what the shape will cover."""
    mean = under.reshape(-1, 3).mean(axis=0)
    for _ in range(50):
        colour = rng.uniform(0, 255, 3)
        if np.linalg.norm(colour - mean) > 110:
            return colour
    return None


# ------------------------------------------------------------------------------------------- annotations


def mask_to_polygons(mask: np.ndarray) -> list[list[int]]:
    """Trace the pixel boundary of a binary mask into COCO polygons ``[x0, y0, x1, y1, ...]``.

    Coordinates are pixel corners (pixel ``(r, c)`` spans ``[c, c + 1] x [r, r + 1]``), which is how
    pycocotools rasterises polygons, so ``annToMask`` gives back exactly ``mask``. One polygon per
    8-connected component; masks with holes (4-connected background enclosed) raise ValueError.
    """
    p = np.pad(np.asarray(mask, dtype=bool), 1)
    out: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def add(xs: np.ndarray, ys: np.ndarray, d: tuple[int, int]) -> None:
        for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
            out.setdefault((x, y), []).append(d)

    above, below = p[:-1, :], p[1:, :]  # horizontal boundary y = i + 1 between rows i and i + 1
    r, c = np.nonzero(below & ~above)
    add(c, r + 1, (1, 0))  # top edge of foreground: walk east
    r, c = np.nonzero(above & ~below)
    add(c + 1, r + 1, (-1, 0))  # bottom edge: walk west
    left, right = p[:, :-1], p[:, 1:]  # vertical boundary x = j + 1 between columns j and j + 1
    r, c = np.nonzero(right & ~left)
    add(c + 1, r + 1, (0, -1))  # left edge of foreground: walk north
    r, c = np.nonzero(left & ~right)
    add(c + 1, r, (0, 1))  # right edge: walk south

    polygons = []
    while out:
        v0 = next(iter(out))
        d0 = out[v0].pop()
        if not out[v0]:
            del out[v0]
        verts, d = [v0], d0
        v = (v0[0] + d[0], v0[1] + d[1])
        while True:
            options = out.get(v, [])
            possible = options + [d0] if v == v0 else options
            # Prefer the left turn: at a diagonal (saddle) vertex, the two pixels stay in one polygon
            # (8-connected foreground, 4-connected background, as in _has_holes).
            nd = next(t for t in ((d[1], -d[0]), d, (-d[1], d[0])) if t in possible)
            if v == v0 and nd == d0:
                break
            options.remove(nd)
            if not options:
                del out[v]
            if nd != d:
                verts.append(v)
            v, d = (v[0] + nd[0], v[1] + nd[1]), nd
        if d == d0:  # v0 was in the middle of a straight run
            verts = verts[1:]
        xs = np.array([x for x, _ in verts]) - 1
        ys = np.array([y for _, y in verts]) - 1
        if float(np.dot(xs, np.roll(ys, -1)) - np.dot(np.roll(xs, -1), ys)) < 0:
            raise ValueError("mask_to_polygons: the mask has a hole, which COCO polygons cannot express")
        polygons.append(np.stack([xs, ys], axis=1).reshape(-1).tolist())
    return polygons


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """0-based XYXY pixel-edge box of the foreground: ``(c_min, r_min, c_max + 1, r_max + 1)``."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _is_difficult(inst: _Instance) -> bool:
    x1, y1, x2, y2 = _box(inst.visible)
    side = min(inst.visible.shape)
    return min(x2 - x1, y2 - y1) < _DIFFICULT_SIZE * side


def _coco_annotation(ann_id: int, image_id: int, inst: _Instance) -> dict:
    h, w = inst.visible.shape
    polygons = mask_to_polygons(inst.visible)
    decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, h, w)))
    if not np.array_equal(decoded.astype(bool), inst.visible):  # pragma: no cover - internal invariant
        raise RuntimeError("shapes: traced polygon does not rasterise back to its mask")
    x1, y1, x2, y2 = _box(inst.visible)
    return dict(
        id=ann_id,
        image_id=image_id,
        category_id=SHAPE_CATEGORY_IDS[inst.label],
        segmentation=polygons,
        area=int(inst.visible.sum()),
        bbox=[x1, y1, x2 - x1, y2 - y1],
        iscrowd=0,
    )


def _voc_xml(name: str, height: int, width: int, instances: list[_Instance]) -> str:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "shapes"
    ET.SubElement(root, "filename").text = f"{name}.jpg"
    ET.SubElement(ET.SubElement(root, "source"), "database").text = "se_plugins synthetic shapes"
    size = ET.SubElement(root, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    ET.SubElement(root, "segmented").text = "1"
    for inst in instances:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = SHAPE_CLASSES[inst.label]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = str(int(inst.truncated))
        ET.SubElement(obj, "difficult").text = str(int(_is_difficult(inst)))
        x1, y1, x2, y2 = _box(inst.visible)
        box = ET.SubElement(obj, "bndbox")
        # VOC pixel coordinates are 1-based and inclusive: pixels x1..x2-1 (0-based) -> x1+1..x2.
        for key, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(box, key).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def _class_png(instances: list[_Instance], h: int, w: int, palette: list[int]) -> bytes:
    """VOC-style class PNG: class index per pixel (0 = background), 255 on a 2 px band around shapes."""
    labels = np.zeros((h, w), dtype=np.uint8)
    band = np.zeros((h, w), dtype=bool)
    for inst in instances:
        labels[inst.visible] = inst.label + 1
        band |= _dilate(inst.visible) & _dilate(~inst.visible)  # 1 px either side of the outline
    labels[band] = 255
    img = Image.fromarray(labels)
    img.putpalette(palette)
    return _encode(img, "PNG")


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation (pixels outside the image count as background)."""
    p = np.pad(mask, 1)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= p[dy : dy + h, dx : dx + w]
    return out


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------- CLI


def add_make_shapes_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``se-plugins make-shapes`` arguments to ``parser``."""
    parser.add_argument("out_dir", help="output folder (coco/ and voc/ are written under it)")
    parser.add_argument("--num-train", type=int, default=200, help="training images (default 200)")
    parser.add_argument("--num-val", type=int, default=50, help="validation images (default 50)")
    parser.add_argument("--image-size", type=int, default=256, help="square image side (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--min-shapes", type=int, default=1, help="fewest shapes per image (default 1)")
    parser.add_argument("--max-shapes", type=int, default=4, help="most shapes per image (default 4)")
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if already complete")
    parser.add_argument(
        "--classification",
        action="store_true",
        help="write the classification set instead (one dominant shape per image, OUT_DIR/{train,val}/<class>/)",
    )
    return parser


def run_make_shapes(args: argparse.Namespace) -> int:
    """Run ``se-plugins make-shapes`` from parsed arguments; print where the data went; return 0."""
    if getattr(args, "classification", False):
        from se_plugins.data.shapes_classification import make_shapes_classification

        root = make_shapes_classification(
            args.out_dir, args.num_train, args.num_val, args.image_size, args.seed, overwrite=args.overwrite
        )
        print(f"train: {root / 'train'}\nval: {root / 'val'}")
        return 0
    paths = make_shapes(
        args.out_dir,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=args.image_size,
        seed=args.seed,
        min_shapes=args.min_shapes,
        max_shapes=args.max_shapes,
        overwrite=args.overwrite,
    )
    for key, value in asdict(paths).items():
        print(f"{key}: {value}")
    return 0
