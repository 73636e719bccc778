"""COCO-format readers (pycocotools): detection boxes and semantic masks from instance annotations."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors

from se_plugins.data._io import coco_from_dict, fit_box, load_json, load_rgb_image, read_image_size
from se_plugins.data._messages import is_background_name, some_ids
from se_plugins.data.instance_masks import check_segmentation, decode_segmentation
from se_plugins.data.voc import IGNORE_INDEX
from se_plugins.errors import DataError

logger = logging.getLogger("se_plugins.data")


def load_coco(ann_file: str | os.PathLike) -> COCO:
    """Load and check a COCO instances file; return the pycocotools ``COCO`` object.

    Checks what the readers rely on: top-level ``images``/``annotations``/``categories`` lists, the keys
    of each entry, unique ids, and that every annotation names a known image and category.

    Raises:
        DataError: the file is missing, not JSON, or inconsistent (the message names the file and entry).
    """
    data = load_json(ann_file)
    if not isinstance(data, dict):
        raise DataError(f"{ann_file}: expected a JSON object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{ann_file}: missing or non-list key {key!r}")

    def check(entry: Any, what: str, keys: tuple[str, ...]) -> None:
        if not isinstance(entry, dict):
            raise DataError(f"{ann_file}: {what} entry is not an object: {str(entry)[:60]}")
        for key in keys:
            if key not in entry:
                raise DataError(f"{ann_file}: {what} {entry.get('id', '?')} is missing key {key!r}")

    if not data["categories"]:
        raise DataError(f"{ann_file}: 'categories' is empty")
    for cat in data["categories"]:
        check(cat, "category", ("id", "name"))
    for img in data["images"]:
        check(img, "image", ("id", "file_name", "height", "width"))
    cat_ids = {c["id"] for c in data["categories"]}
    img_ids = {i["id"] for i in data["images"]}
    if len(cat_ids) != len(data["categories"]):
        raise DataError(f"{ann_file}: duplicate category ids")
    if len(img_ids) != len(data["images"]):
        raise DataError(f"{ann_file}: duplicate image ids")
    ann_ids = set()
    for ann in data["annotations"]:
        check(ann, "annotation", ("id", "image_id", "category_id", "bbox"))
        if ann["id"] in ann_ids:
            raise DataError(f"{ann_file}: duplicate annotation id {ann['id']}")
        ann_ids.add(ann["id"])
        if ann["category_id"] not in cat_ids:
            raise DataError(
                f"{ann_file}: annotation {ann['id']} has unknown category_id {ann['category_id']} "
                f"(categories: {sorted(cat_ids)})"
            )
        if ann["image_id"] not in img_ids:
            raise DataError(f"{ann_file}: annotation {ann['id']} has unknown image_id {ann['image_id']}")
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox)):
            raise DataError(f"{ann_file}: annotation {ann['id']} has a malformed bbox {bbox!r}")
    return coco_from_dict(data)


def evaluation_ground_truth(coco: COCO, exclude_cat_ids: Sequence[int] = ()) -> tuple[COCO, list[str]]:
    """The ground truth of a COCO file made safe for ``COCOeval``, and what was changed to get it.

    ``COCOeval`` silently mis-evaluates, or fails only at the end of the first epoch, on data that real exports
    hold. Each fix is safe (results never refer to ground-truth annotation ids) and is stated in the notes:

    - annotation ids that are not positive integers (exports that count from 0; COCOeval reads id 0 as
      "unmatched", so a detection matched to it counts as a false positive): renumbered 1..N;
    - annotations without ``area`` (COCOeval needs it): ``area = w * h``; without ``iscrowd``: 0 (not noted);
    - boxes of zero or negative width or height: left out (they can never be matched);
    - the categories ``exclude_cat_ids`` (a background category) and their annotations: left out.

    Returns:
        ``(coco, notes)``: ``coco`` itself when nothing needed changing (``notes == []``), else a new object.
    """
    data = coco.dataset
    anns = data["annotations"]
    exclude = set(exclude_cat_ids)
    bad_ids = [a["id"] for a in anns if isinstance(a["id"], bool) or not isinstance(a["id"], int) or a["id"] <= 0]
    renumber = bool(bad_ids)
    no_area = [a["id"] for a in anns if "area" not in a]
    no_crowd = [a["id"] for a in anns if "iscrowd" not in a]
    flat = [a for a in anns if not a.get("iscrowd", 0) and (a["bbox"][2] <= 0 or a["bbox"][3] <= 0)]
    excluded = [a for a in anns if a["category_id"] in exclude]
    if not (renumber or no_area or no_crowd or flat or exclude):
        return coco, []
    notes = []
    if renumber:
        notes.append(
            f"annotation ids must be positive integers for COCOeval, which reads id 0 as 'unmatched' (first: "
            f"{bad_ids[0]!r}): "
            f"evaluating with the annotations renumbered 1..{len(anns)} (the file is unchanged)"
        )
    if no_area:
        notes.append(f"{len(no_area)} annotations have no area (ids {some_ids(no_area)}): evaluating with w*h")
    if flat:
        notes.append(
            f"left {len(flat)} boxes of zero or negative width/height out of evaluation "
            f"(annotation ids {some_ids([a['id'] for a in flat])})"
        )
    drop = {id(a) for a in flat + excluded}
    fixed = []
    for a in anns:
        if id(a) in drop:
            continue
        a = dict(a)
        if renumber:
            a["id"] = len(fixed) + 1
        a.setdefault("area", float(a["bbox"][2] * a["bbox"][3]))
        a.setdefault("iscrowd", 0)
        fixed.append(a)
    if exclude:
        notes.append(f"left the background category out of evaluation ({len(excluded)} annotations)")
    cats = [c for c in data["categories"] if c["id"] not in exclude]
    return coco_from_dict({**data, "annotations": fixed, "categories": cats}), notes


class _CocoBase(Dataset):
    """Shared part of the COCO readers: the file, the category mapping, image paths and sizes.

    A category named like background (``background``, ``_background_``, ``__background__``; annotation tools
    such as labelme's converters write it, usually with id 0) is not a class unless ``keep_background_category``:
    ``categories`` lists the others, in order of id.
    """

    def __init__(
        self,
        img_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        keep_background_category: bool = False,
        image_reader: Callable | None = None,
    ) -> None:
        self.img_dir = Path(img_dir)
        self.image_reader: Callable = image_reader or load_rgb_image
        self.ann_file = Path(ann_file)
        self.coco: COCO = load_coco(self.ann_file)
        self.ids: list[int] = sorted(self.coco.imgs)
        cats = sorted(self.coco.cats.values(), key=lambda c: c["id"])
        background = [] if keep_background_category else [c for c in cats if is_background_name(c["name"])]
        self.background_cat_ids: list[int] = [c["id"] for c in background]
        self.categories: list[dict[str, Any]] = [c for c in cats if c["id"] not in self.background_cat_ids]
        if background and not self.categories:
            raise DataError(f"{self.ann_file}: the only category, {background[0]['name']!r}, is the background")
        for c in background:
            count = sum(1 for a in self.coco.anns.values() if a["category_id"] == c["id"])
            logger.info(
                f"{self.ann_file}: category {c['id']} {c['name']!r} is the background: not a class "
                f"({count} annotations of it ignored; data.keep_background_category: true keeps it)"
            )

    def image_path(self, image_id: int) -> Path:
        """Path of the image file of COCO image ``image_id``."""
        return self.img_dir / self.coco.imgs[image_id]["file_name"]

    def __len__(self) -> int:
        return len(self.ids)

    def get_height_and_width(self, idx: int) -> tuple[int, int]:
        """``(height, width)`` of image ``idx`` from the annotation file, without decoding the image."""
        info = self.coco.imgs[self.ids[idx]]
        return int(info["height"]), int(info["width"])

    def aspect_ratios(self) -> list[float]:
        """Width / height of every image, for ``create_aspect_ratio_groups``."""
        return [w / h for h, w in (self.get_height_and_width(i) for i in range(len(self)))]

    def _load_image(self, idx: int) -> tv_tensors.Image:
        path = self.image_path(self.ids[idx])
        image = self.image_reader(path)
        height, width = self.get_height_and_width(idx)
        if tuple(image.shape[-2:]) != (height, width):
            raise DataError(
                f"{path}: image is {image.shape[-1]}x{image.shape[-2]} but {self.ann_file} says "
                f"{width}x{height} (image id {self.ids[idx]})"
            )
        return image


class CocoDetection(_CocoBase):
    """COCO-format detection data set in torchvision's detection format.

    Category ids (any integers, e.g. COCO's 1..90 with gaps) map to contiguous labels 1..K in order of
    id; ``label_to_cat_id`` maps predictions back for evaluation against ``coco`` (the full ground truth,
    crowd annotations included). Crowd annotations are never training boxes. Boxes are clipped to the
    image; boxes under 1 px wide or high after clipping are dropped (one warning counts them).

    Each sample is ``(image, target)``: ``image`` a float32 ``tv_tensors.Image`` in [0, 1]; ``target``
    has ``boxes`` (``BoundingBoxes`` XYXY, absolute pixels), ``labels`` (int64, 1..K), ``image_id``
    (the COCO id), ``area`` (float32, the annotation's area in original pixels), ``iscrowd`` (int64
    zeros) and ``orig_size`` (``(H, W)``); with ``masks=True`` also ``masks``, a uint8 ``tv_tensors.Mask``
    ``[N, H, W]`` (one binary mask per box, from polygons or RLE) that the v2 transforms flip, resize and filter
    together with the boxes.

    Args:
        img_dir: Folder of the images (``file_name`` is relative to it).
        ann_file: COCO instances JSON.
        transforms: Callable ``(image, target) -> (image, target)``, e.g. ``detection_transforms(True)``.
        keep_empty: Keep images without boxes (as negatives); False drops them.
        keep_background_category: Keep a category named like background as a class (default: not a class,
            its annotations are ignored; see ``_CocoBase``).
        skip_bad_images: Drop images whose file is missing or unreadable (checked from the file header
            when the data set is built; a file that fails to decode later is replaced by the next image),
            and boxes lying entirely outside their image, with one warning that counts them. False
            raises DataError instead.
        image_reader: ``path -> tv_tensors.Image`` (e.g. ``se_plugins.data.decode.ImageReader(channels=4)``);
            None = ``load_rgb_image`` (3 channels, 8-bit /255, 16-bit /65535, alpha blended over black).
        masks: Decode instance masks (Mask R-CNN). Every annotation's ``segmentation`` is checked when the
            data set is built: an RLE of the wrong size or polygons with fewer than 3 points only raise
            DataError naming the file and annotation id; a degenerate polygon beside valid ones is dropped
            (one warning counts them). Crowd annotations are never training instances (COCOeval ignores
            detections on them).

    Example:
        >>> ds = CocoDetection("coco/train2017", "coco/annotations/instances_train2017.json",
        ...                    transforms=detection_transforms(train=True))
        >>> image, target = ds[0]
    """

    def __init__(
        self,
        img_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        transforms: Callable | None = None,
        keep_empty: bool = True,
        skip_bad_images: bool = False,
        keep_background_category: bool = False,
        masks: bool = False,
        *,
        image_reader: Callable | None = None,
    ) -> None:
        super().__init__(img_dir, ann_file, keep_background_category, image_reader)
        self.transforms = transforms
        self.skip_bad_images = skip_bad_images
        self.masks = masks
        self._segms: dict[int, list[Any]] = {}  # image id -> checked segmentation of each box (masks=True)
        cats = self.categories
        self.class_names: list[str] = [c["name"] for c in cats]
        self.label_to_cat_id: dict[int, int] = {i + 1: c["id"] for i, c in enumerate(cats)}
        self.cat_id_to_label: dict[int, int] = {c: label for label, c in self.label_to_cat_id.items()}

        bad: dict[int, str] = {}  # image id -> why it cannot be read
        if skip_bad_images:
            for image_id in self.ids:
                try:
                    read_image_size(self.image_path(image_id))
                except DataError as e:
                    bad[image_id] = str(e)

        self._targets: dict[int, dict[str, np.ndarray]] = {}
        degenerate: list[int] = []  # annotation ids
        outside: list[int] = []
        dropped_polygons = 0
        for image_id in self.ids:
            if image_id in bad:
                continue
            info = self.coco.imgs[image_id]
            height, width = int(info["height"]), int(info["width"])
            boxes, labels, areas, segms = [], [], [], []
            for ann in self.coco.imgToAnns.get(image_id, []):
                if masks:
                    segm, dropped = check_segmentation(ann, height, width, str(self.ann_file))
                    dropped_polygons += dropped
                if ann.get("iscrowd", 0) or ann["category_id"] not in self.cat_id_to_label:
                    continue  # crowd regions: evaluation only; background category: not a class
                x, y, w, h = ann["bbox"]
                status, box = fit_box((x, y, x + w, y + h), height, width)
                if status == "outside":
                    if skip_bad_images:
                        outside.append(ann["id"])
                        continue
                    raise DataError(
                        f"{self.ann_file}: annotation {ann['id']} of image {self.image_path(image_id)}: box "
                        f"{ann['bbox']} lies entirely outside the {width}x{height} image"
                    )
                if status == "degenerate":
                    degenerate.append(ann["id"])
                    continue
                boxes.append(box)
                labels.append(self.cat_id_to_label[ann["category_id"]])
                areas.append(float(ann.get("area", w * h)))
                if masks:
                    segms.append(segm)
            self._targets[image_id] = dict(
                boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                labels=np.asarray(labels, dtype=np.int64),
                area=np.asarray(areas, dtype=np.float32),
            )
            if masks:
                self._segms[image_id] = segms
        empty = [i for i, t in self._targets.items() if len(t["labels"]) == 0]
        self.ids = [
            i for i in self.ids if i in self._targets and (keep_empty or len(self._targets[i]["labels"]))
        ]
        self.dropped: dict[str, list[int]] = {
            "degenerate_boxes": degenerate,  # annotation ids
            "outside_boxes": outside,  # annotation ids
            "unreadable_images": list(bad),  # image ids
            "empty_images": [] if keep_empty else empty,  # image ids
        }
        notes = []
        if degenerate:
            notes.append(
                f"dropped {len(degenerate)} degenerate boxes (under 1 px wide or high after clipping; "
                f"annotation ids {some_ids(degenerate)})"
            )
        if dropped_polygons:
            notes.append(f"dropped {dropped_polygons} polygons with fewer than 3 points from instance masks")
        if outside:
            notes.append(
                f"dropped {len(outside)} boxes lying entirely outside their image (annotation ids {some_ids(outside)})"
            )
        if bad:
            notes.append(
                f"skipped {len(bad)} missing or unreadable images (image ids {some_ids(list(bad))}; "
                f"first: {next(iter(bad.values()))})"
            )
        if empty and not keep_empty:
            notes.append(f"dropped {len(empty)} images without boxes (keep_empty=False; image ids {some_ids(empty)})")
        if notes:
            warnings.warn(f"{self.ann_file}: " + "; ".join(notes), stacklevel=2)
        self._warned_decode = False
        self._eval_coco, self.eval_notes = evaluation_ground_truth(self.coco, self.background_cat_ids)
        for note in self.eval_notes:
            logger.info(f"{self.ann_file}: {note}")

    @property
    def num_classes(self) -> int:
        """Number of classes including background (torchvision's ``num_classes`` for detection)."""
        return len(self.class_names) + 1

    def coco_ground_truth(self) -> COCO:
        """The ground truth for COCO evaluation (category ids via ``label_to_cat_id``).

        ``self.coco`` itself, or the copy made safe for ``COCOeval`` when the data is built (see
        ``evaluation_ground_truth``; ``eval_notes`` says what was changed, and the log said it too).
        """
        return self._eval_coco

    def __getitem__(self, idx: int) -> tuple[Any, Any]:
        idx = range(len(self))[idx]  # IndexError for a bad index; negative indices count from the end
        for attempt in range(len(self)):
            try:
                image = self._load_image(idx)
                break
            except DataError as e:
                if not self.skip_bad_images or attempt == len(self) - 1:
                    raise
                if not self._warned_decode:
                    warnings.warn(
                        f"{self.ann_file}: image id {self.ids[idx]} failed to decode ({e}); using the next one "
                        "(warned once; se-plugins check-data lists them all)",
                        stacklevel=2,
                    )
                    self._warned_decode = True
                idx = (idx + 1) % len(self)
        image_id = self.ids[idx]
        rec = self._targets[image_id]
        height, width = image.shape[-2:]
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.tensor(rec["boxes"]), format="XYXY", canvas_size=(height, width)
            ),  # copies: in-place changes by a transform never reach the cached annotations
            "labels": torch.tensor(rec["labels"]),
            "image_id": image_id,
            "area": torch.tensor(rec["area"]),
            "iscrowd": torch.zeros(len(rec["labels"]), dtype=torch.int64),
            "orig_size": (height, width),
        }
        if self.masks:
            target["masks"] = self._decode_masks(image_id, height, width)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def instance_counts(self) -> dict[str, int]:
        """Training boxes per class name (crowd, background and dropped boxes not counted)."""
        counts = np.bincount(
            np.concatenate([self._targets[i]["labels"] for i in self.ids] or [np.zeros(0, np.int64)]),
            minlength=self.num_classes,
        )
        return {name: int(counts[k + 1]) for k, name in enumerate(self.class_names)}


    def _decode_masks(self, image_id: int, height: int, width: int) -> tv_tensors.Mask:
        """The instance masks of ``image_id`` as a uint8 ``[N, H, W]`` mask, aligned with its boxes."""
        decoded = [decode_segmentation(segm, height, width) for segm in self._segms[image_id]]
        array = np.stack(decoded) if decoded else np.zeros((0, height, width), dtype=np.uint8)
        return tv_tensors.Mask(torch.from_numpy(array))


class CocoSegmentation(_CocoBase):
    """Semantic segmentation masks from COCO instance annotations (polygons or RLE, via pycocotools).

    Mask values: 0 background, ``i`` for the i-th class (1..K), 255 ignore. Ignored are crowd regions
    not covered by a regular instance, and pixels claimed by instances of two different classes.

    Each sample is ``(image, mask)``: a float32 ``tv_tensors.Image`` in [0, 1] and an int64
    ``tv_tensors.Mask`` (H, W).

    Args:
        img_dir: Folder of the images.
        ann_file: COCO instances JSON with ``segmentation`` in each annotation.
        transforms: Callable ``(image, mask) -> (image, mask)``, e.g. ``segmentation_transforms(True)``.
        classes: Category names to use, in class order (categories not listed become background);
            None = all categories in order of id (a background category excluded, see ``_CocoBase``).
        keep_background_category: Keep a category named like background as a class.
        image_reader: ``path -> tv_tensors.Image`` (see ``CocoDetection``); None = ``load_rgb_image``.

    Example:
        >>> ds = CocoSegmentation("shapes/coco/train", "shapes/coco/annotations/instances_train.json")
        >>> ds.class_names  # ['background', 'circle', 'square', 'triangle', 'star']
    """

    def __init__(
        self,
        img_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        transforms: Callable | None = None,
        classes: Sequence[str] | None = None,
        keep_background_category: bool = False,
        *,
        image_reader: Callable | None = None,
    ) -> None:
        super().__init__(img_dir, ann_file, keep_background_category, image_reader)
        self.transforms = transforms
        cats = self.categories
        if classes is None:
            chosen = cats
        else:
            by_name = {c["name"]: c for c in cats}
            unknown = [name for name in classes if name not in by_name]
            if unknown:
                raise DataError(f"{self.ann_file}: no category named {unknown} (categories: {list(by_name)})")
            chosen = [by_name[name] for name in classes]
        self.class_names: list[str] = ["background"] + [c["name"] for c in chosen]
        self.cat_id_to_class: dict[int, int] = {c["id"]: i + 1 for i, c in enumerate(chosen)}
        for ann in self.coco.anns.values():
            if not isinstance(ann.get("segmentation"), list | dict):
                raise DataError(f"{self.ann_file}: annotation {ann['id']} has no valid 'segmentation'")

    @property
    def num_classes(self) -> int:
        """Number of classes including background (mask values 0..num_classes-1)."""
        return len(self.class_names)

    def _instance_mask(self, ann: dict) -> np.ndarray | None:
        segm = ann["segmentation"]
        if isinstance(segm, list):
            segm = [p for p in segm if len(p) >= 6]  # pycocotools reads 4 numbers as a box
            if not segm:
                return None
            ann = {**ann, "segmentation": segm}
        try:
            return self.coco.annToMask(ann).astype(bool)
        except Exception as e:  # pycocotools raises assorted errors on malformed RLE/polygons
            raise DataError(f"{self.ann_file}: annotation {ann['id']}: bad segmentation ({e})") from e

    def __getitem__(self, idx: int) -> tuple[Any, Any]:
        image = self._load_image(idx)
        height, width = self.get_height_and_width(idx)
        mask = np.zeros((height, width), dtype=np.int64)
        owner = np.zeros((height, width), dtype=np.int64)  # class claiming the pixel, -1 if conflicting
        crowd = np.zeros((height, width), dtype=bool)
        for ann in self.coco.imgToAnns.get(self.ids[idx], []):
            cls = self.cat_id_to_class.get(ann["category_id"])
            if cls is None:
                continue
            m = self._instance_mask(ann)
            if m is None:
                continue
            if ann.get("iscrowd", 0):
                crowd |= m
                continue
            conflict = m & (owner > 0) & (owner != cls)
            owner[m & (owner == 0)] = cls
            owner[conflict] = -1
        mask[owner > 0] = owner[owner > 0]
        mask[(owner == -1) | (crowd & (owner == 0))] = IGNORE_INDEX
        target = tv_tensors.Mask(torch.from_numpy(mask))
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target
