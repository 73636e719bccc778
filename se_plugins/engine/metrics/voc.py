"""PASCAL VOC detection mAP, as the classic py-faster-rcnn ``voc_eval`` computes it, DDP-aware.

Example:
    >>> evaluator = VOCEvaluator(["aeroplane", "bicycle", ...], use_07_metric=True)
    >>> for images, targets in loader:
    ...     evaluator.update(model(images), targets)
    >>> evaluator.synchronize()
    >>> evaluator.summarize()["mAP"]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from se_plugins.engine.distributed import all_gather_object, get_rank

from ._table import fmt_value, format_rows


def voc_ap(
    recall: Sequence[float] | np.ndarray, precision: Sequence[float] | np.ndarray, use_07_metric: bool
) -> float:
    """Average precision from a precision/recall curve, exactly as py-faster-rcnn's ``voc_ap``.

    Args:
        recall: Cumulative recall after each detection (sorted by decreasing score).
        precision: Cumulative precision after each detection.
        use_07_metric: VOC2007's 11-point metric: mean over t in {0, 0.1, ..., 1} of the highest precision at
            recall >= t (0 when no recall reaches t). Otherwise (VOC2010+): the area under the monotone
            (non-increasing) envelope of the precision, integrated at the points where recall changes.
    """
    rec = np.asarray(recall, dtype=np.float64)
    prec = np.asarray(precision, dtype=np.float64)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0.0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one XYXY box with ``[N, 4]`` boxes, continuous coordinates (area = w * h, no +1)."""
    iw = np.maximum(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]), 0.0)
    ih = np.maximum(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]), 0.0)
    inter = iw * ih
    union = (
        (box[2] - box[0]) * (box[3] - box[1])
        + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        - inter
    )
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _to_numpy(value: Any, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype).reshape(shape)


class VOCEvaluator:
    """Accumulate detections and ground truth, then compute VOC AP per class (py-faster-rcnn's ``voc_eval``).

    Matching follows ``voc_eval``: per class, the detections of all images are sorted by decreasing score;
    each one takes the ground-truth box of its image with the highest IoU. If that IoU is ``> iou_threshold``
    and the box is not yet matched, it is a true positive; if the box is already matched, a false positive
    (duplicate); if the box is "difficult", the detection is ignored (neither). Otherwise it is a false
    positive. Difficult boxes do not count in the number of positives.

    Unlike ``voc_eval``, which reads 1-based integer pixel boxes and adds 1 to widths and heights, boxes here
    are 0-based continuous XYXY (torchvision's convention), so IoU uses ``area = (x2 - x1) * (y2 - y1)``.
    Ties in score are broken by image (``target["image_id"]`` when present, else arrival order), then by
    detection order, deterministically (``voc_eval``'s ``argsort`` leaves ties to the sort algorithm).

    Args:
        class_names: The K foreground class names; label ``k`` (1..K) is ``class_names[k - 1]``.
        iou_threshold: A detection matches when IoU > this.
        use_07_metric: VOC2007 11-point AP (True) or area under the precision envelope (False, VOC2010+).
    """

    def __init__(
        self, class_names: Sequence[str], iou_threshold: float = 0.5, use_07_metric: bool = True
    ) -> None:
        if not class_names:
            raise ValueError("class_names must name at least one class")
        self.class_names = [str(c) for c in class_names]
        self.iou_threshold = float(iou_threshold)
        self.use_07_metric = bool(use_07_metric)
        self.reset()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def reset(self) -> None:
        """Forget all images."""
        self._images: dict[tuple[Any, ...], dict[str, np.ndarray]] = {}
        self._gathered: dict[tuple[Any, ...], dict[str, np.ndarray]] | None = None
        self._count = 0

    def update(self, predictions: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]]) -> None:
        """Add a batch.

        Args:
            predictions: Per image ``boxes`` (``[N, 4]`` XYXY), ``labels`` (1..K), ``scores``.
            targets: Per image ``boxes``, ``labels`` (1..K), optional ``difficult`` (bool) and ``image_id``
                (int or str). An ``image_id`` seen again replaces the earlier entry, on this rank and across
                ranks (``DistributedSampler`` padding).

        Raises:
            ValueError: Lengths differ or a label is outside 1..K.
        """
        if len(predictions) != len(targets):
            raise ValueError(f"got {len(predictions)} predictions but {len(targets)} targets")
        for pred, target in zip(predictions, targets, strict=True):
            record = {
                "boxes": _to_numpy(pred["boxes"], np.float64, (-1, 4)),
                "labels": _to_numpy(pred["labels"], np.int64, (-1,)),
                "scores": _to_numpy(pred["scores"], np.float64, (-1,)),
                "gt_boxes": _to_numpy(target["boxes"], np.float64, (-1, 4)),
                "gt_labels": _to_numpy(target["labels"], np.int64, (-1,)),
            }
            n_gt = len(record["gt_labels"])
            difficult = target.get("difficult")
            record["gt_difficult"] = (
                np.zeros(n_gt, dtype=bool) if difficult is None else _to_numpy(difficult, bool, (-1,))
            )
            if not len(record["boxes"]) == len(record["labels"]) == len(record["scores"]):
                raise ValueError("prediction boxes, labels and scores have different lengths")
            if not len(record["gt_boxes"]) == n_gt == len(record["gt_difficult"]):
                raise ValueError("target boxes, labels and difficult have different lengths")
            for what, labels in (("prediction", record["labels"]), ("target", record["gt_labels"])):
                bad = labels[(labels < 1) | (labels > self.num_classes)]
                if bad.size:
                    raise ValueError(f"{what} label {int(bad[0])} is outside 1..{self.num_classes}")
            self._images[self._key(target)] = record
        self._gathered = None

    def _key(self, target: Mapping[str, Any]) -> tuple[Any, ...]:
        """Sort key: ``(0, id)`` / ``(1, id)`` for an int / str ``image_id``, else ``(2, rank, arrival)``."""
        image_id = target.get("image_id")
        if isinstance(image_id, str):
            return (1, image_id)
        if image_id is not None:
            return (0, int(torch.as_tensor(image_id).reshape(-1)[0]))
        self._count += 1
        return (2, get_rank(), self._count)

    def synchronize(self) -> None:
        """Gather the images of all ranks (``all_gather_object``); a no-op without torch.distributed."""
        merged: dict[tuple[Any, ...], dict[str, np.ndarray]] = {}
        for part in all_gather_object(self._images):
            for key, record in part.items():
                merged.setdefault(key, record)
        self._gathered = merged

    def class_ap(self, label: int) -> float:
        """AP of class ``label`` (1..K); NaN when the class has no non-difficult ground-truth box."""
        images = self._gathered if self._gathered is not None else self._images
        keys = sorted(images)
        npos = 0
        gt: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # per image: boxes, difficult, matched
        scores, image_index, det_index, boxes = [], [], [], []
        for i, key in enumerate(keys):
            rec = images[key]
            g = rec["gt_labels"] == label
            difficult = rec["gt_difficult"][g]
            npos += int(np.sum(~difficult))
            gt.append((rec["gt_boxes"][g], difficult, np.zeros(int(g.sum()), dtype=bool)))
            d = np.nonzero(rec["labels"] == label)[0]
            scores.append(rec["scores"][d])
            boxes.append(rec["boxes"][d])
            image_index.append(np.full(len(d), i))
            det_index.append(d)
        if npos == 0:
            return float("nan")
        scores_a = np.concatenate(scores) if scores else np.zeros(0)
        image_a = np.concatenate(image_index) if scores else np.zeros(0, dtype=np.int64)
        boxes_a = np.concatenate(boxes) if scores else np.zeros((0, 4))
        det_a = np.concatenate(det_index) if scores else np.zeros(0, dtype=np.int64)
        order = np.lexsort((det_a, image_a, -scores_a))  # by score (high first), then image, then detection
        tp = np.zeros(len(order))
        fp = np.zeros(len(order))
        for d, j in enumerate(order):
            gt_boxes, difficult, matched = gt[image_a[j]]
            ovmax = -math.inf
            if len(gt_boxes):
                overlaps = _box_iou(boxes_a[j], gt_boxes)
                jmax = int(np.argmax(overlaps))
                ovmax = overlaps[jmax]
            if ovmax > self.iou_threshold:
                if not difficult[jmax]:
                    if not matched[jmax]:
                        tp[d] = 1.0
                        matched[jmax] = True
                    else:
                        fp[d] = 1.0
            else:
                fp[d] = 1.0
        fp = np.cumsum(fp)
        tp = np.cumsum(tp)
        rec = tp / float(npos)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        return voc_ap(rec, prec, self.use_07_metric)

    def summarize(self) -> dict[str, Any]:
        """Return ``{"mAP": float, "per_class_AP": {name: AP}}``.

        ``mAP`` is the mean over the classes that have ground truth (AP NaN classes are left out; NaN if
        none has).
        """
        per_class = {name: self.class_ap(k) for k, name in enumerate(self.class_names, start=1)}
        valid = [ap for ap in per_class.values() if not math.isnan(ap)]
        return {"mAP": float(np.mean(valid)) if valid else float("nan"), "per_class_AP": per_class}

    def format_table(self) -> str:
        """Per-class AP and the mAP as text."""
        result = self.summarize()
        rows = [[name, fmt_value(ap)] for name, ap in result["per_class_AP"].items()]
        metric = "VOC07 11-point" if self.use_07_metric else "VOC area"
        rows.append([f"mAP ({metric}, IoU>{self.iou_threshold:g})", fmt_value(result["mAP"])])
        return format_rows(["class", "AP"], rows)
