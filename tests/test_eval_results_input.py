"""`eval-results` input that used to give silently wrong numbers: degenerate boxes, no annotations; strict JSON."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from se_plugins.cli import main
from se_plugins.engine.evaluation import evaluate_coco_files
from se_plugins.engine.logging import strict_json
from se_plugins.errors import DataError

IMAGES = [{"id": i, "file_name": f"{i}.jpg", "height": 100, "width": 100} for i in (1, 2, 3)]
CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
GOOD = [
    {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 20]},
    {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 40, 20, 30]},
    {"id": 3, "image_id": 2, "category_id": 1, "bbox": [5, 60, 40, 25]},
    {"id": 4, "image_id": 3, "category_id": 2, "bbox": [30, 30, 35, 35]},
]
FLAT = [
    {"id": 5, "image_id": 2, "category_id": 2, "bbox": [20, 20, 0, 10]},  # zero width
    {"id": 6, "image_id": 3, "category_id": 1, "bbox": [70, 70, 12, -4]},  # negative height
]


def _ann(a: dict) -> dict:
    return {**a, "area": float(a["bbox"][2] * a["bbox"][3]), "iscrowd": 0}


def _write(tmp_path, annotations, results):
    gt, dt = tmp_path / "gt.json", tmp_path / "dt.json"
    gt.write_text(json.dumps({"images": IMAGES, "annotations": annotations, "categories": CATEGORIES}))
    dt.write_text(json.dumps(results))
    return gt, dt


def _pycocotools(annotations, results) -> list[float]:
    coco = COCO()
    coco.dataset = {"images": IMAGES, "annotations": json.loads(json.dumps(annotations)), "categories": CATEGORIES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(json.loads(json.dumps(results))), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats]


def test_degenerate_ground_truth_and_result_boxes_are_dropped_with_a_warning(tmp_path):
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9} for a in GOOD
    ]
    flat_results = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, -5, 5], "score": 0.99},
        {"image_id": 2, "category_id": 2, "bbox": [1, 1, 3, 0], "score": 0.98},
    ]
    results = [perfect[0], flat_results[0], *perfect[1:], flat_results[1]]  # result indices 1 and 5 are flat
    annotations = [_ann(a) for a in GOOD[:2] + FLAT[:1] + GOOD[2:] + FLAT[1:]]  # annotation indices 2 and 5
    gt, dt = _write(tmp_path, annotations, results)
    # Uncleaned, pycocotools counts the two flat boxes as missed objects (and the flat results as misses).
    assert _pycocotools(annotations, results)[0] < 1.0
    with pytest.warns(UserWarning) as record:
        stats = evaluate_coco_files(gt, dt, backend="pycocotools")
    assert [str(w.message) for w in record] == [
        f"{gt}: dropped 2 ground-truth boxes with zero or negative width or height (annotations[i] for i = 2, 5)",
        f"{dt}: dropped 2 of 6 results with zero or negative box width or height (results[i] for i = 1, 5)",
    ]
    expected = _pycocotools([_ann(a) for a in GOOD], perfect)  # pycocotools on the cleaned data
    assert [stats[k] for k in stats] == expected and stats["AP"] == 1.0


def test_annotations_without_annotations_is_an_error(tmp_path):
    gt, dt = _write(tmp_path, [], [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.5}])
    with pytest.raises(DataError) as err:
        evaluate_coco_files(gt, dt)
    assert str(err.value) == f"{gt}: 'annotations' is empty: there is no ground truth to evaluate against"


def test_eval_results_out_is_strict_json_and_warnings_are_one_line(tmp_path, capsys):
    # Only category 1 has ground truth, in one image, so APs/APm (no small/medium objects) are -1 and the
    # file stays finite; NaN only comes from per-class tables. The warning is one line on stderr.
    annotations = [_ann(GOOD[0]), _ann(FLAT[0])]
    gt, dt = _write(tmp_path, annotations, [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 20], "score": 1}])
    out = tmp_path / "m.json"
    assert main(["eval-results", "--annotations", str(gt), "--results", str(dt), "--out", str(out)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"se-plugins: warning: {gt}: dropped 1 ground-truth boxes with zero or negative width or height "
        "(annotations[i] for i = 1)"
    ]
    assert json.loads(out.read_text(), parse_constant=_no_constants)["AP"] == 1.0


def _no_constants(name: str):
    raise AssertionError(f"not strict JSON: {name}")


def test_strict_json_writes_null_for_nan_and_inf():
    text = strict_json({"AP": float("nan"), "x": [1.5, float("-inf")], "t": torch.tensor(2.0), "n": 3}, indent=None)
    assert text == '{"AP": null, "x": [1.5, null], "t": 2.0, "n": 3}'
    assert json.loads(text, parse_constant=_no_constants)["AP"] is None
    assert not math.isnan(json.loads(text)["x"][0])
