"""Evaluation metrics: COCO mAP (pycocotools / faster-coco-eval), VOC mAP and segmentation mIoU.

The public names are re-exported by :mod:`se_plugins.engine.evaluation`.
"""

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
    "CocoEvaluator",
    "SegmentationMetric",
    "VOCEvaluator",
    "coco_backend",
    "detections_to_coco_results",
    "evaluate_coco_files",
    "format_coco_stats",
    "masks_to_rle",
    "voc_ap",
]
