"""The synthetic shapes generator: layout, determinism, polygons vs masks, COCO vs VOC agreement."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from se_plugins.data import (
    SHAPE_CATEGORY_IDS,
    SHAPE_CLASSES,
    CocoDetection,
    VOCDetection,
    add_make_shapes_args,
    make_shapes,
    mask_to_polygons,
    run_make_shapes,
    voc_palette,
)
from se_plugins.data import shapes as shapes_module

KW = dict(num_train=4, num_val=2, image_size=96, seed=3)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes"), **KW)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_coco_json(shapes):
    assert shapes.voc_root == shapes.root / "voc"
    train = json.loads(shapes.coco_train_ann.read_text())
    val = json.loads(shapes.coco_val_ann.read_text())
    assert [c["id"] for c in train["categories"]] == SHAPE_CATEGORY_IDS == [1, 3, 5, 7]
    assert [c["name"] for c in train["categories"]] == SHAPE_CLASSES
    assert [i["file_name"] for i in train["images"]] == [f"train_{i:06d}.jpg" for i in range(1, 5)]
    assert len(val["images"]) == 2
    for split, data in (("train", train), ("val", val)):
        img_dir = shapes.coco_train_images if split == "train" else shapes.coco_val_images
        ids = (shapes.voc_root / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        assert ids == (shapes.voc_root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        assert [f"{i}.jpg" for i in ids] == [img["file_name"] for img in data["images"]]
        for img in data["images"]:
            assert Image.open(img_dir / img["file_name"]).size == (96, 96)
            jpeg = (img_dir / img["file_name"]).read_bytes()
            assert jpeg == (shapes.voc_root / "JPEGImages" / img["file_name"]).read_bytes()
        anns = data["annotations"]
        assert {a["image_id"] for a in anns} == {img["id"] for img in data["images"]}  # min_shapes=1
        for a in anns:
            x, y, w, h = a["bbox"]
            assert a["iscrowd"] == 0 and w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 96 and y + h <= 96
            assert a["category_id"] in SHAPE_CATEGORY_IDS
            assert all(len(p) >= 8 and len(p) % 2 == 0 for p in a["segmentation"])
    assert not list(shapes.root.rglob("*.tmp"))


def test_deterministic_and_seed_dependent(shapes, tmp_path):
    again = make_shapes(tmp_path / "again", **KW)
    assert _files(again.root) == _files(shapes.root)
    other = make_shapes(tmp_path / "other", **{**KW, "seed": 4})
    assert other.coco_train_ann.read_bytes() != shapes.coco_train_ann.read_bytes()


def test_reuse_and_overwrite(tmp_path):
    paths = make_shapes(tmp_path, num_train=1, num_val=1, image_size=64, seed=0)
    paths.coco_train_ann.touch()  # any rewrite would change the mtime again
    stamp = paths.coco_train_ann.stat().st_mtime_ns
    assert make_shapes(tmp_path, num_train=1, num_val=1, image_size=64, seed=0) == paths
    assert paths.coco_train_ann.stat().st_mtime_ns == stamp
    make_shapes(tmp_path, num_train=1, num_val=1, image_size=64, seed=0, overwrite=True)
    assert paths.coco_train_ann.stat().st_mtime_ns != stamp
    other = make_shapes(tmp_path, num_train=2, num_val=1, image_size=64, seed=0)  # new parameters
    assert len(json.loads(other.coco_train_ann.read_text())["images"]) == 2


def test_interrupted_run_leaves_no_index_files(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = shapes_module._coco_annotation

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(shapes_module, "_coco_annotation", failing)
    with pytest.raises(KeyboardInterrupt):
        make_shapes(tmp_path, num_train=4, num_val=2, image_size=64)
    assert list((tmp_path / "voc" / "JPEGImages").glob("*.jpg"))  # it had started
    assert not (tmp_path / "coco" / "annotations").exists()
    assert not (tmp_path / "voc" / "ImageSets").exists()
    assert not (tmp_path / "shapes.json").exists()
    assert not list(tmp_path.rglob("*.tmp"))


def test_polygons_match_png_masks(shapes):
    """COCO polygons rasterise exactly to the PNG's class pixels; 255 only on a thin outline band."""
    data = json.loads(shapes.coco_train_ann.read_text())
    cat_to_class = {cid: i + 1 for i, cid in enumerate(SHAPE_CATEGORY_IDS)}
    for img in data["images"]:
        png = Image.open(shapes.voc_root / "SegmentationClass" / img["file_name"].replace(".jpg", ".png"))
        assert png.mode == "P" and png.getpalette()[: 3 * 256] == voc_palette()
        classes = np.array(png)
        semantic = np.zeros_like(classes)
        for a in (a for a in data["annotations"] if a["image_id"] == img["id"]):
            rle = mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], 96, 96))
            m = mask_utils.decode(rle).astype(bool)
            assert m.sum() == a["area"] == mask_utils.area(rle)
            rows, cols = np.nonzero(m)
            assert a["bbox"] == [
                cols.min(),
                rows.min(),
                cols.max() + 1 - cols.min(),
                rows.max() + 1 - rows.min(),
            ]
            assert not semantic[m].any()  # instances are disjoint (visible parts only)
            semantic[m] = cat_to_class[a["category_id"]]
        for c in range(1, len(SHAPE_CLASSES) + 1):
            poly_mask = semantic == c
            png_mask = (classes == c) | ((classes == 255) & poly_mask)  # the drawn mask, band included
            if poly_mask.any():
                assert (poly_mask & png_mask).sum() / (poly_mask | png_mask).sum() > 0.9  # IoU
        known = classes != 255
        assert np.array_equal(classes[known], semantic[known])
        # every ignored pixel touches a class change (the band is at most 1 px on each side)
        padded = np.pad(semantic, 1, mode="edge")
        near_edge = np.zeros_like(known)
        for dy in range(3):
            for dx in range(3):
                near_edge |= padded[dy : dy + 96, dx : dx + 96] != semantic
        assert near_edge[~known].all()


def test_voc_annotations_match_coco(shapes):
    """The VOC XML boxes (1-based) read back to the COCO boxes; difficult = small visible box."""
    coco = CocoDetection(shapes.coco_val_images, shapes.coco_val_ann)
    voc = VOCDetection(shapes.voc_root, "val", classes=SHAPE_CLASSES)
    assert len(coco) == len(voc) == 2
    for i in range(2):
        (_, tc), (_, tv) = coco[i], voc[i]
        assert np.array_equal(tc["boxes"].numpy(), tv["boxes"].numpy())
        assert np.array_equal(tc["labels"].numpy(), tv["labels"].numpy())
        b = tv["boxes"].numpy()
        sides = np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
        assert np.array_equal(tv["difficult"].numpy(), sides < 0.12 * 96)


def test_mask_to_polygons_roundtrip_and_holes():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(200):
        m = rng.random((12, 12)) < 0.2
        try:
            polys = mask_to_polygons(m)
        except ValueError:
            continue
        decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, 12, 12))).astype(bool)
        assert np.array_equal(decoded, m)
        checked += 1
    assert checked > 150
    square = np.zeros((5, 5), bool)
    square[1:4, 1:4] = True
    assert mask_to_polygons(square) == [[1, 1, 4, 1, 4, 4, 1, 4]]
    square[2, 2] = False
    with pytest.raises(ValueError, match="hole"):
        mask_to_polygons(square)


def test_cli_functions(tmp_path, capsys):
    parser = add_make_shapes_args(argparse.ArgumentParser())
    args = parser.parse_args([str(tmp_path), "--num-train", "2", "--num-val", "1", "--image-size", "64"])
    assert run_make_shapes(args) == 0
    out = capsys.readouterr().out
    assert f"voc_root: {tmp_path.resolve() / 'voc'}" in out
    assert len(json.loads((tmp_path / "coco/annotations/instances_train.json").read_text())["images"]) == 2


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        make_shapes(tmp_path, image_size=8)
    with pytest.raises(ValueError, match="min_shapes"):
        make_shapes(tmp_path, min_shapes=3, max_shapes=2)
