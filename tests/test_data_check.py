"""`se-plugins check-data`: the summary, the problems it finds, exit codes, its PNGs; the fast check of `train`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from se_plugins.cli import main
from se_plugins.data import VOCSegmentation, voc_palette
from se_plugins.data.check import check_dataset


def coco_set(root: Path) -> Path:
    """4 images (20x30): a degenerate box (id 13), an image without boxes (id 3); returns the config."""
    images = [{"id": i, "file_name": f"im{i}.png", "height": 20, "width": 30} for i in (1, 2, 3, 4)]
    anns = [
        {"id": 11, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 8], "area": 80},
        {"id": 12, "image_id": 2, "category_id": 2, "bbox": [5, 5, 10, 10], "area": 100},
        {"id": 13, "image_id": 2, "category_id": 2, "bbox": [5, 5, 0.3, 10], "area": 3},
        {"id": 14, "image_id": 4, "category_id": 1, "bbox": [1, 1, 20, 15], "area": 300},
    ]
    cats = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    (root / "img").mkdir(parents=True)
    for img in images:
        Image.new("RGB", (30, 20), (90, 90, 90)).save(root / "img" / img["file_name"])
    ann = root / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    cfg = root / "cfg.yaml"
    cfg.write_text(
        "task: detection\ndevice: cpu\n"
        f"output_dir: {root / 'run'}\n"
        f"data: {{format: coco, train_images: {root / 'img'}, train_annotations: {ann}, val_images: {root / 'img'}, "
        f"val_annotations: {ann}, num_workers: 0, keep_empty: true}}\n"
        "model: {name: fasterrcnn_timm_fpn, backbone: resnet10t, min_size: 32, max_size: 32}\n"
        "train: {epochs: 1, batch_size: 2, tensorboard: false, num_vis: 0}\n"
    )
    return cfg


def test_check_data_ok_summary_and_pngs(tmp_path, capsys):
    cfg = coco_set(tmp_path)
    assert main(["check-data", str(cfg), "--samples", "2"]) == 0
    ann, run = tmp_path / "ann.json", tmp_path / "run" / "check-data"
    printed = capsys.readouterr()
    warning = (
        f"se-plugins: warning: {ann}: dropped 1 degenerate boxes (under 1 px wide or high after clipping; "
        "annotation ids 13)"
    )
    assert printed.err.splitlines() == [warning]  # one line (Python shows a repeated warning once)
    out = printed.out.splitlines()
    split_lines = [
        "4 images, 3 boxes, 1 images without boxes (ids 3)",
        "  image sizes (W x H): 30x20 .. 30x20; 4 decoded and checked",
        "  1 degenerate boxes dropped (under 1 px after clipping): annotation ids 13",
    ]
    assert out == [
        f"train: {ann}: {split_lines[0]}",
        *split_lines[1:],
        f"val: {ann}: {split_lines[0]}",
        *split_lines[1:],
        "  class     train boxes       val boxes",
        "  cat                 2               2",
        "  dog                 1               1",
        "check-data: OK: training would start",
        f"wrote {run / 'class_histogram.png'}",
        f"wrote {run / 'samples.png'}",
    ]
    with Image.open(run / "samples.png") as im:
        assert im.size == (2 * 384 + 4, 256)  # two 30x20 images scaled to a height of 256, 4 px apart
    with Image.open(run / "class_histogram.png") as im:
        assert im.format == "PNG"


def test_check_data_reports_every_bad_image_and_exits_2(tmp_path, capsys):
    cfg = coco_set(tmp_path)
    Image.new("RGB", (31, 20)).save(tmp_path / "img" / "im2.png")  # not the annotated 30x20
    (tmp_path / "img" / "im4.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # exists but cannot be decoded
    assert main(["check-data", str(cfg)]) == 2
    out = capsys.readouterr().out.splitlines()
    size_error = (
        f"  error: {tmp_path / 'img' / 'im2.png'}: image is 31x20 but {tmp_path / 'ann.json'} says 30x20 (image id 2)"
    )
    assert out.count(size_error) == 2  # train and val
    assert sum(line.startswith(f"  error: {tmp_path / 'img' / 'im4.png'}: cannot read image") for line in out) == 2
    assert out[-2:] == [
        "check-data: 4 problems: training would not start",
        f"wrote {tmp_path / 'run' / 'check-data' / 'class_histogram.png'}",  # no samples.png: train has errors
    ]


def test_train_checks_the_files_before_the_first_step(tmp_path, capsys):
    cfg = coco_set(tmp_path)
    (tmp_path / "img" / "im3.png").unlink()
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"se-plugins: error: {tmp_path / 'img' / 'im3.png'}: image not found (image id 3) (and 1 more problems); "
        "run se-plugins check-data CONFIG for a full report"
    )
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # stopped before training started


def test_check_segmentation_masks(tmp_path):
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (tmp_path / sub).mkdir(parents=True)
    masks = {"a": np.zeros((6, 8), np.uint8), "b": np.full((6, 8), 2, np.uint8)}
    masks["a"][0, :] = 255
    masks["b"][1, 1] = 40  # not a class
    for name, values in masks.items():
        Image.new("RGB", (8, 6)).save(tmp_path / "JPEGImages" / f"{name}.png")
        png = Image.fromarray(values, mode="P")
        png.putpalette(voc_palette())
        png.save(tmp_path / "SegmentationClass" / f"{name}.png")
    (tmp_path / "ImageSets/Segmentation/train.txt").write_text("a\nb\n")
    report = check_dataset(VOCSegmentation(tmp_path, "train", classes=["background", "x", "y"]), "train")
    assert report.errors == [
        f"{tmp_path / 'SegmentationClass' / 'b.png'}: mask values [40] outside 0..2 (255 = ignore)"
    ]
    assert report.pixels == {"background": 40, "x": 0, "y": 0, "ignore": 8} and report.sizes == [(6, 8)]
