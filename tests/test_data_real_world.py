"""What real exports hold: VOC <filename> and other image extensions, 0-based VOC boxes, a COCO background
category, COCO annotation ids from 0, `data.classes: auto` in YAML, warnings that name files and ids."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from se_plugins.data import CocoDetection, CocoSegmentation, VOCDetection
from se_plugins.engine.config import config_classes, load_config
from se_plugins.engine.evaluation import CocoEvaluator
from se_plugins.engine.tasks.detection import DetectionTask
from se_plugins.engine.tasks.segmentation import SegmentationTask
from se_plugins.errors import ConfigError, DataError

# ------------------------------------------------------------------------------------------------------ VOC


def voc_xml(filename: str | None, objects: list[tuple[str, tuple[float, float, float, float]]], size=(30, 40)) -> str:
    h, w = size
    parts = ["<annotation>"]
    if filename is not None:
        parts.append(f"<filename>{filename}</filename>")
    parts.append(f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>")
    for name, (x1, y1, x2, y2) in objects:
        parts.append(
            f"<object><name>{name}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def write_voc(root: Path, items: dict[str, tuple[str, str | None]], split: str = "train", size=(30, 40)) -> Path:
    """items: image id -> (xml text, image file name in JPEGImages or None for no image)."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, (xml, image_name) in items.items():
        (root / "Annotations" / f"{image_id}.xml").write_text(xml)
        if image_name:
            Image.new("RGB", (size[1], size[0]), (10, 20, 30)).save(root / "JPEGImages" / image_name)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(items) + "\n")
    return root


def test_voc_honours_filename_and_other_extensions(tmp_path):
    box = [("dog", (1, 1, 10, 5))]
    root = write_voc(
        tmp_path,
        {
            "a": (voc_xml("a.png", box), "a.png"),  # PNG named by <filename>
            "b": (voc_xml(r"C:\exports\b_scan.tif", box), "b_scan.tif"),  # a Windows path: its last part counts
            "c": (voc_xml("c.jpg", box), "c.TIFF"),  # stale <filename>: <id> with another extension is found
            "d": (voc_xml(None, box), "d.bmp"),  # no <filename>
        },
    )
    ds = VOCDetection(root, "train", classes=["dog"])
    assert [ds.image_path(i).name for i in range(4)] == ["a.png", "b_scan.tif", "c.TIFF", "d.bmp"]
    for i in range(4):
        image, target = ds[i]
        assert image.shape == (3, 30, 40) and target["boxes"].tolist() == [[0, 0, 10, 5]]
    gt = ds.coco_ground_truth()
    assert [gt.imgs[i]["file_name"] for i in (1, 2, 3, 4)] == ["a.png", "b_scan.tif", "c.TIFF", "d.bmp"]


def test_voc_filename_pointing_nowhere_is_one_clear_line(tmp_path):
    root = write_voc(tmp_path, {"a": (voc_xml("frame_0001.png", [("dog", (1, 1, 10, 5))]), None)})
    with pytest.raises(DataError) as err:
        VOCDetection(root, "train", classes=["dog"])
    jpeg = root / "JPEGImages"
    assert str(err.value) == (
        f"{root / 'Annotations' / 'a.xml'} (split 'train'): image not found: {jpeg / 'frame_0001.png'} "
        f"(its <filename>) does not exist, and no {jpeg / 'a'}.{{jpg/jpeg/png/tif/tiff/bmp/webp}} exists"
    )


def test_voc_zero_based_option(tmp_path):
    # A CVAT/labelImg-style file: 0-based pixel edges, floats. The box covers columns 0..9.5, rows 2..7.
    root = write_voc(tmp_path, {"a": (voc_xml("a.jpg", [("dog", (0.0, 2.0, 9.5, 7.0))]), "a.jpg")})
    one = VOCDetection(root, "train", classes=["dog"])  # default: the VOC devkit's 1-based rule
    zero = VOCDetection(root, "train", classes=["dog"], coordinates="0-based")
    assert one[0][1]["boxes"].tolist() == [[0.0, 1.0, 9.5, 7.0]]  # xmin - 1 = -1 clipped to 0: 1 px too large
    assert zero[0][1]["boxes"].tolist() == [[0.0, 2.0, 9.5, 7.0]]
    assert zero.coco_ground_truth().anns[1]["bbox"] == [0.0, 2.0, 9.5, 5.0]
    with pytest.raises(ValueError, match="coordinates must be one of 1-based, 0-based, got 'zero'"):
        VOCDetection(root, "train", classes=["dog"], coordinates="zero")


def _task_cfg(tmp_path: Path, yaml_text: str, *overrides: str):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml_text)
    return load_config(path, [f"output_dir={tmp_path / 'run'}", *overrides])


def test_voc_zero_based_and_classes_auto_from_yaml(tmp_path):
    root = write_voc(
        tmp_path / "voc",
        {"t1": (voc_xml("t1.jpg", [("dog", (0, 2, 9, 7))]), "t1.jpg"), "t2": (voc_xml("t2.jpg", []), "t2.jpg")},
    )
    (root / "Annotations" / "t2.xml").write_text(voc_xml("t2.jpg", [("cat", (3, 3, 8, 8))]))
    (root / "ImageSets" / "Main" / "val.txt").write_text("t1\n")  # val holds dogs only
    cfg = _task_cfg(
        tmp_path,
        f"task: detection\ndata: {{format: voc, root: {root}, classes: auto, voc_coordinates: 0-based}}\n",
    )
    assert config_classes(cfg.data) == "auto"
    train, val = DetectionTask(cfg).build_datasets()
    assert train.class_names == val.class_names == ["cat", "dog"]  # val's labels follow the training split's
    assert val[0][1]["labels"].tolist() == [2] and val[0][1]["boxes"].tolist() == [[0, 2, 9, 7]]
    with pytest.raises(ConfigError, match=r"data.voc_coordinates: '0' is not one of 1-based, 0-based"):
        _task_cfg(tmp_path, "task: detection\n", "data.voc_coordinates=0")


def test_classes_auto_for_voc_segmentation_is_a_clear_error(tmp_path):
    cfg = _task_cfg(tmp_path, f"task: segmentation\ndata: {{format: voc, root: {tmp_path}, classes: auto}}\n")
    with pytest.raises(ConfigError) as err:
        SegmentationTask(cfg).build_datasets()
    assert str(err.value) == (
        "data.classes: 'auto' cannot be read from VOC mask PNGs (they hold indices, not names); "
        "list the names, background first, or use null for the 21 VOC classes"
    )


def test_voc_degenerate_warning_names_the_objects(tmp_path):
    root = write_voc(
        tmp_path,
        {"a": (voc_xml("a.jpg", [("dog", (1, 1, 10, 5)), ("dog", (6, 5, 5, 9)), ("dog", (8, 9, 3, 12))]), "a.jpg")},
    )
    with pytest.warns(UserWarning) as record:
        ds = VOCDetection(root, "train", classes=["dog"])
    assert [str(w.message) for w in record] == [
        f"{root / 'Annotations'} (split 'train'): dropped 2 degenerate boxes (under 1 px wide or high after "
        "clipping; <image id>#<object>: a#1, a#2)"
    ]
    assert ds.dropped == {"degenerate_boxes": ["a#1", "a#2"]}


# ----------------------------------------------------------------------------------------------------- COCO


def write_coco(root: Path, annotations: list[dict], categories: list[dict], n_images: int = 2, size=(20, 30)) -> Path:
    h, w = size
    images = [{"id": i, "file_name": f"im{i}.png", "height": h, "width": w} for i in range(1, n_images + 1)]
    (root / "img").mkdir(parents=True, exist_ok=True)
    for img in images:
        Image.new("RGB", (w, h), (50, 60, 70)).save(root / "img" / img["file_name"])
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann_file


def _box(ann_id, image_id, cat, bbox, **extra):
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": bbox, "area": bbox[2] * bbox[3], **extra}


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


LABELME_CATEGORIES = [
    {"id": 0, "name": "_background_", "supercategory": None},
    {"id": 1, "name": "cat", "supercategory": None},
    {"id": 2, "name": "dog", "supercategory": None},
]


def test_coco_background_category_is_not_a_class(tmp_path, caplog):
    anns = [_box(1, 1, 0, [0, 0, 30, 20]), _box(2, 1, 1, [2, 2, 10, 8]), _box(3, 2, 2, [5, 5, 10, 10])]
    ann_file = write_coco(tmp_path, anns, LABELME_CATEGORIES)
    with caplog.at_level(logging.INFO, logger="se_plugins.data"):
        ds = CocoDetection(tmp_path / "img", ann_file)
    assert caplog.messages == [
        f"{ann_file}: category 0 '_background_' is the background: not a class (1 annotations of it ignored; "
        "data.keep_background_category: true keeps it)",
        f"{ann_file}: left the background category out of evaluation (1 annotations)",
    ]
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 3 and ds.label_to_cat_id == {1: 1, 2: 2}
    assert ds[0][1]["labels"].tolist() == [1] and ds[1][1]["labels"].tolist() == [2]  # not shifted by one
    gt = ds.coco_ground_truth()
    assert sorted(gt.cats) == [1, 2] and sorted(gt.anns) == [2, 3]
    kept = CocoDetection(tmp_path / "img", ann_file, keep_background_category=True)
    assert kept.class_names == ["_background_", "cat", "dog"] and kept.num_classes == 4
    assert sorted(kept.coco_ground_truth().cats) == [0, 1, 2] and sorted(kept.coco_ground_truth().anns) == [1, 2, 3]


def test_coco_background_category_in_semantic_masks(tmp_path):
    cat = np.zeros((20, 30), bool)
    cat[2:6, 3:9] = True
    anns = [
        {**_box(1, 1, 0, [0, 0, 30, 20]), "segmentation": _rle(np.ones((20, 30), bool))},
        {**_box(2, 1, 1, [3, 2, 6, 4]), "segmentation": _rle(cat)},
    ]
    ann_file = write_coco(tmp_path, anns, LABELME_CATEGORIES, n_images=1)
    ds = CocoSegmentation(tmp_path / "img", ann_file)
    assert ds.class_names == ["background", "cat", "dog"]
    _, mask = ds[0]
    expected = torch.zeros(20, 30, dtype=torch.int64)
    expected[2:6, 3:9] = 1  # cat is class 1, not 2; the background annotation paints nothing
    assert torch.equal(mask.as_subclass(torch.Tensor), expected)


def test_coco_background_switch_in_config(tmp_path):
    ann_file = write_coco(tmp_path, [_box(1, 1, 1, [2, 2, 10, 8])], LABELME_CATEGORIES)
    yaml_text = (
        f"task: detection\ndata: {{format: coco, train_images: {tmp_path / 'img'}, train_annotations: {ann_file}, "
        f"val_images: {tmp_path / 'img'}, val_annotations: {ann_file}}}\n"
    )
    assert DetectionTask(_task_cfg(tmp_path, yaml_text)).build_val_dataset().class_names == ["cat", "dog"]
    cfg = _task_cfg(tmp_path, yaml_text, "data.keep_background_category=true")
    assert DetectionTask(cfg).build_val_dataset().class_names == ["_background_", "cat", "dog"]


def _pycocotools_stats(gt: dict, results: list[dict]) -> list[float]:
    coco = COCO()
    coco.dataset = json.loads(json.dumps(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats]


def test_coco_annotation_ids_from_zero_are_renumbered_for_evaluation(tmp_path, caplog):
    boxes = [[2, 2, 10, 8], [12, 3, 9, 9], [4, 10, 20, 8]]
    anns = [_box(k, 1 + k % 2, 1, b) for k, b in enumerate(boxes)]  # ids 0, 1, 2 (a common export)
    anns[1].pop("area")  # and one without area
    ann_file = write_coco(tmp_path, anns, [{"id": 1, "name": "thing"}])
    with caplog.at_level(logging.INFO, logger="se_plugins.data"):
        ds = CocoDetection(tmp_path / "img", ann_file)
    assert ds.eval_notes == [
        "annotation ids must be positive integers for COCOeval, which reads id 0 as 'unmatched' (first: 0): "
        "evaluating with the annotations renumbered 1..3 (the file is unchanged)",
        "1 annotations have no area (ids 1): evaluating with w*h",
    ]
    assert caplog.messages == [f"{ann_file}: {note}" for note in ds.eval_notes]
    gt = ds.coco_ground_truth()
    assert sorted(gt.anns) == [1, 2, 3] and gt.anns[2]["area"] == 81.0
    assert sorted(ds.coco.anns) == [0, 1, 2]  # the reader's own view is the file's
    # Detections: two exact, one shifted by 3 px, one false positive.
    results = [
        {"image_id": a["image_id"], "category_id": 1, "bbox": list(a["bbox"]), "score": 0.9 - 0.1 * k}
        for k, a in enumerate(anns)
    ]
    results[2]["bbox"][0] += 3
    results.append({"image_id": 2, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.95})
    evaluator = CocoEvaluator(gt, backend="pycocotools")
    evaluator.update(results, image_ids=[1, 2])
    stats = evaluator.summarize()
    cleaned = dict(json.loads(ann_file.read_text()))
    cleaned["annotations"] = [{**a, "id": a["id"] + 1, "area": a["bbox"][2] * a["bbox"][3], "iscrowd": 0} for a in anns]
    assert [stats[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")] == _pycocotools_stats(cleaned, results)[:6]
    assert stats["AP50"] > 0.5
    with pytest.raises(DataError, match="ground truth has an annotation with id 0"):
        CocoEvaluator(ds.coco)  # the raw file, as before


def test_coco_warnings_name_the_file_and_ids(tmp_path):
    anns = [
        _box(7, 1, 1, [2, 2, 10, 8]),
        _box(8, 1, 1, [3, 3, 0.4, 9]),
        _box(9, 1, 1, [3, 3, 9, 0]),
        _box(10, 1, 1, [100, 100, 5, 5]),
    ]
    ann_file = write_coco(tmp_path, anns, [{"id": 1, "name": "thing"}], n_images=3)
    (tmp_path / "img" / "im3.png").unlink()
    with pytest.warns(UserWarning) as record:
        CocoDetection(tmp_path / "img", ann_file, keep_empty=False, skip_bad_images=True)
    assert [str(w.message) for w in record] == [
        f"{ann_file}: dropped 2 degenerate boxes (under 1 px wide or high after clipping; annotation ids 8, 9); "
        "dropped 1 boxes lying entirely outside their image (annotation ids 10); skipped 1 missing or unreadable "
        f"images (image ids 3; first: {tmp_path / 'img' / 'im3.png'}: cannot read image (file not found)); "
        "dropped 1 images without boxes (keep_empty=False; image ids 2)"
    ]


def test_coco_decode_failure_warning_names_the_image(tmp_path):
    ann_file = write_coco(
        tmp_path, [_box(1, 1, 1, [2, 2, 10, 8]), _box(2, 2, 1, [2, 2, 10, 8])], [{"id": 1, "name": "a"}]
    )
    noise = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    (tmp_path / "img" / "im1.png").write_bytes(buffer.getvalue()[:400])  # the header reads, the pixels do not
    ds = CocoDetection(tmp_path / "img", ann_file, skip_bad_images=True)
    assert ds.ids == [1, 2]  # the header check at build time passes
    with pytest.warns(UserWarning) as record:
        _, target = ds[0]
    assert target["image_id"] == 2
    message = str(record[0].message)
    assert message.startswith(f"{ann_file}: image id 1 failed to decode ({tmp_path / 'img' / 'im1.png'}: cannot read")
    assert message.endswith("; using the next one (warned once; se-plugins check-data lists them all)")
