"""Instance masks from COCO annotations (polygons, RLE, crowd) through the v2 detection transforms."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision import tv_tensors

from se_plugins.data import CocoDetection, detection_transforms, make_shapes
from se_plugins.errors import DataError

H, W = 40, 60


def _rect(y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((H, W), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F")  # COCO RLE runs are column-major, starting with zeros
    counts, value, run = [], 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    return {"size": [H, W], "counts": counts}


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]


def _ann(ann_id, image_id, segm, mask, iscrowd=0):
    return dict(id=ann_id, image_id=image_id, category_id=3, segmentation=segm, bbox=_bbox(mask),
                area=float(mask.sum()), iscrowd=iscrowd)  # fmt: skip


TRIANGLE = [10.0, 5.0, 30.0, 5.0, 10.0, 25.0]  # a right triangle in pixel-edge coordinates


def _expected_masks() -> list[np.ndarray]:
    triangle = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([TRIANGLE], H, W)))
    return [triangle, _rect(20, 35, 35, 55), _rect(2, 12, 40, 58), _rect(30, 38, 2, 20)]


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("masks")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    for i in (1, 2):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
    tri, rect, rle_rect, raw_rect = _expected_masks()
    anns = [
        _ann(1, 1, [TRIANGLE, [0.0, 0.0, 1.0, 1.0]], tri),  # a valid polygon + a degenerate one (dropped)
        _ann(2, 1, _rle(rect), rect),  # compressed RLE
        _ann(3, 2, _uncompressed_rle(rle_rect), rle_rect),  # uncompressed RLE
        _ann(4, 2, [[2.0, 30.0, 20.0, 30.0, 20.0, 38.0, 2.0, 38.0]], raw_rect),  # a rectangle polygon
        _ann(5, 2, _uncompressed_rle(_rect(0, 10, 0, 10)), _rect(0, 10, 0, 10), iscrowd=1),  # crowd: eval only
    ]
    data = {
        "images": [dict(id=i, file_name=f"{i}.png", height=H, width=W) for i in (1, 2)],
        "annotations": anns,
        "categories": [dict(id=3, name="thing")],
    }
    (root / "ann.json").write_text(json.dumps(data))
    return root


def test_polygons_rle_and_crowd_decode_to_the_pycocotools_masks(coco_dir):
    with pytest.warns(UserWarning, match="dropped 1 polygons with fewer than 3 points"):
        ds = CocoDetection(coco_dir / "images", coco_dir / "ann.json", masks=True)
    expected = _expected_masks()
    (_, t1), (_, t2) = ds[0], ds[1]
    assert isinstance(t1["masks"], tv_tensors.Mask) and t1["masks"].dtype == torch.uint8
    assert t1["masks"].shape == (2, H, W) and t2["masks"].shape == (2, H, W)  # the crowd RLE is not trained on
    for got, want in zip([*t1["masks"], *t2["masks"]], expected, strict=True):
        assert torch.equal(got, torch.from_numpy(want))
    for ann_id, got in zip((1, 2, 3, 4), [*t1["masks"], *t2["masks"]], strict=True):
        assert torch.equal(got, torch.from_numpy(ds.coco.annToMask(ds.coco.anns[ann_id])))
    assert "masks" not in CocoDetection(coco_dir / "images", coco_dir / "ann.json")[0][1]  # boxes only


def _tight_box(mask: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def test_flip_and_resize_keep_boxes_and_masks_aligned_pixel_exactly(coco_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = CocoDetection(coco_dir / "images", coco_dir / "ann.json", masks=True)
        # hflip always, then the shorter side 40 -> 80: a 2x nearest resize of the masks and a 2x scale of the boxes
        transforms = detection_transforms(True, min_size=[2 * H], max_size=4 * W, hflip_prob=1.0)
        moved = CocoDetection(coco_dir / "images", coco_dir / "ann.json", masks=True, transforms=transforms)
    for i in range(len(plain)):
        (_, t0), (image, t) = plain[i], moved[i]
        assert image.shape == (3, 2 * H, 2 * W) and t["masks"].shape == (len(t0["boxes"]), 2 * H, 2 * W)
        expected = t0["masks"].flip(-1).repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
        assert torch.equal(t["masks"].as_subclass(torch.Tensor), expected.as_subclass(torch.Tensor))
        for box0, box, mask0, mask in zip(t0["boxes"], t["boxes"], t0["masks"], t["masks"], strict=True):
            x0, y0, x1, y1 = box0.tolist()
            assert box.tolist() == [2 * (W - x1), 2 * y0, 2 * (W - x0), 2 * y1]
            assert _tight_box(mask0) == box0.tolist() and _tight_box(mask) == box.tolist()  # boxes hug the masks
        assert torch.equal(t["labels"], t0["labels"])


def _write(tmp_path, anns):
    (tmp_path / "images").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((H, W, 3), dtype=np.uint8)).save(tmp_path / "images" / "1.png")
    data = {"images": [dict(id=1, file_name="1.png", height=H, width=W)], "annotations": anns,
            "categories": [dict(id=3, name="thing")]}  # fmt: skip
    (tmp_path / "bad.json").write_text(json.dumps(data))
    return tmp_path / "images", tmp_path / "bad.json"


@pytest.mark.parametrize(
    ("segm", "message"),
    [
        ({"size": [W, H], "counts": _rle(_rect(0, 5, 0, 5))["counts"]}, r"annotation 7: RLE size \[60, 40\] does not"),
        ({"size": [H, W], "counts": [5, 10]}, "annotation 7: uncompressed RLE counts must .* sum of 15"),
        ([[1.0, 1.0, 5.0, 5.0]], r"annotation 7: every polygon has fewer than 3 points \(2\)"),
        ([[1.0, 1.0, 5.0, 5.0, 3.0]], "annotation 7: polygon 0 has an odd number of coordinates"),
        ([1.0, 1.0, 5.0, 5.0, 3.0, 3.0], "annotation 7: polygon 0 is not a list of finite numbers"),
        ([], "annotation 7: no instance mask"),
    ],
)
def test_bad_masks_are_one_line_errors_naming_file_and_annotation(tmp_path, segm, message):
    images, ann_file = _write(tmp_path, [_ann(7, 1, segm, _rect(0, 5, 0, 5))])
    with pytest.raises(DataError, match=f"bad.json: {message}") as info:
        CocoDetection(images, ann_file, masks=True)
    assert "\n" not in str(info.value)
    CocoDetection(images, ann_file)  # without masks the segmentation is not read


def test_shapes_instance_masks_match_their_boxes(tmp_path):
    paths = make_shapes(tmp_path / "shapes", num_train=3, num_val=1, image_size=64, seed=0)
    ds = CocoDetection(paths.coco_train_images, paths.coco_train_ann, masks=True)
    count = 0
    for i in range(len(ds)):
        _, t = ds[i]
        assert t["masks"].shape[0] == len(t["boxes"]) == len(t["labels"])
        for box, mask in zip(t["boxes"], t["masks"], strict=True):
            assert _tight_box(mask) == box.tolist()  # boxes are tight around the visible pixels
            count += 1
    assert count > 3
