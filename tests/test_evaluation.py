"""Evaluation metrics against pycocotools and against numbers computed by hand (in the comments)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import random

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from se_plugins.engine.evaluation import (
    COCO_STAT_NAMES,
    CocoEvaluator,
    SegmentationMetric,
    VOCEvaluator,
    coco_backend,
    detections_to_coco_results,
    evaluate_coco_files,
    format_coco_stats,
    voc_ap,
)
from se_plugins.errors import DataError

try:
    import faster_coco_eval  # noqa: F401

    HAS_FASTER = True
except ImportError:
    HAS_FASTER = False

needs_faster = pytest.mark.skipif(not HAS_FASTER, reason="faster-coco-eval is not installed")


# ============================================================================================== COCO data
def coco_gt() -> dict:
    """3 images, non-contiguous category ids 2/5/9, small/medium/large boxes and one crowd box."""
    images = [{"id": i, "width": 200, "height": 200, "file_name": f"{i}.jpg"} for i in (1, 2, 3)]
    categories = [{"id": 2, "name": "cat"}, {"id": 5, "name": "dog"}, {"id": 9, "name": "bird"}]
    boxes = [  # image_id, category_id, [x, y, w, h], iscrowd
        (1, 2, [10, 10, 20, 20], 0),  # small (400 px)
        (1, 5, [50, 50, 60, 60], 0),  # medium (3600)
        (2, 2, [0, 0, 120, 120], 0),  # large (14400)
        (2, 9, [100, 100, 80, 80], 1),  # crowd
        (2, 9, [20, 20, 40, 40], 0),  # medium
        (3, 5, [30, 30, 100, 50], 0),  # medium (5000)
        (3, 2, [150, 150, 30, 30], 0),  # small (900)
    ]
    annotations = [
        {"id": k, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": crowd}
        for k, (i, c, b, crowd) in enumerate(boxes, start=1)
    ]
    return {"images": images, "categories": categories, "annotations": annotations}


def coco_dets() -> list[dict]:
    dets = [  # image_id, category_id, bbox, score
        (1, 2, [11, 11, 19, 19], 0.9),
        (1, 2, [60, 60, 20, 20], 0.4),  # false positive
        (1, 5, [52, 48, 58, 62], 0.8),
        (1, 9, [10, 10, 20, 20], 0.3),  # no bird in image 1
        (2, 2, [5, 5, 110, 115], 0.95),
        (2, 9, [110, 110, 60, 60], 0.7),  # on the crowd box: ignored
        (2, 9, [22, 18, 40, 44], 0.6),
        (2, 9, [0, 0, 5, 5], 0.2),
        (3, 5, [30, 30, 100, 50], 0.99),
        (3, 5, [35, 28, 95, 55], 0.5),  # duplicate
        (3, 2, [148, 152, 30, 28], 0.65),
    ]
    return [{"image_id": i, "category_id": c, "bbox": b, "score": s} for i, c, b, s in dets]


def random_coco(seed: int = 0, n_images: int = 30) -> tuple[dict, list[dict]]:
    """A bigger random GT + noisy detections (score ties included) to compare backends."""
    rng = random.Random(seed)
    images = [{"id": i, "width": 640, "height": 480} for i in range(1, n_images + 1)]
    cats = [{"id": c, "name": f"c{c}"} for c in (3, 7, 11)]
    anns, dets = [], []
    for img in images:
        for _ in range(rng.randint(0, 6)):
            w, h = rng.uniform(5, 300), rng.uniform(5, 300)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            c = rng.choice([3, 7, 11])
            crowd = int(rng.random() < 0.05)
            anns.append(
                {"id": len(anns) + 1, "image_id": img["id"], "category_id": c, "bbox": [x, y, w, h]}
                | {"area": w * h, "iscrowd": crowd}
            )
            for _ in range(rng.randint(0, 3)):
                j = [x + rng.gauss(0, 10), y + rng.gauss(0, 10), abs(w + rng.gauss(0, 10)) + 1, h + 1]
                cat = c if rng.random() < 0.8 else rng.choice([3, 7, 11])
                dets.append(
                    {"image_id": img["id"], "category_id": cat, "bbox": j, "score": round(rng.random(), 2)}
                )
    return {"images": images, "categories": cats, "annotations": anns}, dets


def pycocotools_eval(gt: dict, dets: list[dict], img_ids: list[int] | None = None) -> COCOeval:
    """A direct, plain pycocotools run (the reference)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        coco_eval = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
        if img_ids is not None:
            coco_eval.params.imgIds = img_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def pycocotools_gt(gt: dict) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
    return coco


# ============================================================================================== COCO
def test_coco_evaluator_equals_pycocotools():
    reference = pycocotools_eval(coco_gt(), coco_dets())
    evaluator = CocoEvaluator(pycocotools_gt(coco_gt()), backend="pycocotools")
    evaluator.update(coco_dets()[:5])  # two batches
    evaluator.update(coco_dets()[5:])
    stats = evaluator.summarize()
    assert list(stats) == COCO_STAT_NAMES
    assert list(stats.values()) == [float(v) for v in reference.stats]
    assert 0 < stats["AP"] < 1 and stats["APs"] > 0 and stats["APl"] > 0
    # detectron2's per-category table: precision[:, :, k, area=all, maxDets=100] averaged over valid entries.
    precision = reference.eval["precision"]
    expected = {
        name: float(np.mean(precision[:, :, k, 0, -1][precision[:, :, k, 0, -1] > -1]))
        for k, name in enumerate(["cat", "dog", "bird"])
    }
    assert evaluator.per_class_ap() == expected
    table = format_coco_stats(stats)
    assert table.splitlines()[2].startswith("AP ") and f"{stats['AP']:.4f}" in table


@needs_faster
@pytest.mark.parametrize("dataset", ["hand", "random"])
def test_faster_coco_eval_equals_pycocotools(dataset):
    gt, dets = (coco_gt(), coco_dets()) if dataset == "hand" else random_coco()
    assert coco_backend("auto")[1].__module__.startswith("faster_coco_eval")
    assert coco_backend("pycocotools")[1] is COCOeval
    results = {}
    for backend in ("pycocotools", "faster_coco_eval"):
        evaluator = CocoEvaluator(pycocotools_gt(gt), backend=backend)  # faster: converted from .dataset
        evaluator.update(dets, image_ids=[img["id"] for img in gt["images"]])
        results[backend] = (evaluator.summarize(), evaluator.per_class_ap())
        assert evaluator.backend == backend
    # Equal up to float rounding: pycocotools computes precision as tp / (tp + fp + np.spacing(1)), so a first
    # true positive has precision 1 - 2**-52, while faster-coco-eval's C++ accumulate gives exactly 1.0; the
    # stats differ by a few 1e-16 at most.
    for faster, reference in zip(results["faster_coco_eval"], results["pycocotools"], strict=True):
        assert faster.keys() == reference.keys()
        assert all(abs(faster[k] - reference[k]) <= 1e-12 for k in faster), (faster, reference)
    assert list(results["pycocotools"][0].values()) == [float(v) for v in pycocotools_eval(gt, dets).stats]


@pytest.mark.parametrize("backend", ["pycocotools", pytest.param("faster_coco_eval", marks=needs_faster)])
def test_coco_perfect_detections_give_one(backend):
    gt = coco_gt()
    dets = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt["annotations"]
        if not a["iscrowd"]
    ]
    evaluator = CocoEvaluator(gt, backend=backend)
    evaluator.update(dets)
    # 1.0 up to pycocotools' epsilon in the precision (1 / (1 + 2**-52) for the one bird).
    assert evaluator.summarize() == pytest.approx(dict.fromkeys(COCO_STAT_NAMES, 1.0), abs=1e-12)
    assert evaluator.per_class_ap() == pytest.approx({"cat": 1.0, "dog": 1.0, "bird": 1.0}, abs=1e-12)


@pytest.mark.parametrize("backend", ["pycocotools", pytest.param("faster_coco_eval", marks=needs_faster)])
def test_coco_only_seen_images_and_zero_detections(backend):
    gt = coco_gt()
    evaluator = CocoEvaluator(gt, backend=backend)
    evaluator.update([d for d in coco_dets() if d["image_id"] == 1])
    assert evaluator.image_ids == [1]
    expected = [float(v) for v in pycocotools_eval(gt, coco_dets(), img_ids=[1]).stats]
    if backend == "pycocotools":
        assert list(evaluator.summarize().values()) == expected
    else:  # see test_faster_coco_eval_equals_pycocotools
        assert list(evaluator.summarize().values()) == pytest.approx(expected, abs=1e-12)

    # No detection at all on image 1 (small cat + medium dog): 0 where there is ground truth, -1 where not.
    evaluator = CocoEvaluator(gt, backend=backend)
    evaluator.update([], image_ids=[1])
    stats = evaluator.summarize()
    assert stats == dict.fromkeys(COCO_STAT_NAMES, 0.0) | {"APl": -1.0, "ARl": -1.0}
    assert _nan_equal(
        evaluator.per_class_ap(), {"cat": 0.0, "dog": 0.0, "bird": math.nan}
    )  # no bird in image 1

    with pytest.warns(UserWarning, match="no image was seen"):
        assert CocoEvaluator(gt, backend=backend).summarize() == dict.fromkeys(COCO_STAT_NAMES, -1.0)


@pytest.mark.parametrize("backend", ["pycocotools", pytest.param("faster_coco_eval", marks=needs_faster)])
def test_coco_segm_perfect_masks_give_one(backend):
    from pycocotools import mask as mask_utils

    gt = coco_gt()
    results = []
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
        if not ann["iscrowd"]:
            rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], 200, 200))
            rle["counts"] = rle["counts"].decode()
            results.append(
                {"image_id": ann["image_id"], "category_id": ann["category_id"], "segmentation": rle}
            )
            results[-1]["score"] = 0.9
    evaluator = CocoEvaluator(gt, iou_type="segm", backend=backend)
    evaluator.update(results)
    assert evaluator.summarize() == pytest.approx(dict.fromkeys(COCO_STAT_NAMES, 1.0), abs=1e-12)


def test_coco_evaluator_leaves_its_input_untouched():
    gt, dets = coco_gt(), coco_dets()
    gt_before, dets_before = copy.deepcopy(gt), copy.deepcopy(dets)
    for backend in ("pycocotools", "faster_coco_eval") if HAS_FASTER else ("pycocotools",):
        evaluator = CocoEvaluator(gt, backend=backend)
        evaluator.update(dets)
        evaluator.summarize()
    assert gt == gt_before and dets == dets_before  # loadRes/COCOeval write into copies only


def test_coco_update_rejects_unknown_ids():
    evaluator = CocoEvaluator(coco_gt())
    with pytest.raises(DataError, match="image_id 42"):
        evaluator.update([{"image_id": 42, "category_id": 2, "bbox": [0, 0, 1, 1], "score": 0.5}])
    with pytest.raises(DataError, match="category_id 3"):
        evaluator.update([{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}])
    with pytest.raises(DataError, match="image id 7"):
        evaluator.update([], image_ids=[7])
    bad_gt = coco_gt()
    bad_gt["annotations"][0]["id"] = 0
    with pytest.raises(DataError, match="id 0"):
        CocoEvaluator(bad_gt)


def test_detections_to_coco_results_maps_labels_back():
    outputs = [
        {
            "boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 5.5, 4.0]]),
            "labels": torch.tensor([1, 3]),
            "scores": torch.tensor([0.5, 0.25]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)},
        {
            "boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0]]),
            "labels": torch.tensor([2]),
            "scores": torch.tensor([1.0]),
        },
    ]
    expected = [
        {"image_id": 7, "category_id": 2, "bbox": [10.0, 20.0, 20.0, 40.0], "score": 0.5},
        {"image_id": 7, "category_id": 9, "bbox": [0.0, 0.0, 5.5, 4.0], "score": 0.25},
        {"image_id": 3, "category_id": 5, "bbox": [1.0, 2.0, 2.0, 2.0], "score": 1.0},
    ]
    ids = torch.tensor([7, 8, 3])
    assert detections_to_coco_results(outputs, ids, {1: 2, 2: 5, 3: 9}) == expected
    assert detections_to_coco_results(outputs, [7, 8, 3], [0, 2, 5, 9]) == expected  # indexed by label
    with pytest.raises(ValueError, match="label 3"):
        detections_to_coco_results(outputs, [7, 8, 3], {1: 2, 2: 5})


# ============================================================================================== files
def write_json(path, data) -> str:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_evaluate_coco_files_equals_pycocotools(tmp_path):
    gt_file = write_json(tmp_path / "gt.json", coco_gt())
    dt_file = write_json(tmp_path / "dt.json", coco_dets())
    stats = evaluate_coco_files(gt_file, dt_file, backend="pycocotools")
    assert list(stats.values()) == [float(v) for v in pycocotools_eval(coco_gt(), coco_dets()).stats]
    # Every GT image counts, also one without any detection (the official protocol).
    only_1 = [d for d in coco_dets() if d["image_id"] == 1]
    stats = evaluate_coco_files(gt_file, write_json(tmp_path / "dt1.json", only_1), backend="pycocotools")
    expected = [float(v) for v in pycocotools_eval(coco_gt(), only_1).stats]
    assert list(stats.values()) == expected
    auto = evaluate_coco_files(gt_file, str(tmp_path / "dt1.json"))  # faster-coco-eval when installed
    assert list(auto.values()) == pytest.approx(expected, abs=1e-12)


BAD_INPUTS = {
    "missing annotations": ("gt", None, r"gt\.json: annotations file not found"),
    "missing results": ("dt", None, r"dt\.json: results file not found"),
    "malformed annotations": ("gt", '{"images": [', r"gt\.json: malformed JSON"),
    "malformed results": ("dt", "[{]", r"dt\.json: malformed JSON"),
    "results not a list": ("dt", {"image_id": 1}, r"dt\.json: results must be a JSON list"),
    "empty results": ("dt", [], r"dt\.json: results file has no detections"),
    "unknown image": (
        "dt",
        "image_id=999",
        r"dt\.json: result 2 references image_id 999, which is not in .*gt\.json",
    ),
    "unknown category": ("dt", "category_id=4", r"dt\.json: result 2 references category_id 4"),
    "result without bbox": ("dt", "bbox=None", r"dt\.json: result 2 has no 'bbox'"),
    "gt without categories": ("gt", {"images": [], "annotations": []}, r"gt\.json: 'categories' is missing"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_evaluate_coco_files_bad_input(tmp_path, case):
    which, content, message = BAD_INPUTS[case]
    gt_path, dt_path = tmp_path / "gt.json", tmp_path / "dt.json"
    write_json(gt_path, coco_gt())
    write_json(dt_path, coco_dets())
    path = gt_path if which == "gt" else dt_path
    if content is None:
        path.unlink()
    elif isinstance(content, str) and "=" in content:  # corrupt one key of the third result
        key, value = content.split("=")
        dets = coco_dets()
        if value == "None":
            del dets[2][key]
        else:
            dets[2][key] = int(value)
        write_json(path, dets)
    else:
        write_json(path, content)
    with pytest.raises(DataError, match=message):
        evaluate_coco_files(gt_path, dt_path)


# ============================================================================================== VOC
def test_voc_ap_by_hand():
    # 5 detections for 4 positives: TP, FP, TP, FP, TP.
    # cumulative tp = 1, 1, 2, 2, 3 and fp = 0, 1, 1, 2, 2
    recall = [1 / 4, 1 / 4, 2 / 4, 2 / 4, 3 / 4]
    precision = [1 / 1, 1 / 2, 2 / 3, 2 / 4, 3 / 5]
    # 11-point: t = 0, .1, .2 -> max precision at recall >= t is 1; t = .3, .4, .5 -> 2/3;
    # t = .6, .7 -> 3/5; t = .8, .9, 1 -> no recall reaches t -> 0.  (3 + 3 * 2/3 + 2 * 3/5) / 11 = 6.2 / 11.
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx(6.2 / 11, abs=1e-12)
    # Area: the envelope is 1 on (0, 1/4], 2/3 on (1/4, 2/4], 3/5 on (2/4, 3/4], 0 on (3/4, 1].
    # 1/4 * (1 + 2/3 + 3/5 + 0) = 17/30.
    assert voc_ap(recall, precision, use_07_metric=False) == pytest.approx(17 / 30, abs=1e-12)
    # Perfect: both 1. No detection: both 0.
    for use_07 in (True, False):
        assert voc_ap([0.5, 1.0], [1.0, 1.0], use_07) == pytest.approx(1.0, abs=1e-12)
        assert voc_ap([], [], use_07) == 0.0


def voc_batch() -> tuple[list[dict], list[dict]]:
    """Two images, classes cat (1), dog (2), bird (3). Outcomes are in the comments."""
    t = torch.tensor
    targets = [
        {  # image 1: a cat, a difficult cat, a dog
            "boxes": t([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]]),
            "labels": t([1, 1, 2]),
            "difficult": t([False, True, False]),
            "image_id": "2007_000001",  # VOC file stem
        },
        {  # image 2: two cats (the second one is missed)
            "boxes": t([[50.0, 50.0, 70.0, 70.0], [0.0, 0.0, 10.0, 10.0]]),
            "labels": t([1, 1]),
            "image_id": t(2),
        },
    ]
    predictions = [
        {
            "boxes": t(
                [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0, 0, 10, 10.0]]
            ),
            "labels": t([1, 1, 1, 2]),
            "scores": t([0.9, 0.8, 0.7, 0.6]),  # cat TP, cat duplicate FP, cat on difficult: ignored, dog TP
        },
        {
            "boxes": t([[50.0, 50.0, 70.0, 71.0], [80.0, 80.0, 90.0, 90.0], [0.0, 0.0, 5.0, 5.0]]),
            "labels": t([1, 1, 3]),
            "scores": t([0.85, 0.5, 0.4]),  # cat TP (IoU 400/420), cat FP (no overlap), bird: no bird GT
        },
    ]
    return predictions, targets


@pytest.mark.parametrize("use_07", [True, False])
def test_voc_evaluator_by_hand(use_07):
    predictions, targets = voc_batch()
    evaluator = VOCEvaluator(["cat", "dog", "bird"], use_07_metric=use_07)
    evaluator.update(predictions[:1], targets[:1])
    evaluator.update(predictions[1:], targets[1:])
    result = evaluator.summarize()
    # cat: 3 positives (the difficult one does not count). By score: .9 TP, .85 TP, .8 FP (duplicate),
    # .7 ignored (difficult), .5 FP. cumulative tp = 1, 2, 2, 2, 2 and fp = 0, 0, 1, 1, 2:
    # recall = 1/3, 2/3, 2/3, 2/3, 2/3; precision = 1, 1, 2/3, 2/3, 1/2.
    # 11-point: t = 0 .. 0.6 (7 points) reach precision 1, t = .7 .. 1 (4 points) are not reached -> 7/11.
    # area: envelope 1 on (0, 2/3], 0 on (2/3, 1] -> 2/3.
    cat = 7 / 11 if use_07 else 2 / 3
    # dog: one positive, one TP -> 1. bird: no ground truth -> NaN, left out of the mean.
    assert result["per_class_AP"]["cat"] == pytest.approx(cat, abs=1e-12)
    assert result["per_class_AP"]["dog"] == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(result["per_class_AP"]["bird"])
    assert result["mAP"] == pytest.approx((cat + 1.0) / 2, abs=1e-12)
    assert f"{cat:.4f}" in evaluator.format_table()
    # The same arrays as voc_ap computes them by hand:
    assert cat == pytest.approx(
        voc_ap([1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3], [1, 1, 2 / 3, 2 / 3, 1 / 2], use_07)
    )


def test_voc_iou_is_continuous_and_strict():
    # GT 10x10, detection 10x5 inside it: IoU = 50 / 100 = 0.5 exactly, which is not > 0.5 -> FP, AP 0.
    # (With voc_eval's +1 pixel widths it would be 66 / 121 = 0.545 -> TP.)
    target = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([1])}
    half = {
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 5.0]]),
        "labels": torch.tensor([1]),
        "scores": torch.tensor([1.0]),
    }
    evaluator = VOCEvaluator(["thing"])
    evaluator.update([half], [target])
    assert evaluator.summarize()["mAP"] == 0.0
    evaluator = VOCEvaluator(["thing"], iou_threshold=0.49)
    evaluator.update([half], [target])
    assert evaluator.summarize()["mAP"] == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="label 2 is outside 1..1"):
        evaluator.update([half], [{"boxes": target["boxes"], "labels": torch.tensor([2])}])


# ============================================================================================== segmentation
SEG_TARGET = [
    [0, 0, 1, 1],
    [0, 0, 1, 1],
    [2, 2, 255, 255],
    [2, 2, 1, 255],
]
SEG_PRED = [
    [0, 1, 1, 1],
    [0, 0, 1, 2],
    [2, 0, 0, 1],
    [2, 2, 1, 3],  # the 3 is on an ignored pixel
]
# Counted pixels (13), rows = ground truth, columns = prediction:
SEG_CONFUSION = [
    [3, 1, 0, 0],  # gt 0: (0,0) (1,0) (1,1) right, (0,1) -> 1
    [0, 4, 1, 0],  # gt 1: (0,2) (0,3) (1,2) (3,2) right, (1,3) -> 2
    [1, 0, 3, 0],  # gt 2: (2,0) (3,0) (3,1) right, (2,1) -> 0
    [0, 0, 0, 0],  # class 3 is absent from ground truth and (counted) prediction
]


def test_segmentation_metric_by_hand():
    metric = SegmentationMetric(4, ignore_index=255, class_names=["bg", "a", "b", "c"])
    metric.update(torch.tensor([SEG_PRED]), torch.tensor([SEG_TARGET]))
    assert metric.confusion_matrix.dtype == torch.int64
    assert metric.confusion_matrix.tolist() == SEG_CONFUSION
    result = metric.compute()
    # IoU = TP / (row + column - TP): bg 3 / (4 + 4 - 3), a 4 / (5 + 5 - 4), b 3 / (4 + 4 - 3), c absent.
    iou = result["per_class_IoU"]
    assert (
        iou["bg"] == pytest.approx(3 / 5)
        and iou["a"] == pytest.approx(4 / 6)
        and iou["b"] == pytest.approx(3 / 5)
    )
    assert math.isnan(iou["c"])
    assert result["mIoU"] == pytest.approx((3 / 5 + 4 / 6 + 3 / 5) / 3)  # = 28/45, c left out
    assert result["pixel_acc"] == pytest.approx(10 / 13)
    assert result["mAcc"] == pytest.approx((3 / 4 + 4 / 5 + 3 / 4) / 3)
    assert "0.6000" in metric.format_table()


def test_segmentation_logits_equal_labels_and_prediction_only_class():
    pred = torch.tensor([SEG_PRED])
    logits = F.one_hot(pred, 4).permute(0, 3, 1, 2).float() * 3 + 0.1 * torch.randn(1, 4, 4, 4)
    by_labels, by_logits = SegmentationMetric(4), SegmentationMetric(4)
    by_labels.update(pred, torch.tensor([SEG_TARGET]))
    by_logits.update(logits, torch.tensor([SEG_TARGET]))
    assert torch.equal(by_labels.confusion_matrix, by_logits.confusion_matrix)

    # Class 2 predicted once but never in the ground truth: IoU 0 (counts in mIoU), accuracy left out of mAcc.
    metric = SegmentationMetric(3)
    metric.update(torch.tensor([[0, 2], [1, 1]]), torch.tensor([[0, 0], [1, 1]]))
    result = metric.compute()
    assert result["per_class_IoU"] == {"0": 0.5, "1": 1.0, "2": 0.0}
    assert result["mIoU"] == pytest.approx(0.5) and result["mAcc"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="target label 3 is outside 0..2"):
        metric.update(torch.tensor([[0]]), torch.tensor([[3]]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_segmentation_metric_on_cuda_equals_cpu():
    pred, target = seg_batch()
    cpu, gpu = SegmentationMetric(4), SegmentationMetric(4)
    cpu.update(pred, target)
    gpu.update(pred.cuda(), target.cuda())
    assert gpu.confusion_matrix.device.type == "cuda"
    gpu.reduce()  # no process group: the same matrix, still on the GPU
    assert gpu.confusion_matrix.device.type == "cuda"
    assert torch.equal(gpu.confusion_matrix.cpu(), cpu.confusion_matrix)
    assert _nan_equal(gpu.compute(), cpu.compute())


# ============================================================================================== DDP
def _ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        out = {}
        # COCO: rank 0 images 1 and 3, rank 1 images 2 and 3 (3 twice, like DistributedSampler padding).
        coco = CocoEvaluator(coco_gt())
        mine = (1, 3) if rank == 0 else (2, 3)
        coco.update([d for d in coco_dets() if d["image_id"] in mine], image_ids=mine)
        coco.synchronize()
        out["coco"] = coco.summarize()
        out["coco_per_class"] = coco.per_class_ap()
        # VOC: one image each, rank 1 also gets image 1 again (padding).
        predictions, targets = voc_batch()
        voc = VOCEvaluator(["cat", "dog", "bird"], use_07_metric=False)
        voc.update(predictions[rank : rank + 1], targets[rank : rank + 1])
        if rank == 1:
            voc.update(predictions[:1], targets[:1])
        voc.synchronize()
        out["voc"] = voc.summarize()
        # Segmentation: one image each.
        pred, target = seg_batch()
        seg = SegmentationMetric(4)
        seg.update(pred[rank : rank + 1], target[rank : rank + 1])
        seg.reduce()
        seg.reduce()  # idempotent
        out["seg"] = seg.compute()
        out["seg_cm"] = seg.confusion_matrix.tolist()
        torch.save(out, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def seg_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (2, 8, 8), generator=g)
    target[:, 0] = 255
    noise = torch.randint(0, 4, (2, 8, 8), generator=g)
    pred = torch.where(torch.rand(2, 8, 8, generator=g) < 0.7, target.clamp(max=3), noise)
    return pred, target


def _nan_equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_nan_equal(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


def test_ddp_two_processes_equal_single_process(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    coco = CocoEvaluator(coco_gt())
    coco.update(coco_dets(), image_ids=[1, 2, 3])
    predictions, targets = voc_batch()
    voc = VOCEvaluator(["cat", "dog", "bird"], use_07_metric=False)
    voc.update(predictions, targets)
    pred, target = seg_batch()
    seg = SegmentationMetric(4)
    seg.update(pred, target)
    single = {
        "coco": coco.summarize(),
        "coco_per_class": coco.per_class_ap(),
        "voc": voc.summarize(),
        "seg": seg.compute(),
        "seg_cm": seg.confusion_matrix.tolist(),
    }
    for rank in (0, 1):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        for key, value in single.items():
            assert _nan_equal(result[key], value), (rank, key)
