"""Classification metrics: top-k accuracy and a confusion matrix, exact under torch.distributed, and its PNG.

Example:
    >>> metric = ClassificationMetric(num_classes=4, topk=(1, 5), class_names=["a", "b", "c", "d"])
    >>> metric.update(logits, labels)           # every batch, on every rank
    >>> metric.reduce()                         # sums the counts over ranks
    >>> metric.compute()["top1"]
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from se_plugins.engine.distributed import all_reduce_sum


class ClassificationMetric:
    """Top-k accuracies and an int64 confusion matrix (rows: true class, columns: predicted class).

    Args:
        num_classes: Number of classes K (labels 0..K-1).
        topk: The k of the top-k accuracies to report (a k above K counts as K: every label is then correct).
        class_names: Names of the K classes (for per-class results); default ``"0".."K-1"``.
    """

    def __init__(self, num_classes: int, topk: Sequence[int] = (1, 5), class_names: Sequence[str] | None = None):
        if num_classes < 1:
            raise ValueError(f"ClassificationMetric: num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"ClassificationMetric: {len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.topk = tuple(int(k) for k in topk)
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.topk_correct = torch.zeros(len(self.topk), dtype=torch.int64)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``logits [N, K]`` (or scores), ``target [N]`` int labels in 0..K-1."""
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"ClassificationMetric: expected logits [N, {self.num_classes}], got {list(logits.shape)}")
        logits, target = logits.detach().float().cpu(), target.detach().cpu().long()
        if target.numel() and (target.min() < 0 or target.max() >= self.num_classes):
            raise ValueError(f"ClassificationMetric: labels must be in 0..{self.num_classes - 1}")
        pred = logits.argmax(1)
        index = target * self.num_classes + pred
        self.confusion += torch.bincount(index, minlength=self.num_classes**2).view(self.num_classes, -1)
        ranked = logits.topk(min(max(self.topk), self.num_classes), dim=1).indices
        hits = ranked == target[:, None]
        for i, k in enumerate(self.topk):
            self.topk_correct[i] += int(hits[:, :k].any(1).sum())

    def reduce(self) -> None:
        """Sum the counts over all ranks (call on every rank; a no-op in a single process)."""
        packed = torch.cat([self.confusion.flatten(), self.topk_correct])
        packed = all_reduce_sum(packed)
        self.confusion = packed[: self.num_classes**2].view(self.num_classes, self.num_classes).clone()
        self.topk_correct = packed[self.num_classes**2 :].clone()

    def compute(self) -> dict[str, Any]:
        """``top<k>`` per k, ``mean_class_acc`` (classes with samples), ``per_class_acc``, ``count``, ``confusion``."""
        count = int(self.confusion.sum())
        out: dict[str, Any] = {
            f"top{k}": float(c) / max(count, 1) for k, c in zip(self.topk, self.topk_correct.tolist(), strict=True)
        }
        support = self.confusion.sum(1)
        correct = self.confusion.diag()
        per_class = {
            name: float(correct[i]) / float(support[i]) for i, name in enumerate(self.class_names) if support[i] > 0
        }
        out["mean_class_acc"] = sum(per_class.values()) / len(per_class) if per_class else 0.0
        out["per_class_acc"] = per_class
        out["count"] = count
        out["confusion"] = self.confusion.clone()
        return out


def save_confusion_matrix_png(
    confusion: torch.Tensor,
    class_names: Sequence[str],
    path: str | os.PathLike,
    title: str = "confusion matrix",
    max_labels: int = 40,
) -> Path:
    """Draw a confusion matrix (rows true, columns predicted; colour = row-normalised share) as PNG, atomically.

    Cells show the counts when there are at most 20 classes; tick labels are drawn up to ``max_labels`` classes.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from se_plugins.atomic import atomic_write_bytes

    counts = confusion.to(torch.float64)
    share = counts / counts.sum(1, keepdim=True).clamp(min=1)
    k = counts.shape[0]
    side = min(12.0, 2.5 + 0.45 * k)
    fig = Figure(figsize=(side + 1.2, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    im = ax.imshow(share.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if k <= max_labels:
        ax.set_xticks(range(k), list(class_names), rotation=90 if k > 6 else 0)
        ax.set_yticks(range(k), list(class_names))
    if k <= 20:
        for r in range(k):
            for c in range(k):
                colour = "white" if share[r, c] > 0.5 else "black"
                ax.text(c, r, str(int(counts[r, c])), ha="center", va="center", color=colour, fontsize=8)
    accuracy = float(counts.diag().sum() / counts.sum().clamp(min=1))
    ax.set(xlabel="predicted", ylabel="true", title=f"{title} (accuracy {accuracy:.3f}, {int(counts.sum())} images)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return atomic_write_bytes(Path(path), buffer.getvalue())
