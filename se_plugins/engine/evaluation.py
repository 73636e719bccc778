"""Evaluation: COCO box mAP, PASCAL VOC mAP and segmentation mIoU, all exact under torch.distributed.

- :class:`CocoEvaluator`: pycocotools ``COCOeval`` (faster-coco-eval when installed, same numbers) over the
  images seen; :func:`detections_to_coco_results` turns torchvision outputs into COCO results;
  :func:`evaluate_coco_files` backs ``se-plugins eval-results``.
- :class:`VOCEvaluator` and :func:`voc_ap`: py-faster-rcnn's ``voc_eval`` (07 11-point or area AP),
  difficult boxes ignored.
- :class:`SegmentationMetric`: mIoU / pixel accuracy / mean accuracy from an int64 confusion matrix.

Each evaluator is filled with ``update(...)`` on every rank, merged with ``synchronize()`` (``reduce()`` for
the confusion matrix) on every rank, then read with ``summarize()`` / ``compute()`` and printed with
``format_table()``. The implementation lives in :mod:`se_plugins.engine.metrics`.
"""

from se_plugins.engine.metrics import *  # noqa: F403  (the public evaluation API)
from se_plugins.engine.metrics import __all__  # noqa: F401
