"""VOC readers: 1-based box conversion, difficult/truncated, classes, COCO ground truth, palette masks."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.cocoeval import COCOeval

from se_plugins.data import VOC_CLASSES, VOC_SEG_CLASSES, VOCDetection, VOCSegmentation, voc_palette
from se_plugins.errors import DataError

XML_A = """<annotation>
  <filename>a.jpg</filename>
  <size><width>40</width><height>30</height><depth>3</depth></size>
  <object><name>dog</name><truncated>1</truncated><difficult>0</difficult>
    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>5</ymax></bndbox></object>
  <object><name>cat</name><difficult>1</difficult>
    <bndbox><xmin>21</xmin><ymin>11</ymin><xmax>40</xmax><ymax>30</ymax></bndbox></object>
  <object><name>dog</name>
    <bndbox><xmin>5.5</xmin><ymin>8</ymin><xmax>12</xmax><ymax>20</ymax></bndbox></object>
</annotation>
"""

XML_B = """<annotation>
  <size><width>20</width><height>10</height></size>
  <object><name>bird</name><bndbox><xmin>3</xmin><ymin>2</ymin><xmax>8</xmax><ymax>9</ymax></bndbox></object>
</annotation>
"""


def _voc(root: Path, xmls: dict[str, str], sizes: dict[str, tuple[int, int]], split="train") -> Path:
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name, xml in xmls.items():
        (root / "Annotations" / f"{name}.xml").write_text(xml)
        h, w = sizes[name]
        Image.new("RGB", (w, h), (10, 200, 30)).save(root / "JPEGImages" / f"{name}.jpg")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(xmls) + "\n\n")
    return root


@pytest.fixture()
def voc(tmp_path):
    return _voc(tmp_path, {"a": XML_A, "b": XML_B}, {"a": (30, 40), "b": (10, 20)})


def test_one_based_to_zero_based_boxes(voc):
    ds = VOCDetection(voc, "train")
    assert ds.ids == ["a", "b"] and ds.class_names == VOC_CLASSES and ds.num_classes == 21
    image, t = ds[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    # (xmin - 1, ymin - 1, xmax, ymax)
    assert t["boxes"].tolist() == [[0, 0, 10, 5], [20, 10, 40, 30], [4.5, 7, 12, 20]]
    assert t["boxes"].canvas_size == (30, 40)
    dog, cat = VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("cat") + 1
    assert t["labels"].tolist() == [dog, cat, dog]
    assert t["difficult"].tolist() == [False, True, False] and t["difficult"].dtype == torch.bool
    assert t["area"].tolist() == [50, 400, 7.5 * 13] and t["iscrowd"].tolist() == [0, 0, 0]
    assert t["image_id"] == 1 and ds[1][1]["image_id"] == 2
    assert ds.get_height_and_width(1) == (10, 20) and ds.aspect_ratios() == [40 / 30, 2.0]


def test_keep_difficult_false(voc):
    _, t = VOCDetection(voc, "train", keep_difficult=False)[0]
    assert t["boxes"].tolist() == [[0, 0, 10, 5], [4.5, 7, 12, 20]] and t["difficult"].tolist() == [
        False,
        False,
    ]


def test_class_lists(voc):
    auto = VOCDetection(voc, "train", classes="auto")
    assert auto.class_names == ["bird", "cat", "dog"]
    assert auto[0][1]["labels"].tolist() == [3, 2, 3]
    custom = VOCDetection(voc, "train", classes=["dog", "cat", "bird", "cow"])
    assert custom[1][1]["labels"].tolist() == [3]
    with pytest.raises(DataError, match="unknown class name 'bird'") as err:
        VOCDetection(voc, "train", classes=["dog", "cat"])
    assert str(voc / "Annotations" / "b.xml") in str(err.value)


def test_coco_ground_truth(voc):
    ds = VOCDetection(voc, "train", classes="auto")
    gt = ds.coco_ground_truth()
    anns = sorted(gt.anns.values(), key=lambda a: a["id"])
    assert [(a["image_id"], a["category_id"], a["bbox"], a["iscrowd"]) for a in anns] == [
        (1, 3, [0, 0, 10, 5], 0),
        (1, 2, [20, 10, 20, 20], 1),  # difficult -> crowd: ignored by COCOeval
        (1, 3, [4.5, 7, 7.5, 13], 0),
        (2, 1, [2, 1, 6, 8], 0),
    ]
    assert [c["name"] for c in gt.loadCats(gt.getCatIds())] == ["bird", "cat", "dog"]
    assert gt.imgs[2]["height"] == 10 and gt.imgs[2]["width"] == 20
    # Perfect detections, plus one on the difficult object: still AP = 1 (neither TP nor FP)
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in anns
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def test_bad_inputs_name_the_file(tmp_path):
    root = _voc(tmp_path, {"a": XML_A}, {"a": (30, 40)})
    with pytest.raises(DataError, match="split file not found") as err:
        VOCDetection(root, "val")
    assert str(root / "ImageSets" / "Main" / "val.txt") in str(err.value)
    (root / "Annotations" / "a.xml").write_text("<annotation><object>")
    with pytest.raises(DataError, match="malformed XML") as err:
        VOCDetection(root, "train")
    assert str(root / "Annotations" / "a.xml") in str(err.value)
    (root / "Annotations" / "a.xml").write_text("<annotation><object><name>dog</name></object></annotation>")
    with pytest.raises(DataError, match="has no <bndbox>"):
        VOCDetection(root, "train")
    (root / "Annotations" / "a.xml").write_text(XML_A.replace("<xmin>1</xmin>", "<xmin>one</xmin>"))
    with pytest.raises(DataError, match="not a number: 'one'"):
        VOCDetection(root, "train")
    (root / "Annotations" / "a.xml").write_text(
        XML_A.replace("<xmin>21</xmin>", "<xmin>50</xmin>").replace("<xmax>40</xmax>", "<xmax>60</xmax>")
    )
    with pytest.raises(DataError, match="lies entirely outside"):
        VOCDetection(root, "train")
    (root / "Annotations" / "a.xml").unlink()
    with pytest.raises(DataError, match="annotation file not found") as err:
        VOCDetection(root, "train")
    assert str(root / "Annotations" / "a.xml") in str(err.value)
    (root / "Annotations" / "a.xml").write_text(XML_A)
    (root / "JPEGImages" / "a.jpg").unlink()
    with pytest.raises(DataError) as err:
        VOCDetection(root, "train")
    assert str(err.value) == (
        f"{root / 'Annotations' / 'a.xml'} (split 'train'): image not found: {root / 'JPEGImages' / 'a.jpg'} "
        f"(its <filename>) does not exist, and no {root / 'JPEGImages' / 'a'}.{{jpg/jpeg/png/tif/tiff/bmp/webp}} exists"
    )


def test_xml_size_mismatch(tmp_path):
    root = _voc(tmp_path, {"a": XML_A}, {"a": (31, 40)})
    with pytest.raises(DataError, match=r"size 40x30 does not match image .*a.jpg \(40x31\)"):
        VOCDetection(root, "train")[0]


# ------------------------------------------------------------------------------------ segmentation


def _seg(root: Path, masks: dict[str, Image.Image], image_sizes: dict[str, tuple[int, int]]) -> Path:
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name, mask in masks.items():
        mask.save(root / "SegmentationClass" / f"{name}.png")
        h, w = image_sizes[name]
        Image.new("RGB", (w, h)).save(root / "JPEGImages" / f"{name}.jpg")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(masks) + "\n")
    return root


def _palette_png(indices: np.ndarray) -> Image.Image:
    img = Image.fromarray(indices.astype(np.uint8))
    img.putpalette(voc_palette())
    return img


def test_palette_indices_and_ignore(tmp_path):
    idx = np.zeros((6, 8), np.uint8)
    idx[1:3, 1:4] = 15  # person: palette colour (192, 128, 128), index 15
    idx[4, :] = 255  # void
    root = _seg(
        tmp_path, {"p": _palette_png(idx), "g": Image.fromarray(idx, "L")}, {"p": (6, 8), "g": (6, 8)}
    )
    ds = VOCSegmentation(root, "train")
    assert ds.class_names == VOC_SEG_CLASSES and ds.num_classes == 21
    for i in range(2):  # palette PNG and grayscale PNG give the same indices
        image, mask = ds[i]
        assert image.shape == (3, 6, 8) and mask.dtype == torch.int64
        assert np.array_equal(mask.numpy(), idx.astype(np.int64))
    assert Image.open(root / "SegmentationClass" / "p.png").convert("RGB").getpixel((1, 1)) == (192, 128, 128)


def test_segmentation_bad_inputs(tmp_path):
    ok = np.zeros((6, 8), np.uint8)
    bad_values = ok.copy()
    bad_values[0, 0], bad_values[1, 1] = 21, 30
    masks = {"size": _palette_png(ok), "values": _palette_png(bad_values), "rgb": Image.new("RGB", (8, 6))}
    root = _seg(tmp_path, masks, {"size": (7, 8), "values": (6, 8), "rgb": (6, 8)})
    ds = VOCSegmentation(root, "train")
    png = root / "SegmentationClass"
    with pytest.raises(DataError, match=r"mask is 8x6 but image .*size.jpg is 8x7") as err:
        ds[0]
    assert str(png / "size.png") in str(err.value)
    with pytest.raises(DataError, match=r"mask values \[21, 30\] outside 0..20") as err:
        ds[1]
    assert str(png / "values.png") in str(err.value)
    with pytest.raises(DataError, match="mode RGB") as err:
        ds[2]
    assert str(png / "rgb.png") in str(err.value)
    small = VOCSegmentation(root, "train", classes=["background", "thing"])
    with pytest.raises(DataError, match=r"outside 0..1"):
        small[1]
    (root / "JPEGImages" / "rgb.jpg").unlink()
    with pytest.raises(DataError, match=r"train\.txt lists 'rgb': image not found: no .*rgb\.\{jpg/jpeg/png/"):
        VOCSegmentation(root, "train")
    Image.new("RGB", (8, 6)).save(root / "JPEGImages" / "rgb.TIF")  # another extension, upper case
    assert VOCSegmentation(root, "train").image_path(2).name == "rgb.TIF"
    (png / "rgb.png").unlink()
    with pytest.raises(DataError, match="file not found") as err:
        VOCSegmentation(root, "train")
    assert str(png / "rgb.png") in str(err.value)


def test_degenerate_boxes_dropped_with_one_warning(tmp_path):
    xml = XML_B.replace(
        "</annotation>",
        (
            "<object><name>bird</name><bndbox><xmin>9</xmin><ymin>2</ymin><xmax>8</xmax><ymax>9</ymax></bndbox></object>"
            "<object><name>bird</name><bndbox><xmin>3</xmin><ymin>6</ymin><xmax>8</xmax><ymax>4</ymax></bndbox></object>"
            "</annotation>"
        ),
    )  # boxes inverted in x and in y
    root = _voc(tmp_path, {"b": xml}, {"b": (10, 20)})
    with pytest.warns(UserWarning, match="dropped 2 degenerate boxes"):
        ds = VOCDetection(root, "train", classes=["bird"])
    assert ds[0][1]["boxes"].tolist() == [[2, 1, 8, 9]]
