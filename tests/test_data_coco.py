"""COCO readers: category mapping, crowd/degenerate/outside boxes, empty images, masks, bad input."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from se_plugins.data import CocoDetection, CocoSegmentation, make_shapes
from se_plugins.errors import DataError

CATEGORIES = [{"id": 11, "name": "gamma"}, {"id": 2, "name": "alpha"}, {"id": 7, "name": "beta"}]


def _ann(ann_id, image_id, cat, bbox, **extra):
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": bbox, "area": 1.0, **extra}


def _write(root: Path, annotations, images=None, categories=CATEGORIES, size=(30, 40)) -> Path:
    """Write a COCO JSON plus one PNG per image (height, width = size) under root."""
    h, w = size
    images = images or [{"id": i, "file_name": f"im{i}.png", "height": h, "width": w} for i in (1, 2, 3)]
    (root / "img").mkdir(exist_ok=True)
    for img in images:
        Image.new("RGB", (img["width"], img["height"]), (img["id"] * 40, 0, 0)).save(
            root / "img" / img["file_name"]
        )
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann_file


BASIC = [
    _ann(1, 1, 7, [5, 5, 10, 8], area=80.0),
    _ann(2, 1, 2, [0, 0, 20, 20], iscrowd=1),  # crowd: evaluation only
    _ann(3, 1, 11, [3, 3, 0.5, 10]),  # degenerate (0.5 px wide)
    _ann(4, 1, 11, [35, 20, 10, 15], area=50.0),  # overflows right/bottom: clipped to [35, 20, 40, 30]
    _ann(5, 2, 2, [10, 10, 10, 0]),  # degenerate: image 2 ends up without boxes
    _ann(6, 1, 2, [-2, 28, 6, 9], area=12.0),  # overflows left/bottom: clipped to [0, 28, 4, 30]
]


@pytest.fixture()
def basic(tmp_path):
    return tmp_path, _write(tmp_path, BASIC)


def test_category_mapping_roundtrip(basic):
    root, ann_file = basic
    with pytest.warns(UserWarning, match="dropped 2 degenerate boxes"):
        ds = CocoDetection(root / "img", ann_file)
    assert ds.class_names == ["alpha", "beta", "gamma"]  # sorted by category id 2, 7, 11
    assert ds.label_to_cat_id == {1: 2, 2: 7, 3: 11}
    assert ds.cat_id_to_label == {2: 1, 7: 2, 11: 3}
    assert all(ds.cat_id_to_label[ds.label_to_cat_id[label]] == label for label in (1, 2, 3))
    assert ds.num_classes == 4


def test_targets_crowd_degenerate_clipping(basic):
    root, ann_file = basic
    with pytest.warns(UserWarning) as record:
        ds = CocoDetection(root / "img", ann_file)
    assert len([w for w in record if "degenerate" in str(w.message)]) == 1  # one warning, counting
    assert ds.ids == [1, 2, 3]  # empty images kept as negatives
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 30, 40)
    assert torch.allclose(image[0], torch.full((30, 40), 40 / 255))
    assert target["boxes"].format.value == "XYXY" and target["boxes"].canvas_size == (30, 40)
    assert target["boxes"].tolist() == [[5, 5, 15, 13], [35, 20, 40, 30], [0, 28, 4, 30]]
    assert target["labels"].tolist() == [2, 3, 1] and target["labels"].dtype == torch.int64
    assert target["area"].tolist() == [80.0, 50.0, 12.0] and target["area"].dtype == torch.float32
    assert target["iscrowd"].tolist() == [0, 0, 0] and target["image_id"] == 1
    # the crowd annotation is not a training box but is in the ground truth used for evaluation; the box of
    # height 0 (annotation 5) can never be matched, so it is left out of evaluation too
    gt = ds.coco_ground_truth()
    assert gt.anns[2]["iscrowd"] == 1 and sorted(gt.anns) == [1, 2, 3, 4, 6]
    assert sorted(ds.coco.anns) == [1, 2, 3, 4, 5, 6]
    assert ds.eval_notes == ["left 1 boxes of zero or negative width/height out of evaluation (annotation ids 5)"]
    for idx in (1, 2):
        _, empty = ds[idx]
        assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)


def test_keep_empty_false_drops_negatives(basic):
    root, ann_file = basic
    with pytest.warns(UserWarning, match="dropped 2 images without boxes"):
        ds = CocoDetection(root / "img", ann_file, keep_empty=False)
    assert ds.ids == [1] and len(ds) == 1


def test_height_width_and_aspect_ratios(tmp_path):
    images = [
        {"id": 5, "file_name": "a.png", "height": 20, "width": 40},
        {"id": 3, "file_name": "b.png", "height": 30, "width": 15},
    ]
    ds = CocoDetection(tmp_path / "img", _write(tmp_path, [], images=images))
    assert ds.ids == [3, 5]
    assert ds.get_height_and_width(0) == (30, 15)
    assert ds.aspect_ratios() == [0.5, 2.0]


def test_box_outside_image_raises_naming_files(tmp_path):
    ann_file = _write(tmp_path, [_ann(9, 2, 7, [50, 5, 10, 10])])  # image is 40 px wide
    with pytest.raises(DataError) as err:
        CocoDetection(tmp_path / "img", ann_file)
    msg = str(err.value)
    assert str(ann_file) in msg and str(tmp_path / "img" / "im2.png") in msg and "annotation 9" in msg
    with pytest.warns(UserWarning, match="1 boxes lying entirely outside"):
        ds = CocoDetection(tmp_path / "img", ann_file, skip_bad_images=True)
    assert len(ds[1][1]["boxes"]) == 0


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "malformed JSON"),
        ('{"images": [], "annotations": []}', "'categories'"),
        ('{"images": [{"id": 1}], "annotations": [], "categories": [{"id": 1, "name": "a"}]}', "'file_name'"),
        (
            json.dumps(
                {
                    "images": [{"id": 1, "file_name": "x.png", "height": 5, "width": 5}],
                    "annotations": [_ann(4, 1, 99, [0, 0, 2, 2])],
                    "categories": CATEGORIES,
                }
            ),
            "annotation 4 has unknown category_id 99",
        ),
        (
            json.dumps(
                {
                    "images": [{"id": 1, "file_name": "x.png", "height": 5, "width": 5}],
                    "annotations": [_ann(4, 1, 2, [0, 0, 2])],
                    "categories": CATEGORIES,
                }
            ),
            "malformed bbox",
        ),
    ],
)
def test_bad_annotation_files(tmp_path, content, expected):
    ann_file = tmp_path / "bad.json"
    ann_file.write_text(content)
    for cls in (CocoDetection, CocoSegmentation):
        with pytest.raises(DataError, match=expected) as err:
            cls(tmp_path, ann_file)
        assert str(ann_file) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="not found"):
        CocoDetection(tmp_path, tmp_path / "missing.json")


def test_missing_and_corrupt_images(basic):
    root, ann_file = basic
    (root / "img" / "im2.png").unlink()
    (root / "img" / "im3.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = CocoDetection(root / "img", ann_file)
    with pytest.raises(DataError, match="cannot read image") as err:
        ds[1]
    assert str(err.value).startswith(str(root / "img" / "im2.png"))
    with pytest.raises(DataError, match="cannot read image") as err:
        ds[2]
    assert str(root / "img" / "im3.png") in str(err.value) and "\n" not in str(err.value)
    with pytest.warns(UserWarning, match="skipped 2 missing or unreadable images"):
        ds = CocoDetection(root / "img", ann_file, skip_bad_images=True)
    assert ds.ids == [1]


def test_image_size_mismatch(tmp_path):
    ann_file = _write(tmp_path, [])
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "im1.png")
    ds = CocoDetection(tmp_path / "img", ann_file)
    with pytest.raises(DataError, match=r"image is 8x8 but .* says 40x30"):
        ds[0]


def test_mapping_roundtrip_through_cocoeval(tmp_path):
    """Targets mapped back through label_to_cat_id give AP = 1 against the file's ground truth."""
    paths = make_shapes(tmp_path, num_train=3, num_val=0, image_size=96, seed=1)
    ds = CocoDetection(paths.coco_train_images, paths.coco_train_ann)
    results = []
    for i in range(len(ds)):
        _, t = ds[i]
        for (x1, y1, x2, y2), label in zip(t["boxes"].tolist(), t["labels"].tolist(), strict=True):
            cat = ds.label_to_cat_id[label]
            results.append(
                {
                    "image_id": t["image_id"],
                    "category_id": cat,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": 1.0,
                }
            )
    assert {r["category_id"] for r in results} <= {1, 3, 5, 7}
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(ds.coco, ds.coco.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------ segmentation


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


@pytest.fixture()
def seg(tmp_path):
    h, w = 20, 24
    rle_region = np.zeros((h, w), bool)
    rle_region[10:15, 10:15] = True
    crowd_region = np.zeros((h, w), bool)
    crowd_region[0:4, 12:24] = True
    anns = [
        _ann(1, 1, 7, [2, 2, 6, 6], segmentation=[[2, 2, 8, 2, 8, 8, 2, 8]]),  # beta: rows/cols 2..7
        _ann(2, 1, 11, [10, 10, 5, 5], segmentation=_rle(rle_region)),  # gamma as RLE
        _ann(3, 1, 2, [12, 0, 12, 4], segmentation=_rle(crowd_region), iscrowd=1),  # crowd -> 255
        _ann(4, 1, 2, [6, 16, 4, 2], segmentation=[[6, 16, 10, 16, 10, 18, 6, 18]]),  # alpha
        _ann(5, 1, 11, [6, 6, 4, 4], segmentation=[[6, 6, 10, 6, 10, 10, 6, 10]]),  # overlaps beta
    ]
    images = [{"id": 1, "file_name": "s.png", "height": h, "width": w}]
    return tmp_path, _write(tmp_path, anns, images=images)


def test_segmentation_masks(seg):
    root, ann_file = seg
    ds = CocoSegmentation(root / "img", ann_file)
    assert ds.class_names == ["background", "alpha", "beta", "gamma"] and ds.num_classes == 4
    image, mask = ds[0]
    assert image.shape == (3, 20, 24) and mask.dtype == torch.int64 and mask.shape == (20, 24)
    expected = np.zeros((20, 24), np.int64)
    expected[2:8, 2:8] = 2  # beta polygon
    expected[10:15, 10:15] = 3  # gamma RLE
    expected[16:18, 6:10] = 1  # alpha polygon
    expected[6:10, 6:10] = 3  # gamma polygon ...
    expected[6:8, 6:8] = 255  # ... where it overlaps beta: ambiguous -> ignore
    expected[0:4, 12:24] = 255  # crowd
    assert np.array_equal(mask.numpy(), expected)


def test_segmentation_class_subset(seg):
    root, ann_file = seg
    ds = CocoSegmentation(root / "img", ann_file, classes=["gamma", "alpha"])
    assert ds.class_names == ["background", "gamma", "alpha"]
    _, mask = ds[0]
    assert sorted(np.unique(mask.numpy()).tolist()) == [0, 1, 2, 255]
    assert (mask[2:6, 2:6] == 0).all()  # beta is not a class here: background
    assert (mask[0:4, 12:24] == 255).all()  # crowd of alpha
    with pytest.raises(DataError, match=r"no category named \['delta'\]"):
        CocoSegmentation(root / "img", ann_file, classes=["delta"])


def test_segmentation_requires_segmentation(tmp_path):
    ann_file = _write(tmp_path, [_ann(1, 1, 2, [0, 0, 2, 2])])
    with pytest.raises(DataError, match="annotation 1 has no valid 'segmentation'") as err:
        CocoSegmentation(tmp_path / "img", ann_file)
    assert str(ann_file) in str(err.value)


def test_segmentation_from_shapes_matches_voc_png(tmp_path):
    paths = make_shapes(tmp_path, num_train=2, num_val=0, image_size=64, seed=5)
    ds = CocoSegmentation(paths.coco_train_images, paths.coco_train_ann)
    for i in range(len(ds)):
        _, mask = ds[i]
        png = np.array(Image.open(paths.voc_root / "SegmentationClass" / f"train_{i + 1:06d}.png"))
        known = png != 255
        assert np.array_equal(mask.numpy()[known], png[known])
