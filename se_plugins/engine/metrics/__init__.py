"""Evaluation metrics: COCO mAP (pycocotools / faster-coco-eval), VOC mAP, segmentation mIoU, top-k accuracy.

The public names are re-exported by :mod:`se_plugins.engine.evaluation`.
"""

from .classification import ClassificationMetric, save_confusion_matrix_png
from .coco import (
    COCO_BACKENDS,
    COCO_STAT_NAMES,
    CocoEvaluator,
    coco_backend,
    detections_to_coco_results,
    evaluate_coco_files,
    format_coco_stats,
    masks_to_rle,
)
from .segmentation import SegmentationMetric
from .voc import VOCEvaluator, voc_ap

__all__ = [
    "COCO_BACKENDS",
    "COCO_STAT_NAMES",
    "ClassificationMetric",
    "CocoEvaluator",
    "SegmentationMetric",
    "VOCEvaluator",
    "coco_backend",
    "detections_to_coco_results",
    "evaluate_coco_files",
    "format_coco_stats",
    "save_confusion_matrix_png",
    "masks_to_rle",
    "voc_ap",
]
