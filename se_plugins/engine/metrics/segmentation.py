"""Semantic segmentation metrics (mIoU, pixel accuracy, mean class accuracy) from a confusion matrix.

Example:
    >>> metric = SegmentationMetric(num_classes=21, ignore_index=255)
    >>> for images, masks in loader:
    ...     metric.update(model(images), masks)  # logits [N, C, H, W] or labels [N, H, W]
    >>> metric.reduce()  # sums the matrices of all ranks under torch.distributed
    >>> metric.compute()["mIoU"]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from se_plugins.engine.distributed import all_reduce_sum

from ._table import fmt_value, format_rows


class SegmentationMetric:
    """A ``num_classes x num_classes`` confusion matrix (rows: ground truth, columns: prediction).

    The matrix is int64 on the device of the tensors given to :meth:`update`, so the counts are exact, also
    after :meth:`reduce` under DDP (but ``DistributedSampler`` pads the last batch with repeated images, which
    are counted twice; evaluate without padding for exact dataset numbers).

    Args:
        num_classes: Number of classes C (labels 0..C-1).
        ignore_index: Target value of pixels that are not evaluated (VOC's 255 border).
        class_names: Names for the per-class table (default ``"0"``, ``"1"``, ...).
    """

    def __init__(
        self, num_classes: int, ignore_index: int | None = 255, class_names: Sequence[str] | None = None
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"got {len(class_names)} class_names for num_classes={num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.class_names = [str(c) for c in class_names] if class_names is not None else None
        self.reset()

    def reset(self) -> None:
        """Zero the matrix."""
        self._local: torch.Tensor | None = None
        self._reduced: torch.Tensor | None = None

    @property
    def confusion_matrix(self) -> torch.Tensor:
        """``[C, C]`` int64 counts (all-rank sum after :meth:`reduce`); ``[i, j]``: class i predicted as j."""
        if self._reduced is not None:
            return self._reduced
        if self._local is None:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        return self._local

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count a batch.

        Args:
            pred: Labels ``[N, H, W]`` (integer) or scores/logits ``[N, C, H, W]`` (argmax over C is taken).
            target: Labels ``[N, H, W]`` in 0..C-1 or ``ignore_index``.

        Raises:
            ValueError: Shapes do not match, or a label is outside 0..C-1 (and not ``ignore_index``).
        """
        if pred.dim() == target.dim() + 1:
            if pred.shape[1] != self.num_classes:
                raise ValueError(
                    f"logits have {pred.shape[1]} channels, expected num_classes={self.num_classes}"
                )
            pred = pred.argmax(dim=1)
        if pred.shape != target.shape:
            raise ValueError(
                f"prediction shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}"
            )
        if pred.is_floating_point() or target.is_floating_point():
            raise ValueError("labels must be integer tensors (pass logits as [N, C, H, W])")
        target = target.to(pred.device).long()
        pred = pred.long()
        valid = (
            target != self.ignore_index
            if self.ignore_index is not None
            else torch.ones_like(target, dtype=bool)
        )
        t, p = target[valid], pred[valid]
        for what, labels in (("target", t), ("prediction", p)):
            bad = labels[(labels < 0) | (labels >= self.num_classes)]
            if bad.numel():
                raise ValueError(
                    f"{what} label {int(bad[0])} is outside 0..{self.num_classes - 1}"
                    + (f" (ignore_index={self.ignore_index})" if what == "target" else "")
                )
        counts = torch.bincount(t * self.num_classes + p, minlength=self.num_classes**2)
        counts = counts.reshape(self.num_classes, self.num_classes)
        self._local = counts if self._local is None else self._local + counts.to(self._local.device)
        self._reduced = None

    def reduce(self) -> None:
        """Sum the matrices of all ranks (``all_reduce``); a no-op without torch.distributed.

        Call it on every rank. Calling it again recomputes the same sum (no double counting).
        """
        local = self._local
        if local is None:
            local = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        self._reduced = all_reduce_sum(local)

    def compute(self) -> dict[str, Any]:
        """Return ``{"mIoU", "pixel_acc", "mAcc", "per_class_IoU": {name: IoU}}`` (floats in [0, 1]).

        IoU_c = TP / (TP + FP + FN). A class absent from both ground truth and prediction has IoU NaN and is
        left out of mIoU; mAcc averages TP / (TP + FN) over the classes present in the ground truth (mmseg's
        ``nanmean``). With no counted pixel every value is NaN.
        """
        cm = self.confusion_matrix.double().cpu()
        tp = cm.diag()
        gt = cm.sum(dim=1)
        union = gt + cm.sum(dim=0) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
        acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, math.nan))
        total = float(cm.sum())
        names = self.class_names or [str(i) for i in range(self.num_classes)]
        return {
            "mIoU": float(iou.nanmean()),
            "pixel_acc": float(tp.sum() / total) if total else math.nan,
            "mAcc": float(acc.nanmean()),
            "per_class_IoU": {name: float(v) for name, v in zip(names, iou.tolist(), strict=True)},
        }

    def format_table(self) -> str:
        """Per-class IoU and the summary numbers as text."""
        result = self.compute()
        rows = [[name, fmt_value(v)] for name, v in result["per_class_IoU"].items()]
        rows += [[key, fmt_value(result[key])] for key in ("mIoU", "mAcc", "pixel_acc")]
        return format_rows(["class", "IoU"], rows)
