"""Readable prediction pictures: class legends on detection and segmentation PNGs, small segmentation panels upscaled.

A legend square is filled with the exact class colour inside a grey outline (``font_size - 2`` squared pixels), and
the legend strip is white with black text, so each class colour is counted exactly in the strip below the panels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from se_plugins.data import SHAPE_CLASSES, make_shapes
from se_plugins.engine.config import load_config
from se_plugins.engine.tasks.detection import DetectionTask
from se_plugins.engine.tasks.segmentation import SegmentationTask
from se_plugins.engine.visualize import (
    IGNORE_COLOR,
    LEGEND_FONT_SIZE,
    MIN_PANEL_SIZE,
    add_legend,
    class_color,
    legend_entries,
    mask_legend_entries,
    upscale,
    upscale_factor,
)

REPO = Path(__file__).resolve().parents[1]
SQUARE = (LEGEND_FONT_SIZE - 2) ** 2  # exact-colour pixels of one legend square


def colour_counts(strip: np.ndarray) -> dict[tuple[int, int, int], int]:
    """How many pixels of each exact RGB colour a ``[H, W, 3]`` array holds."""
    colours, counts = np.unique(strip.reshape(-1, 3), axis=0, return_counts=True)
    return {tuple(int(v) for v in c): int(n) for c, n in zip(colours, counts, strict=True)}


def test_upscale_factor_and_nearest_masks():
    assert upscale_factor(96, 96) == 3 and upscale_factor(76, 500) == 4 and upscale_factor(256, 300) == 1
    assert upscale_factor(600, 800) == 1 and upscale_factor(100, 100, min_size=512) == 6
    mask = torch.tensor([[0, 1], [255, 2]], dtype=torch.uint8)
    big = upscale(mask, 3, nearest=True)
    assert big.dtype == torch.uint8 and big.shape == (6, 6)
    assert torch.equal(big[::3, ::3], mask) and torch.equal(big, torch.kron(mask.int(), torch.ones(3, 3)).to(big.dtype))
    image = torch.rand(3, 8, 10, generator=torch.Generator().manual_seed(0))
    up = upscale(image, 4)
    assert up.shape == (3, 32, 40) and up.min() >= 0 and up.max() <= 1
    # bilinear upsampling of a constant image is that constant; uint8 input is read as 0..255
    assert torch.allclose(upscale(torch.full((3, 5, 5), 51, dtype=torch.uint8), 2), torch.full((3, 10, 10), 0.2))
    assert upscale(mask, 1) is mask


def test_legend_entries_names_and_colours():
    names = ["circle", "square", "triangle"]
    assert legend_entries([3, 1, 3, 1]) == [("1", class_color(1)), ("3", class_color(3))]
    assert legend_entries([3, 1, 7], names) == [
        ("circle", class_color(1)),
        ("triangle", class_color(3)),
        ("7", class_color(7)),
    ]
    with_background = ["background", *names]
    assert legend_entries([2], with_background, first_label=0) == [("square", class_color(2))]
    masks = [torch.tensor([[0, 2], [255, 2]]), torch.tensor([[3, 0], [0, 0]])]
    assert mask_legend_entries(masks, with_background) == [
        ("square", class_color(2)),
        ("triangle", class_color(3)),
        ("ignore", IGNORE_COLOR),
    ]
    assert mask_legend_entries([torch.zeros(2, 2, dtype=torch.long)], with_background) == []


def test_add_legend_draws_one_square_per_entry_and_wraps():
    image = torch.zeros(3, 40, 300)
    entries = legend_entries([1, 2, 3, 4], list(SHAPE_CLASSES))
    drawn = add_legend(image, entries)
    assert drawn.dtype == torch.uint8 and drawn.shape[0] == 3 and drawn.shape[2] == 300 and drawn.shape[1] > 40
    assert torch.equal(drawn[:, :40], torch.zeros(3, 40, 300, dtype=torch.uint8))  # the picture is unchanged
    counts = colour_counts(drawn[:, 40:].permute(1, 2, 0).numpy())
    assert all(counts.get(colour) == SQUARE for _, colour in entries), counts
    assert (0, 0, 0) in counts and counts[(255, 255, 255)] > counts[(0, 0, 0)]  # black text on white
    narrow = add_legend(torch.zeros(3, 40, 70), entries)  # one entry per row
    assert narrow.shape[1] - 40 > 3 * (drawn.shape[1] - 40)
    assert all(colour_counts(narrow[:, 40:].permute(1, 2, 0).numpy()).get(c) == SQUARE for _, c in entries)
    assert torch.equal(add_legend(image, []), image.to(torch.uint8))


class RelabelDetector(torch.nn.Module):
    """The ground truth boxes of the next image, each with the next class, score 0.9, plus one box under the
    drawing threshold (score 0.1) labelled ``hidden_label``."""

    def __init__(self, dataset, hidden_label: int) -> None:
        super().__init__()
        self.targets = [dataset[i][1] for i in range(len(dataset))]
        self.next, self.hidden_label = 0, hidden_label

    def forward(self, images):
        out = []
        for _ in images:
            t = self.targets[self.next]
            self.next += 1
            boxes = torch.cat([t["boxes"].as_subclass(torch.Tensor), torch.tensor([[1.0, 1.0, 20.0, 20.0]])])
            labels = torch.cat([t["labels"] % 4 + 1, torch.tensor([self.hidden_label])])
            scores = torch.cat([torch.full((len(t["labels"]),), 0.9), torch.tensor([0.1])])
            out.append({"boxes": boxes, "labels": labels, "scores": scores})
        return out


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes"), num_train=2, num_val=3, image_size=64, seed=5)


def test_detection_pictures_have_a_legend_of_the_drawn_classes(shapes, tmp_path):
    overrides = [f"data.root={shapes.root}", "data.shapes.num_train=2", "data.shapes.num_val=3"]
    overrides += ["data.shapes.image_size=64", "data.shapes.seed=5", "eval.score_threshold=0.5"]
    task = DetectionTask(load_config(REPO / "configs/detection/shapes_fasterrcnn_se_r18.yaml", overrides))
    val = task.build_val_dataset()
    files = task.draw_predictions(RelabelDetector(val, hidden_label=5), val, tmp_path, num=1)
    picture = np.array(Image.open(files[0]))
    assert picture.shape[1] == 2 * 64 + 4 and picture.shape[0] > 64  # truth | predictions, legend below
    truth = set(val[0][1]["labels"].tolist())
    drawn = sorted(truth | {v % 4 + 1 for v in truth})  # ground truth and the predictions over the threshold
    counts = colour_counts(picture[64:])
    for label in range(1, 6):  # label 5 (score 0.1, not drawn) has no entry
        assert counts.get(class_color(label), 0) == (SQUARE if label in drawn else 0), (label, drawn)
    expected = [(SHAPE_CLASSES[label - 1], class_color(label)) for label in drawn]
    assert np.array_equal(
        picture[64:], add_legend(torch.zeros(3, 64, picture.shape[1]), expected)[:, 64:].permute(1, 2, 0)
    )


class StripesModel(torch.nn.Module):
    """Logits of vertical stripes: column x predicts class ``(x // 12) % num_classes`` (every class present)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        classes = (torch.arange(x.shape[-1]) // 12) % self.num_classes
        logits = torch.nn.functional.one_hot(classes, self.num_classes).T.float()  # [C, W]
        return logits[None, :, None, :].expand(x.shape[0], -1, x.shape[-2], -1)


def test_segmentation_pictures_are_upscaled_with_a_legend(shapes, tmp_path):
    overrides = [f"data.root={shapes.root}", "data.shapes.num_train=2", "data.shapes.num_val=3"]
    overrides += ["data.shapes.image_size=64", "data.shapes.seed=5"]
    task = SegmentationTask(load_config(REPO / "configs/segmentation/shapes_unet_se_r18.yaml", overrides))
    _, val = task.build_datasets()
    files = task.draw_predictions(StripesModel(task.num_classes), val, tmp_path, num=1)
    picture = np.array(Image.open(files[0]))
    k = upscale_factor(64, 64)
    assert k * 64 >= MIN_PANEL_SIZE and (k - 1) * 64 < MIN_PANEL_SIZE
    assert picture.shape[1] == 3 * k * 64 + 2 * 4 and picture.shape[0] > k * 64  # 3 upscaled panels + legend
    strip = colour_counts(picture[k * 64 :])
    for c in range(1, task.num_classes):  # the stripes predict every class: each one has its square
        assert strip.get(class_color(c)) == SQUARE, (c, strip)
    mask = val[0][1].as_subclass(torch.Tensor)
    assert (mask == 255).any()  # the shapes' VOC masks have a 255 border: an 'ignore' entry (white square)
    names = task.class_names
    expected = [(names[c], class_color(c)) for c in range(1, task.num_classes)] + [("ignore", IGNORE_COLOR)]
    legend = add_legend(torch.zeros(3, k * 64, picture.shape[1]), expected)[:, k * 64 :].permute(1, 2, 0)
    assert np.array_equal(picture[k * 64 :], legend)
    # the image panel is the bilinear upscale of the 64 px image, the masks are nearest-neighbour blocks
    image_panel = torch.from_numpy(picture[: k * 64, : k * 64]).permute(2, 0, 1)
    expected = (upscale(val[0][0].as_subclass(torch.Tensor), k) * 255).round().to(torch.uint8)
    assert torch.equal(image_panel, expected)
