"""Data: COCO and VOC readers, v2 transform presets, aspect-ratio batching, the built-in shapes data set.

Detection samples are ``(image, target)`` (torchvision's detection convention, ``BoundingBoxes`` XYXY,
labels 1..K); segmentation samples are ``(image, mask)`` (int64 ``Mask``, 255 = ignore).
"""

from se_plugins.data.coco import CocoDetection, CocoSegmentation, load_coco
from se_plugins.data.decode import ALPHA_POLICIES, ImageReader
from se_plugins.data.intensity import IntensityRule
from se_plugins.data.sampler import GroupedBatchSampler, create_aspect_ratio_groups, detection_collate
from se_plugins.data.shapes import (
    SHAPE_CATEGORY_IDS,
    SHAPE_CLASSES,
    ShapesPaths,
    add_make_shapes_args,
    make_shapes,
    mask_to_polygons,
    run_make_shapes,
)
from se_plugins.data.transforms import PadToMultiple, detection_transforms, segmentation_transforms
from se_plugins.data.voc import (
    IGNORE_INDEX,
    VOC_CLASSES,
    VOC_SEG_CLASSES,
    VOCDetection,
    VOCSegmentation,
    parse_voc_xml,
    voc_palette,
)

__all__ = [
    "ALPHA_POLICIES",
    "IGNORE_INDEX",
    "SHAPE_CATEGORY_IDS",
    "SHAPE_CLASSES",
    "VOC_CLASSES",
    "VOC_SEG_CLASSES",
    "CocoDetection",
    "CocoSegmentation",
    "GroupedBatchSampler",
    "ImageReader",
    "IntensityRule",
    "PadToMultiple",
    "ShapesPaths",
    "VOCDetection",
    "VOCSegmentation",
    "add_make_shapes_args",
    "create_aspect_ratio_groups",
    "detection_collate",
    "detection_transforms",
    "load_coco",
    "make_shapes",
    "mask_to_polygons",
    "parse_voc_xml",
    "run_make_shapes",
    "segmentation_transforms",
    "voc_palette",
]
