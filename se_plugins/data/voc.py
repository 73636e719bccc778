"""Pascal VOC readers: detection (``Annotations/*.xml``) and semantic segmentation (``SegmentationClass``).

Expected layout (as in ``VOCdevkit/VOC2007`` or ``VOC2012``)::

    root/Annotations/<id>.xml
    root/JPEGImages/<id>.jpg                   or the XML's <filename>, or <id> with another image extension
    root/ImageSets/Main/<split>.txt            detection splits
    root/ImageSets/Segmentation/<split>.txt    segmentation splits
    root/SegmentationClass/<id>.png            palette PNGs, pixel = class index, 255 = ignore
"""

from __future__ import annotations

import os
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors

from se_plugins.data._io import coco_from_dict, fit_box, load_rgb_image, read_image_size
from se_plugins.data._messages import some_ids
from se_plugins.errors import DataError

VOC_CLASSES: list[str] = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
]  # fmt: skip
"""The 20 Pascal VOC object classes (detection label i + 1)."""

VOC_SEG_CLASSES: list[str] = ["background", *VOC_CLASSES]
"""The 21 VOC segmentation classes: mask value i is ``VOC_SEG_CLASSES[i]``; 255 is ignored."""

IGNORE_INDEX = 255

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
"""Extensions tried (also in upper case) for ``JPEGImages/<id>`` when the XML names no existing file."""

VOC_COORDINATES = ("1-based", "0-based")
"""Box conventions of VOC XML files (see ``VOCDetection``)."""


def find_image(folder: Path, image_id: str, filename: str | None = None) -> Path | None:
    """The image of ``image_id`` in ``folder``: ``folder/<filename>`` if it exists, else ``<id><ext>``.

    ``filename`` is the XML's ``<filename>`` (only its last path component is used: exports often hold the
    path on the annotator's machine). Extensions are tried in the order of ``IMAGE_EXTENSIONS``, lower then
    upper case. Returns None when nothing exists.
    """
    if filename:
        named = folder / _basename(filename)
        if named.is_file():
            return named
    for ext in IMAGE_EXTENSIONS:
        for candidate in (folder / f"{image_id}{ext}", folder / f"{image_id}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def _basename(filename: str) -> str:
    """The last component of a path written on Linux or Windows."""
    return Path(filename.replace("\\", "/")).name


def _missing_image(folder: Path, image_id: str, filename: str | None, where: str) -> DataError:
    named = f"{folder / _basename(filename)} (its <filename>) does not exist, and " if filename else ""
    exts = "/".join(e[1:] for e in IMAGE_EXTENSIONS)
    return DataError(f"{where}: image not found: {named}no {folder / image_id}.{{{exts}}} exists")


def voc_palette(num_colors: int = 256) -> list[int]:
    """The Pascal VOC colour map as a flat ``[r0, g0, b0, r1, ...]`` list (index 255 is (224, 224, 192))."""
    palette = []
    for i in range(num_colors):
        r = g = b = 0
        c = i
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def read_split(path: Path) -> list[str]:
    """Image ids listed in an ``ImageSets`` file (one per line; blank lines ignored)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: split file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read split file ({e})") from e
    ids = [line.split()[0] for line in text.splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{path}: split file lists no images")
    return ids


@dataclass
class VOCObject:
    """One ``<object>`` of a VOC XML file, with the box still in VOC's 1-based pixel coordinates."""

    name: str
    bndbox: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax (1-based, inclusive)
    difficult: bool
    truncated: bool


def parse_voc_xml(path: str | os.PathLike) -> tuple[int, int, list[VOCObject]]:
    """Parse a VOC annotation file into ``(height, width, objects)``; 0 for a size the file lacks.

    Raises:
        DataError: the file is missing or malformed (the message names it).
    """
    height, width, objects, _ = _parse_voc_xml(path)
    return height, width, objects


def _parse_voc_xml(path: str | os.PathLike) -> tuple[int, int, list[VOCObject], str | None]:
    """``parse_voc_xml`` plus the XML's ``<filename>`` (None when absent or blank)."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except (ET.ParseError, OSError) as e:
        raise DataError(f"{path}: malformed XML ({e})") from e

    def number(node: ET.Element | None, what: str, default: float | None = None) -> float:
        if node is None or node.text is None or not node.text.strip():
            if default is not None:
                return default
            raise DataError(f"{path}: missing <{what}>")
        try:
            return float(node.text)
        except ValueError:
            raise DataError(f"{path}: <{what}> is not a number: {node.text.strip()!r}") from None

    size = root.find("size")
    height = int(number(size.find("height") if size is not None else None, "size/height", 0))
    width = int(number(size.find("width") if size is not None else None, "size/width", 0))
    objects = []
    for k, obj in enumerate(root.iter("object")):
        name_node = obj.find("name")
        if name_node is None or not (name_node.text or "").strip():
            raise DataError(f"{path}: object {k} has no <name>")
        name = name_node.text.strip()
        box = obj.find("bndbox")
        if box is None:
            raise DataError(f"{path}: object {k} ({name}) has no <bndbox>")
        coords = tuple(number(box.find(t), f"bndbox/{t}") for t in ("xmin", "ymin", "xmax", "ymax"))
        difficult = bool(int(number(obj.find("difficult"), "difficult", 0)))
        truncated = bool(int(number(obj.find("truncated"), "truncated", 0)))
        objects.append(VOCObject(name, coords, difficult, truncated))  # type: ignore[arg-type]
    filename = (root.findtext("filename") or "").strip() or None
    return height, width, objects, filename


def _resolve_classes(classes: Sequence[str] | str | None, default: list[str], found: Callable[[], list[str]]):
    if classes is None:
        return list(default)
    if classes == "auto":
        return found()
    if isinstance(classes, str) or not classes or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"classes must be None, 'auto' or a non-empty list of names, got {classes!r}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes has duplicate names: {list(classes)}")
    return list(classes)


class VOCDetection(Dataset):
    """Pascal VOC detection data set in torchvision's detection format.

    Box convention: VOC XML coordinates are 1-based and inclusive (pixel columns ``xmin..xmax``), so a
    box becomes the 0-based, pixel-edge XYXY box ``(xmin - 1, ymin - 1, xmax, ymax)``; e.g. a one-pixel
    object at the top-left corner, ``xmin = xmax = 1``, is ``(0, 0, 1, 1)``. Many annotation tools write
    0-based pixel-edge coordinates instead (often floats): ``coordinates="0-based"`` takes them as they are,
    ``(xmin, ymin, xmax, ymax)``. Boxes are clipped to the image.

    Images: ``JPEGImages/<filename>`` from the XML when that file exists, else ``JPEGImages/<id>`` with one of
    ``IMAGE_EXTENSIONS`` (``.jpg``, ``.png``, ``.tif``...); neither raises DataError naming the XML.

    Each sample is ``(image, target)``: ``image`` a float32 ``tv_tensors.Image`` in [0, 1];
    ``target`` has ``boxes`` (``BoundingBoxes`` XYXY), ``labels`` (int64, 1..K), ``image_id``
    (``index + 1``, the id used by ``coco_ground_truth()``), ``area`` (float32), ``iscrowd`` (int64 zeros),
    ``difficult`` (bool) and ``orig_size`` (``(H, W)``).

    Args:
        root: Folder holding ``Annotations``, ``JPEGImages`` and ``ImageSets``.
        split: Name of ``ImageSets/Main/<split>.txt``.
        classes: Class names in label order; None = the 20 ``VOC_CLASSES``; ``"auto"`` = the sorted
            names found in the split's XML files. A name not in the list raises DataError.
        transforms: Callable ``(image, target) -> (image, target)``, e.g. ``detection_transforms(True)``.
        keep_difficult: Keep objects marked difficult in the targets (``coco_ground_truth`` always keeps
            them, marked ``iscrowd=1`` so COCO evaluation ignores them).
        coordinates: ``"1-based"`` (the VOC devkit's convention, default) or ``"0-based"`` (see above).
        image_reader: ``path -> tv_tensors.Image`` (e.g. ``se_plugins.data.decode.ImageReader(channels=4)``);
            None = ``load_rgb_image``.

    Example:
        >>> ds = VOCDetection("VOCdevkit/VOC2007", "trainval", transforms=detection_transforms(True))
        >>> image, target = ds[0]
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        classes: Sequence[str] | str | None = None,
        transforms: Callable | None = None,
        keep_difficult: bool = True,
        coordinates: str = "1-based",
        *,
        image_reader: Callable | None = None,
    ) -> None:
        if coordinates not in VOC_COORDINATES:
            raise ValueError(f"coordinates must be one of {', '.join(VOC_COORDINATES)}, got {coordinates!r}")
        self.root = Path(root)
        self.image_reader: Callable = image_reader or load_rgb_image
        self.split = split
        self.transforms = transforms
        self.keep_difficult = keep_difficult
        self.coordinates = coordinates
        offset = 1.0 if coordinates == "1-based" else 0.0
        self.ids: list[str] = read_split(self.root / "ImageSets" / "Main" / f"{split}.txt")
        parsed = [_parse_voc_xml(self._xml(i)) for i in self.ids]

        def found() -> list[str]:
            return sorted({o.name for _, _, objects, _ in parsed for o in objects})

        self.class_names: list[str] = _resolve_classes(classes, VOC_CLASSES, found)
        if not self.class_names:
            raise DataError(
                f"{self.root / 'Annotations'}: classes='auto' found no objects in split {split!r}"
            )
        name_to_label = {name: i + 1 for i, name in enumerate(self.class_names)}
        self.label_to_cat_id: dict[int, int] = {label: label for label in name_to_label.values()}
        self.cat_id_to_label: dict[int, int] = dict(self.label_to_cat_id)

        self._sizes: list[tuple[int, int]] = []
        self._records: list[dict[str, np.ndarray]] = []
        self._images: list[Path] = []
        degenerate: list[str] = []  # "<id>#<object index>"
        for image_id, (height, width, objects, filename) in zip(self.ids, parsed, strict=True):
            xml = self._xml(image_id)
            img = find_image(self.root / "JPEGImages", image_id, filename)
            if img is None:
                raise _missing_image(self.root / "JPEGImages", image_id, filename, f"{xml} (split {split!r})")
            self._images.append(img)
            if height <= 0 or width <= 0:
                height, width = read_image_size(img)
            self._sizes.append((height, width))
            boxes, labels, difficult, truncated = [], [], [], []
            for k, obj in enumerate(objects):
                if obj.name not in name_to_label:
                    raise DataError(
                        f"{xml}: unknown class name {obj.name!r} (classes: {', '.join(self.class_names)})"
                    )
                xmin, ymin, xmax, ymax = obj.bndbox
                status, box = fit_box((xmin - offset, ymin - offset, xmax, ymax), height, width)
                if status == "outside":
                    raise DataError(
                        f"{xml}: box {list(obj.bndbox)} of {obj.name!r} lies entirely outside the "
                        f"{width}x{height} image {img}"
                    )
                if status == "degenerate":
                    degenerate.append(f"{image_id}#{k}")
                    continue
                boxes.append(box)
                labels.append(name_to_label[obj.name])
                difficult.append(obj.difficult)
                truncated.append(obj.truncated)
            self._records.append(
                dict(
                    boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                    labels=np.asarray(labels, dtype=np.int64),
                    difficult=np.asarray(difficult, dtype=bool),
                    truncated=np.asarray(truncated, dtype=bool),
                )
            )
        self.dropped: dict[str, list[str]] = {"degenerate_boxes": degenerate}  # "<image id>#<object index>"
        if degenerate:
            warnings.warn(
                f"{self.root / 'Annotations'} (split {split!r}): dropped {len(degenerate)} degenerate boxes "
                f"(under 1 px wide or high after clipping; <image id>#<object>: {some_ids(degenerate)})",
                stacklevel=2,
            )
        self._coco: COCO | None = None

    def _xml(self, image_id: str) -> Path:
        return self.root / "Annotations" / f"{image_id}.xml"

    def image_path(self, idx: int) -> Path:
        """Path of the image file of item ``idx``."""
        return self._images[idx]

    @property
    def num_classes(self) -> int:
        """Number of classes including background (torchvision's ``num_classes`` for detection)."""
        return len(self.class_names) + 1

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, idx: int) -> tuple[Any, Any]:
        image_id = self.ids[idx]
        path = self._images[idx]
        image = self.image_reader(path)
        height, width = image.shape[-2:]
        if (height, width) != self._sizes[idx]:
            raise DataError(
                f"{self._xml(image_id)}: size {self._sizes[idx][1]}x{self._sizes[idx][0]} does not match "
                f"image {path} ({width}x{height})"
            )
        rec = self._records[idx]
        keep = np.ones(len(rec["labels"]), dtype=bool) if self.keep_difficult else ~rec["difficult"]
        boxes = torch.from_numpy(rec["boxes"][keep])
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": torch.from_numpy(rec["labels"][keep]),
            "image_id": idx + 1,
            "area": (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
            "iscrowd": torch.zeros(int(keep.sum()), dtype=torch.int64),
            "difficult": torch.from_numpy(rec["difficult"][keep]),
            "orig_size": (height, width),
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def get_height_and_width(self, idx: int) -> tuple[int, int]:
        """``(height, width)`` of image ``idx`` from its XML, without decoding the image."""
        return self._sizes[idx]

    def aspect_ratios(self) -> list[float]:
        """Width / height of every image, for ``create_aspect_ratio_groups``."""
        return [w / h for h, w in self._sizes]

    def instance_counts(self) -> dict[str, int]:
        """Boxes per class name (difficult ones included, degenerate ones not)."""
        labels = np.concatenate([r["labels"] for r in self._records] or [np.zeros(0, np.int64)])
        counts = np.bincount(labels, minlength=self.num_classes)
        return {name: int(counts[k + 1]) for k, name in enumerate(self.class_names)}

    def coco_ground_truth(self) -> COCO:
        """The split as an in-memory pycocotools ``COCO`` object, for COCO-style mAP on VOC data.

        Image ids are ``index + 1`` (as in the targets), category ids are the labels 1..K, boxes are the
        0-based boxes of the targets, and difficult objects are kept with ``iscrowd=1`` so that COCOeval
        neither rewards nor penalises detections of them (VOC's rule).
        """
        if self._coco is None:
            images, annotations = [], []
            for idx, (path, (height, width), rec) in enumerate(
                zip(self._images, self._sizes, self._records, strict=True)
            ):
                images.append(dict(id=idx + 1, file_name=path.name, height=height, width=width))
                for box, label, difficult in zip(rec["boxes"], rec["labels"], rec["difficult"], strict=True):
                    x1, y1, x2, y2 = (float(v) for v in box)
                    annotations.append(
                        dict(
                            id=len(annotations) + 1,
                            image_id=idx + 1,
                            category_id=int(label),
                            bbox=[x1, y1, x2 - x1, y2 - y1],
                            area=(x2 - x1) * (y2 - y1),
                            iscrowd=int(difficult),
                        )
                    )
            categories = [dict(id=i + 1, name=name) for i, name in enumerate(self.class_names)]
            self._coco = coco_from_dict(
                dict(
                    info=dict(description=f"{self.root} {self.split}"),
                    licenses=[],
                    images=images,
                    annotations=annotations,
                    categories=categories,
                )
            )
        return self._coco


class VOCSegmentation(Dataset):
    """Pascal VOC semantic segmentation: ``(image, mask)`` pairs.

    ``image`` is a float32 ``tv_tensors.Image`` in [0, 1]; ``mask`` an int64 ``tv_tensors.Mask`` (H, W)
    holding the palette *index* of each pixel of ``SegmentationClass/<id>.png`` (not its colour):
    0..K-1 a class, 255 ignore (VOC's object boundaries and "void").

    Args:
        root: Folder holding ``JPEGImages``, ``SegmentationClass`` and ``ImageSets/Segmentation``.
        split: Name of ``ImageSets/Segmentation/<split>.txt``.
        classes: Class names indexed by mask value, background first; None = ``VOC_SEG_CLASSES`` (21).
        transforms: Callable ``(image, mask) -> (image, mask)``, e.g. ``segmentation_transforms(True)``.
        image_reader: ``path -> tv_tensors.Image`` (see ``VOCDetection``); None = ``load_rgb_image``.

    Example:
        >>> ds = VOCSegmentation("VOCdevkit/VOC2012", "train", transforms=segmentation_transforms(True))
        >>> image, mask = ds[0]
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        classes: Sequence[str] | None = None,
        transforms: Callable | None = None,
        *,
        image_reader: Callable | None = None,
    ) -> None:
        self.root = Path(root)
        self.image_reader: Callable = image_reader or load_rgb_image
        self.split = split
        self.transforms = transforms
        self.class_names: list[str] = _resolve_classes(classes, VOC_SEG_CLASSES, lambda: [])
        self.ids: list[str] = read_split(self.root / "ImageSets" / "Segmentation" / f"{split}.txt")
        self._images: list[Path] = []
        for image_id in self.ids:
            image = find_image(self.root / "JPEGImages", image_id)
            if image is None:
                where = f"{self.root / 'ImageSets' / 'Segmentation' / f'{split}.txt'} lists {image_id!r}"
                raise _missing_image(self.root / "JPEGImages", image_id, None, where)
            self._images.append(image)
            if not self._mask(image_id).is_file():
                raise DataError(f"{self._mask(image_id)}: file not found (listed in split {split!r})")

    def image_path(self, idx: int) -> Path:
        """Path of the image file of item ``idx`` (``JPEGImages/<id>`` with one of ``IMAGE_EXTENSIONS``)."""
        return self._images[idx]

    def _mask(self, image_id: str) -> Path:
        return self.root / "SegmentationClass" / f"{image_id}.png"

    @property
    def num_classes(self) -> int:
        """Number of classes including background (mask values 0..num_classes-1)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, idx: int) -> tuple[Any, Any]:
        image_id = self.ids[idx]
        image = self.image_reader(self._images[idx])
        mask = load_class_mask(self._mask(image_id), self.num_classes)
        if tuple(mask.shape) != tuple(image.shape[-2:]):
            raise DataError(
                f"{self._mask(image_id)}: mask is {mask.shape[1]}x{mask.shape[0]} but image "
                f"{self._images[idx]} is {image.shape[-1]}x{image.shape[-2]}"
            )
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask


def load_class_mask(path: str | os.PathLike, num_classes: int) -> tv_tensors.Mask:
    """Read a class-index PNG (palette or grayscale) as an int64 Mask, checking values are valid.

    Raises:
        DataError: unreadable file, an RGB(A) file (colours, not indices), or values other than
            ``0..num_classes-1`` and 255.
    """
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode not in ("P", "L", "I", "I;16"):
                raise DataError(
                    f"{path}: mask has mode {mode}; expected a palette (P) or 1-channel PNG of class indices"
                )
            array = np.array(im)
    except FileNotFoundError:
        raise DataError(f"{path}: cannot read mask (file not found)") from None
    except (OSError, ValueError, SyntaxError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: cannot read mask ({e})") from e
    values = np.unique(array)
    bad = values[((values >= num_classes) & (values != IGNORE_INDEX)) | (values < 0)]
    if bad.size:
        raise DataError(
            f"{path}: mask values {bad.tolist()[:10]} outside 0..{num_classes - 1} (255 = ignore)"
        )
    return tv_tensors.Mask(torch.from_numpy(array.astype(np.int64)))
