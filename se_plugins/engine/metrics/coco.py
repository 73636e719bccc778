"""COCO mAP with pycocotools' ``COCOeval`` (or faster-coco-eval, which gives the same numbers), DDP-aware.

Example:
    >>> evaluator = CocoEvaluator(dataset.coco)  # a pycocotools COCO object
    >>> for images, targets in loader:
    ...     outputs = model(images)
    ...     ids = [int(t["image_id"]) for t in targets]
    ...     evaluator.update(detections_to_coco_results(outputs, ids, label_to_cat_id), image_ids=ids)
    >>> evaluator.synchronize()  # all ranks, under torch.distributed
    >>> stats = evaluator.summarize()  # {"AP": ..., "AP50": ..., ...}
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import numbers
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from se_plugins.engine.distributed import all_gather_object
from se_plugins.errors import DataError

from ._table import fmt_value, format_rows

COCO_STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
_STAT_DESCRIPTIONS = [
    "precision  IoU=0.50:0.95  area=all     maxDets=100",
    "precision  IoU=0.50       area=all     maxDets=100",
    "precision  IoU=0.75       area=all     maxDets=100",
    "precision  IoU=0.50:0.95  area=small   maxDets=100",
    "precision  IoU=0.50:0.95  area=medium  maxDets=100",
    "precision  IoU=0.50:0.95  area=large   maxDets=100",
    "recall     IoU=0.50:0.95  area=all     maxDets=1",
    "recall     IoU=0.50:0.95  area=all     maxDets=10",
    "recall     IoU=0.50:0.95  area=all     maxDets=100",
    "recall     IoU=0.50:0.95  area=small   maxDets=100",
    "recall     IoU=0.50:0.95  area=medium  maxDets=100",
    "recall     IoU=0.50:0.95  area=large   maxDets=100",
]
COCO_BACKENDS = ("auto", "faster_coco_eval", "pycocotools")
IOU_TYPES = ("bbox", "segm")


# --------------------------------------------------------------------------------------------- backends
def coco_backend(name: str = "auto") -> tuple[type, type]:
    """Return the ``(COCO, COCOeval)`` classes to evaluate with.

    Args:
        name: ``"auto"`` or ``"faster_coco_eval"``: faster-coco-eval's ``COCO`` and ``COCOeval_faster`` when
            it is installed, else pycocotools'. ``"pycocotools"``: always pycocotools. Both give the same
            12 numbers.

    Raises:
        ValueError: ``name`` is not one of ``COCO_BACKENDS``.
    """
    if name not in COCO_BACKENDS:
        raise ValueError(f"unknown COCO backend {name!r}; expected one of {', '.join(COCO_BACKENDS)}")
    if name in ("auto", "faster_coco_eval"):
        try:
            from faster_coco_eval import COCO, COCOeval_faster
        except ImportError:
            if name == "faster_coco_eval":
                warnings.warn("faster-coco-eval is not installed; using pycocotools", stacklevel=2)
        else:
            return COCO, COCOeval_faster
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval


def _is_faster(cls: type) -> bool:
    return cls.__module__.startswith("faster_coco_eval")


def _silent(*args: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def _quiet():
    """Swallow pycocotools' progress prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _coco_from_dataset(dataset: dict[str, Any], coco_cls: type) -> Any:
    """Index a COCO-format dict with ``coco_cls`` (the dict is used as is, not copied)."""
    coco = coco_cls()
    coco.dataset = dataset
    with _quiet():
        coco.createIndex()
    return coco


def _as_backend_coco(coco_gt: Any, coco_cls: type) -> Any:
    """``coco_gt`` as an object of ``coco_cls``; other COCO objects and dicts are copied and converted."""
    dataset = coco_gt if isinstance(coco_gt, dict) else getattr(coco_gt, "dataset", None)
    if not isinstance(dataset, dict):
        raise TypeError(
            f"coco_gt must be a COCO object (with .dataset) or a COCO dict, got {type(coco_gt).__name__}"
        )
    if any(isinstance(a, dict) and a.get("id") == 0 for a in dataset.get("annotations", [])):
        raise DataError(
            "ground truth has an annotation with id 0: COCOeval uses id 0 to mean 'unmatched', "
            "so matches to it would count as false positives; use ids starting at 1"
        )
    if isinstance(coco_gt, coco_cls):
        return coco_gt
    # Both evaluators write into ground-truth annotations ("ignore", RLEs): never touch the caller's dicts.
    return _coco_from_dataset(copy.deepcopy(dataset), coco_cls)


def _load_results(coco_gt: Any, results: list[dict], coco_cls: type) -> Any:
    """``coco_gt.loadRes(results)``, also for an empty list (pycocotools' loadRes fails on one)."""
    if results:
        with _quiet():
            return coco_gt.loadRes(results)
    dataset = {
        "images": list(coco_gt.dataset.get("images", [])),
        "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
        "annotations": [],
    }
    return _coco_from_dataset(dataset, coco_cls)


# --------------------------------------------------------------------------------------------- results
def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        return int(value.item())
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _normalize_result(
    r: Any, index: int, iou_type: str, img_ids: set[int], cat_ids: set[int], source: str, gt_name: str
) -> dict[str, Any]:
    """Check one COCO result dict and return a clean copy with plain Python types (raises DataError)."""
    if not isinstance(r, Mapping):
        raise DataError(f"{source}: result {index} is not an object (got {type(r).__name__})")
    geometry = "bbox" if iou_type == "bbox" else "segmentation"
    for key in ("image_id", "category_id", "score", geometry):
        if key not in r:
            raise DataError(f"{source}: result {index} has no {key!r}")
    image_id, category_id = _as_int(r["image_id"]), _as_int(r["category_id"])
    if image_id is None:
        raise DataError(f"{source}: result {index} has a non-integer image_id {r['image_id']!r}")
    if category_id is None:
        raise DataError(f"{source}: result {index} has a non-integer category_id {r['category_id']!r}")
    if image_id not in img_ids:
        raise DataError(f"{source}: result {index} references image_id {image_id}, which is not in {gt_name}")
    if category_id not in cat_ids:
        raise DataError(
            f"{source}: result {index} references category_id {category_id}, which is not in {gt_name}"
        )
    score = float(r["score"]) if _is_number(r["score"]) else None
    if score is None:
        raise DataError(f"{source}: result {index} has an invalid score {r['score']!r}")
    out: dict[str, Any] = {"image_id": image_id, "category_id": category_id, "score": score}
    if iou_type == "bbox":
        bbox = r["bbox"]
        if isinstance(bbox, (np.ndarray, torch.Tensor)):
            bbox = bbox.tolist()
        if not isinstance(bbox, Sequence) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise DataError(f"{source}: result {index} has bbox {bbox!r}; expected four numbers [x, y, w, h]")
        out["bbox"] = [float(v) for v in bbox]
    if iou_type == "segm":
        # A box beside the mask is left out, as detectron2 and mmdet do: with it, loadRes would take the box area
        # as the detection's area, which changes the small/medium/large mask APs.
        segm = r["segmentation"]
        if not (isinstance(segm, Mapping) and {"size", "counts"} <= segm.keys()) and not isinstance(segm, list):
            raise DataError(f"{source}: result {index} has a segmentation that is neither an RLE nor polygons")
        out["segmentation"] = dict(segm) if isinstance(segm, Mapping) else segm
    return out


def masks_to_rle(masks: torch.Tensor | np.ndarray, threshold: float = 0.5) -> list[dict[str, Any]]:
    """Binary (or probability) masks ``[N, H, W]`` or ``[N, 1, H, W]`` as COCO RLEs with string counts.

    Probabilities (floating point) are binarised with ``> threshold`` (torchvision's Mask R-CNN reference uses
    0.5); integer and bool masks are read as ``!= 0``.
    """
    array = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3:
        raise ValueError(f"masks must be [N, H, W] or [N, 1, H, W], got shape {tuple(array.shape)}")
    if len(array) == 0:
        return []
    binary = array > threshold if np.issubdtype(array.dtype, np.floating) else array != 0
    from pycocotools import mask as mask_utils

    rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")} for rle in rles]


def detections_to_coco_results(
    outputs: Sequence[Mapping[str, torch.Tensor]],
    image_ids: Sequence[int] | torch.Tensor,
    label_to_cat_id: Mapping[int, int] | Sequence[int],
) -> list[dict[str, Any]]:
    """Convert torchvision detection outputs to COCO result dicts.

    Args:
        outputs: One dict per image with ``boxes`` (``[N, 4]`` XYXY, absolute pixels), ``labels`` (contiguous
            training labels) and ``scores``, as returned by torchvision detection models in eval mode; with
            ``masks`` (Mask R-CNN's ``[N, 1, H, W]`` probabilities, or binary ``[N, H, W]``) each result also
            gets an RLE ``segmentation`` (see :func:`masks_to_rle`).
        image_ids: The COCO image id of each output.
        label_to_cat_id: Contiguous label -> COCO category id (a mapping, or a sequence indexed by label).

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"(, "segmentation")}, ...]`` in output order.

    Raises:
        ValueError: The lengths differ or a label has no category id.
    """
    if len(outputs) != len(image_ids):
        raise ValueError(f"got {len(outputs)} outputs but {len(image_ids)} image ids")
    results: list[dict[str, Any]] = []
    for output, image_id in zip(outputs, image_ids, strict=True):
        boxes = torch.as_tensor(output["boxes"]).detach().to("cpu", torch.float64).reshape(-1, 4)
        labels = torch.as_tensor(output["labels"]).detach().cpu().tolist()
        scores = torch.as_tensor(output["scores"]).detach().to("cpu", torch.float64).tolist()
        if not len(boxes) == len(labels) == len(scores):
            raise ValueError(f"image {int(image_id)}: boxes, labels and scores have different lengths")
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        rles = masks_to_rle(output["masks"]) if "masks" in output else None
        if rles is not None and len(rles) != len(labels):
            raise ValueError(f"image {int(image_id)}: {len(rles)} masks for {len(labels)} boxes")
        for i, (box, label, score) in enumerate(zip(xywh, labels, scores, strict=True)):
            result = {
                "image_id": int(image_id),
                "category_id": _map_label(label_to_cat_id, int(label)),
                "bbox": box,
                "score": score,
            }
            if rles is not None:
                result["segmentation"] = rles[i]
            results.append(result)
    return results


def _map_label(label_to_cat_id: Mapping[int, int] | Sequence[int], label: int) -> int:
    if isinstance(label_to_cat_id, Mapping):
        if label not in label_to_cat_id:
            raise ValueError(f"label {label} has no category id in label_to_cat_id")
        return int(label_to_cat_id[label])
    if not 0 <= label < len(label_to_cat_id):
        raise ValueError(
            f"label {label} has no category id in label_to_cat_id (length {len(label_to_cat_id)})"
        )
    return int(label_to_cat_id[label])


# --------------------------------------------------------------------------------------------- evaluator
class CocoEvaluator:
    """Accumulate COCO results over an evaluation run and compute the 12 ``COCOeval`` numbers.

    Only the images seen by :meth:`update` are evaluated (``COCOeval.params.imgIds``), so evaluating a subset
    of a dataset gives that subset's numbers. Pass ``image_ids`` to ``update`` so that images without
    detections count too. An image that several ranks evaluated (``DistributedSampler`` pads the last batch
    with repeated images) counts once, with the results of the lowest rank; within one rank, results add up
    over ``update`` calls.

    Args:
        coco_gt: Ground truth: a pycocotools (or faster-coco-eval) ``COCO`` object, or a COCO-format dict.
            It is converted (from a deep copy of ``coco_gt.dataset``) when it is not an object of the
            backend's class.
        iou_type: ``"bbox"`` (box mAP) or ``"segm"`` (mask mAP, results carry RLE ``segmentation``).
        backend: See :func:`coco_backend`.

    Attributes:
        coco_gt: The ground truth as an object of the backend's ``COCO`` class.
        coco_eval: The ``COCOeval`` object of the last :meth:`summarize` (``None`` before).
        backend: ``"faster_coco_eval"`` or ``"pycocotools"``.
    """

    def __init__(self, coco_gt: Any, iou_type: str = "bbox", backend: str = "auto") -> None:
        if iou_type not in IOU_TYPES:
            raise ValueError(f"iou_type must be one of {', '.join(IOU_TYPES)}, got {iou_type!r}")
        self.iou_type = iou_type
        self._coco_cls, self._eval_cls = coco_backend(backend)
        self.backend = "faster_coco_eval" if _is_faster(self._eval_cls) else "pycocotools"
        self.coco_gt = _as_backend_coco(coco_gt, self._coco_cls)
        self._img_ids = set(self.coco_gt.imgs)
        self._cat_ids = set(self.coco_gt.cats)
        self._gt_name = "the ground truth"
        self.reset()

    def reset(self) -> None:
        """Forget all results."""
        self._per_image: dict[int, list[dict[str, Any]]] = {}
        self._gathered: dict[int, list[dict[str, Any]]] | None = None
        self.coco_eval: Any = None
        self._stats: dict[str, float] = {}

    def update(self, results: Iterable[Mapping[str, Any]], image_ids: Iterable[int] | None = None) -> None:
        """Add COCO result dicts ``{image_id, category_id, bbox: [x, y, w, h], score}``.

        Args:
            results: Detections of some images (any order).
            image_ids: The images these results cover, including those with no detection. Defaults to the ids
                that occur in ``results``.

        Raises:
            DataError: A result is malformed or names an image/category id that is not in the ground truth.
        """
        self._update(results, image_ids, source="results")

    def _update(
        self, results: Iterable[Any], image_ids: Iterable[Any] | None, source: str, skip: Iterable[int] = ()
    ) -> None:
        grouped: dict[int, list[dict[str, Any]]] = {}
        skip = set(skip)
        for i, r in enumerate(results):
            if i in skip:
                continue
            norm = _normalize_result(r, i, self.iou_type, self._img_ids, self._cat_ids, source, self._gt_name)
            grouped.setdefault(norm["image_id"], []).append(norm)
        for raw in image_ids if image_ids is not None else ():
            image_id = _as_int(raw)
            if image_id is None or image_id not in self._img_ids:
                raise DataError(f"image_ids: image id {raw!r} is not in {self._gt_name}")
            grouped.setdefault(image_id, [])
        for image_id, found in grouped.items():
            self._per_image.setdefault(image_id, []).extend(found)
        self._gathered = None
        self.coco_eval = None

    @property
    def image_ids(self) -> list[int]:
        """Sorted ids of the images that will be evaluated."""
        return sorted(self._images())

    def _images(self) -> dict[int, list[dict[str, Any]]]:
        return self._gathered if self._gathered is not None else self._per_image

    def synchronize(self) -> None:
        """Gather the results of all ranks (``all_gather_object``); a no-op without torch.distributed.

        Call it on every rank after the last :meth:`update`. Calling it again gathers again (no duplicates).
        """
        merged: dict[int, list[dict[str, Any]]] = {}
        for part in all_gather_object(self._per_image):
            for image_id, results in part.items():
                merged.setdefault(image_id, results)  # padded duplicates: the ranks hold the same results
        self._gathered = merged
        self.coco_eval = None

    def summarize(self) -> dict[str, float]:
        """Run ``COCOeval`` on the images seen and return the 12 stats named by ``COCO_STAT_NAMES``.

        Values are in [0, 1]; -1 means there was nothing to evaluate (e.g. no small ground-truth boxes), as in
        ``COCOeval``. Zero detections give 0 for the metrics that have ground truth. With no image seen at
        all, every stat is -1 (and a warning is issued).
        """
        images = self._images()
        if not images:
            warnings.warn("CocoEvaluator.summarize(): no image was seen; every stat is -1", stacklevel=2)
            self.coco_eval = None
            return dict.fromkeys(COCO_STAT_NAMES, -1.0)
        img_ids = sorted(images)
        # loadRes adds keys ("id", "area", ...) to the dicts it gets: give it copies.
        results = [dict(r) for image_id in img_ids for r in images[image_id]]
        coco_dt = _load_results(self.coco_gt, results, self._coco_cls)
        with _quiet():
            if self.backend == "faster_coco_eval":
                coco_eval = self._eval_cls(self.coco_gt, coco_dt, self.iou_type, print_function=_silent)
            else:
                coco_eval = self._eval_cls(self.coco_gt, coco_dt, self.iou_type)
            coco_eval.params.imgIds = img_ids
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        self.coco_eval = coco_eval
        self._stats = {name: float(v) for name, v in zip(COCO_STAT_NAMES, coco_eval.stats[:12], strict=True)}
        return dict(self._stats)

    def per_class_ap(self) -> dict[str, float]:
        """AP@[0.50:0.95] (area all, 100 detections) per category name, averaged like detectron2's table.

        The mean of ``COCOeval.eval["precision"][:, :, k, 0, -1]`` over its valid (> -1) entries; NaN for a
        category without ground truth in the images seen. Runs :meth:`summarize` if it has not run yet.
        """
        if self.coco_eval is None and self._images():
            self.summarize()
        cat_ids = sorted(self._cat_ids)
        names = _category_names(self.coco_gt, cat_ids)
        if self.coco_eval is None:
            return dict.fromkeys(names.values(), float("nan"))
        precision = np.asarray(self.coco_eval.eval["precision"])  # [T, R, K, A, M]
        out: dict[str, float] = {}
        for k, cat_id in enumerate(self.coco_eval.params.catIds):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            out[names[int(cat_id)]] = float(np.mean(p)) if p.size else float("nan")
        return out

    def format_table(self) -> str:
        """The 12 stats and the per-class AP as text (runs :meth:`summarize` unless it has run)."""
        stats = dict(self._stats) if self.coco_eval is not None else self.summarize()
        per_class = self.per_class_ap()
        rows = [[name, fmt_value(ap)] for name, ap in per_class.items()]
        return format_coco_stats(stats) + "\n\n" + format_rows(["category", "AP"], rows)


def _category_names(coco: Any, cat_ids: Sequence[int]) -> dict[int, str]:
    """Category id -> display name (the id is appended to names that occur twice)."""
    raw = {c: str(coco.cats[c].get("name", c)) for c in cat_ids}
    counts: dict[str, int] = {}
    for name in raw.values():
        counts[name] = counts.get(name, 0) + 1
    return {c: (name if counts[name] == 1 else f"{name} ({c})") for c, name in raw.items()}


def format_coco_stats(stats: Mapping[str, float]) -> str:
    """The 12 COCO numbers as a readable table (``n/a`` where COCOeval gives -1).

    Example output::

        metric   value  meaning
        ------  ------  -----------------------------------------------
        AP      0.5021  precision  IoU=0.50:0.95  area=all     maxDets=100
    """
    rows = [
        [name, fmt_value(stats[name]), desc]
        for name, desc in zip(COCO_STAT_NAMES, _STAT_DESCRIPTIONS, strict=True)
        if name in stats
    ]
    return format_rows(["metric", "value", "meaning"], rows, align="lrl")


# --------------------------------------------------------------------------------------------- files
def _read_json(path: str | os.PathLike, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: {what} path is a directory, expected a JSON file") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON in {what} file ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read {what} file ({e})") from None


def _check_gt(data: Any, path: str | os.PathLike, iou_type: str) -> None:
    """Validate a COCO ground-truth dict enough that COCOeval cannot fail or silently mis-evaluate."""
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a COCO object with 'images', 'annotations', 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: '{key}' is missing or not a list")
    if not data["images"]:
        raise DataError(f"{path}: 'images' is empty")
    if not data["annotations"]:
        raise DataError(f"{path}: 'annotations' is empty: there is no ground truth to evaluate against")
    ids: dict[str, set[int]] = {}
    for key in ("images", "categories"):
        ids[key] = set()
        for i, item in enumerate(data[key]):
            item_id = _as_int(item.get("id")) if isinstance(item, dict) else None
            if item_id is None:
                raise DataError(f"{path}: {key}[{i}] has no integer 'id'")
            ids[key].add(item_id)
    ann_ids: set[int] = set()
    need = ("id", "image_id", "category_id", "bbox", "area") + (
        ("segmentation",) if iou_type == "segm" else ()
    )
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise DataError(f"{path}: annotations[{i}] is not an object")
        for key in need:
            if key not in ann:
                raise DataError(f"{path}: annotations[{i}] has no {key!r}")
        ann_id = _as_int(ann["id"])
        if ann_id is None or ann_id == 0 or ann_id in ann_ids:
            problem = "is 0 (COCOeval reads 0 as 'unmatched')" if ann_id == 0 else "is not a unique integer"
            raise DataError(f"{path}: annotations[{i}] id {ann['id']!r} {problem}")
        ann_ids.add(ann_id)
        if _as_int(ann["image_id"]) not in ids["images"]:
            raise DataError(
                f"{path}: annotations[{i}] references image_id {ann['image_id']!r}, not in 'images'"
            )
        if _as_int(ann["category_id"]) not in ids["categories"]:
            raise DataError(
                f"{path}: annotations[{i}] references category_id {ann['category_id']!r}, not in 'categories'"
            )
        bbox = ann["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise DataError(f"{path}: annotations[{i}] has bbox {bbox!r}; expected four numbers [x, y, w, h]")
        if not _is_number(ann["area"]):
            raise DataError(f"{path}: annotations[{i}] has a non-numeric area {ann['area']!r}")
    if iou_type == "bbox":
        flat = [i for i, ann in enumerate(data["annotations"]) if _flat_box(ann["bbox"])]
        if flat:
            warnings.warn(
                f"{path}: dropped {len(flat)} ground-truth boxes with zero or negative width or height "
                f"(annotations[i] for i = {_some(flat)})",
                stacklevel=3,
            )
            dropped = set(flat)
            data["annotations"] = [a for i, a in enumerate(data["annotations"]) if i not in dropped]


def _flat_box(bbox: Any) -> bool:
    """An ``[x, y, w, h]`` of four numbers with ``w <= 0`` or ``h <= 0``."""
    return (
        isinstance(bbox, list | tuple)
        and len(bbox) == 4
        and all(_is_number(v) for v in bbox)
        and (bbox[2] <= 0 or bbox[3] <= 0)
    )


def _some(indices: Sequence[int], limit: int = 5) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    return shown if len(indices) <= limit else f"{shown}, ..."


def evaluate_coco_files(
    annotations: str | os.PathLike,
    results: str | os.PathLike,
    iou_type: str = "bbox",
    backend: str = "auto",
) -> dict[str, float]:
    """Evaluate a COCO results file against a COCO annotation file (``se-plugins eval-results``).

    Every image of the annotation file is evaluated (the official protocol), with or without detections.

    Args:
        annotations: Ground-truth COCO JSON (``images``, ``annotations``, ``categories``).
        results: Results JSON: a list of ``{image_id, category_id, bbox: [x, y, w, h], score}``.
        iou_type: ``"bbox"`` or ``"segm"``.
        backend: See :func:`coco_backend`.

    Returns:
        The 12 stats named by ``COCO_STAT_NAMES``.

    Boxes of zero or negative width or height (``bbox`` evaluation), in the ground truth or in the results,
    are dropped with a warning naming the file, the count and the first indices: they can never be matched,
    so they would only lower the numbers.

    Raises:
        DataError: A file is missing or malformed, the annotations or the results are empty, or a result
            references an image or category id that is not in the annotations (the message names the file
            and the id).
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {', '.join(IOU_TYPES)}, got {iou_type!r}")
    gt_data = _read_json(annotations, "annotations")
    _check_gt(gt_data, annotations, iou_type)
    dt_data = _read_json(results, "results")
    if not isinstance(dt_data, list):
        raise DataError(
            f"{results}: results must be a JSON list of detections, got a {type(dt_data).__name__}"
        )
    if not dt_data:
        raise DataError(f"{results}: results file has no detections (empty list)")
    flat = []
    if iou_type == "bbox":
        flat = [i for i, r in enumerate(dt_data) if isinstance(r, Mapping) and _flat_box(r.get("bbox"))]
    if flat:
        warnings.warn(
            f"{results}: dropped {len(flat)} of {len(dt_data)} results with zero or negative box width or "
            f"height (results[i] for i = {_some(flat)})",
            stacklevel=2,
        )
    coco_cls, _ = coco_backend(backend)
    evaluator = CocoEvaluator(_coco_from_dataset(gt_data, coco_cls), iou_type=iou_type, backend=backend)
    evaluator._gt_name = str(annotations)
    evaluator._update(dt_data, evaluator.coco_gt.getImgIds(), source=str(results), skip=flat)
    return evaluator.summarize()
