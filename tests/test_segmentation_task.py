"""SegmentationTask end to end through the real CLI on tiny generated data, with hand-computed metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from se_plugins.cli import main
from se_plugins.data import voc_palette
from se_plugins.engine.config import load_config
from se_plugins.engine.tasks.segmentation import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SegmentationTask,
    drop_unused_encoder_stages,
)
from se_plugins.segmentation import se_unet

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs" / "segmentation"
DEMO = CONFIG_DIR / "shapes_unet_se_r18.yaml"
NUM_CLASSES = 5  # background + 4 shapes
IMAGE_SIZE = 76  # not a multiple of the output stride (8): evaluation must pad and crop
# contiguous memory format: the hand computations below then give bit-identical logits
TINY_MODEL = ["model.kwargs.encoder_depth=3", "model.kwargs.decoder_channels=[16,8,8]", "train.channels_last=false"]


def tiny_overrides(root: Path, out: Path) -> list[str]:
    return [
        f"data.root={root}",
        "data.shapes.num_train=8",
        "data.shapes.num_val=4",
        f"data.shapes.image_size={IMAGE_SIZE}",
        "data.num_workers=0",
        "train.epochs=1",
        "train.batch_size=4",
        "train.warmup_iters=0",
        "train.tensorboard=false",
        "eval.batch_size=4",
        f"output_dir={out}",
        *TINY_MODEL,
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run through ``se-plugins train``: (data root, run dir, overrides)."""
    tmp = tmp_path_factory.mktemp("seg")
    overrides = tiny_overrides(tmp / "shapes", tmp / "run")
    assert main(["train", str(DEMO), "--set", *overrides]) == 0
    return tmp / "shapes", tmp / "run", overrides


def test_train_writes_checkpoints_metrics_and_predictions(trained):
    _, run, _ = trained
    for name in ("best.pth", "last.pth", "config.yaml", "metrics.jsonl", "curves.png"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["type"] == "eval"]
    assert len(evals) == 1 and 0.0 <= evals[0]["mIoU"] <= 1.0
    assert {"pixel_acc", "mAcc", "IoU/background", "IoU/star"} <= set(evals[0])
    pngs = sorted((run / "predictions").glob("*.png"))
    assert len(pngs) == 4
    with Image.open(pngs[0]) as im:  # image | ground truth | prediction, 4 px gaps, upscaled 4x (>= 256 px), legend
        assert im.size[0] == 3 * 4 * IMAGE_SIZE + 8 and im.size[1] > 4 * IMAGE_SIZE


def _hand_predictions(checkpoint: Path, images: torch.Tensor) -> np.ndarray:
    """Labels from the checkpoint's model, with normalising, padding and cropping written out here."""
    model = se_unet("resnet18", NUM_CLASSES, encoder_depth=3, decoder_channels=[16, 8, 8], se_init="random")
    drop_unused_encoder_stages(model)  # layer3/layer4 never run with encoder_depth=3
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    model.eval()
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x = (images - mean) / std
    pad = -IMAGE_SIZE % 8
    x = F.pad(x, (0, pad, 0, pad))
    with torch.no_grad():
        logits = model(x)[..., :IMAGE_SIZE, :IMAGE_SIZE]
    return logits.argmax(1).numpy()


def test_eval_miou_equals_hand_confusion_matrix(trained, tmp_path):
    root, run, overrides = trained
    out = tmp_path / "eval.json"
    assert main(["eval", str(DEMO), "--checkpoint", str(run / "best.pth"), "--out", str(out), "--set", *overrides]) == 0
    metrics = json.loads(out.read_text())["metrics"]

    voc = root / "voc"
    ids = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    images = torch.stack(
        [torch.from_numpy(np.array(Image.open(voc / "JPEGImages" / f"{i}.jpg").convert("RGB"))) for i in ids]
    )
    images = images.permute(0, 3, 1, 2).float() / 255
    masks = np.stack([np.array(Image.open(voc / "SegmentationClass" / f"{i}.png")) for i in ids]).astype(np.int64)
    pred = _hand_predictions(run / "best.pth", images)

    valid = masks != 255
    cm = np.bincount(masks[valid] * NUM_CLASSES + pred[valid], minlength=NUM_CLASSES**2)
    cm = cm.reshape(NUM_CLASSES, NUM_CLASSES).astype(np.float64)
    tp, gt, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    union = gt + predicted - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    assert metrics["mIoU"] == pytest.approx(np.nanmean(iou), abs=1e-12)
    assert metrics["pixel_acc"] == pytest.approx(tp.sum() / cm.sum(), abs=1e-12)
    assert metrics["mAcc"] == pytest.approx(np.nanmean(np.where(gt > 0, tp / np.maximum(gt, 1), np.nan)), abs=1e-12)
    names = ["background", "circle", "square", "triangle", "star"]
    for name, value in zip(names, iou, strict=True):
        assert metrics[f"IoU/{name}"] == pytest.approx(value, abs=1e-12, nan_ok=True)


def _task(tmp_path: Path, *extra: str) -> SegmentationTask:
    cfg = load_config(DEMO, [f"data.root={tmp_path}", "model.num_classes=3", *TINY_MODEL, *extra])
    return SegmentationTask(cfg)


@pytest.mark.parametrize("loss", ["ce", "dice", "focal", "ce+dice"])
def test_every_loss_trains_one_step(tmp_path, loss):
    task = _task(tmp_path, f"loss.name={loss}", "loss.dice_weight=0.5")
    torch.manual_seed(0)
    model = task.build_model()
    # two images of different odd sizes: padded to one batch, the padding ignored
    images = [torch.rand(3, 37, 45), torch.rand(3, 29, 51)]
    masks = [torch.randint(0, 3, (37, 45)), torch.randint(0, 3, (29, 51))]
    masks[0][:5] = 255
    losses = task.train_step(model, task.collate(list(zip(images, masks, strict=True))), torch.device("cpu"))
    assert torch.isfinite(losses["loss"]) and losses["loss"] > 0
    if loss == "ce+dice":
        assert losses["loss"].item() == pytest.approx(losses["loss_ce"] + 0.5 * losses["loss_dice"])
    losses["loss"].backward()
    # every parameter gets a finite gradient (no unused encoder stage: DDP requires it)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_ce_matches_torch_and_all_ignored_is_zero(tmp_path):
    task = _task(tmp_path)
    logits = torch.randn(2, 3, 6, 7, generator=torch.Generator().manual_seed(0))
    target = torch.randint(0, 3, (2, 6, 7), generator=torch.Generator().manual_seed(1))
    target[0, :2] = 255
    expected = F.cross_entropy(logits, target, ignore_index=255)
    assert task.loss_terms(logits, target)["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert task.loss_terms(logits, torch.full_like(target, 255))["loss"].item() == 0.0


class _Echo(nn.Module):
    """Returns its input as 'logits': every output pixel must land where its input pixel was."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


def test_pad_and_crop_keep_logits_aligned(tmp_path):
    task = _task(tmp_path)
    image = torch.rand(3, 37, 53, generator=torch.Generator().manual_seed(0))
    logits = task.predict(_Echo(), image)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(logits[0], (image - mean) / std, rtol=0, atol=0)

    model = task.build_model().eval()  # a real U-Net (output stride 8): pads 37x53 to 40x56
    logits = task.predict(model, image)
    assert logits.shape == (1, 3, 37, 53)
    padded = F.pad((image - mean) / std, (0, 3, 0, 3))
    with torch.no_grad():
        torch.testing.assert_close(logits, model(padded[None])[..., :37, :53], rtol=0, atol=0)


def test_image_size_resizes_the_input_and_the_logits_back(tmp_path):
    task = _task(tmp_path, "data.image_size=48")
    model = task.build_model().eval()
    image = torch.rand(3, 37, 53, generator=torch.Generator().manual_seed(0))
    assert task.predict(model, image).shape == (1, 3, 37, 53)


def test_coco_format_reads_the_same_masks_as_voc(trained):
    root, _, overrides = trained
    coco = [
        "data.format=coco",
        f"data.root={root / 'coco'}",
        "data.train_images=train",
        "data.train_annotations=annotations/instances_train.json",
        "data.val_images=val",
        "data.val_annotations=annotations/instances_val.json",
    ]
    coco_task = SegmentationTask(load_config(DEMO, [*overrides, *coco]))
    voc_task = SegmentationTask(load_config(DEMO, overrides))  # the fixture's data, as it is
    coco_val = coco_task.build_datasets()[1]
    voc_val = voc_task.build_val_dataset()
    assert coco_task.class_names == voc_task.class_names == ["background", "circle", "square", "triangle", "star"]
    for i in range(len(voc_val)):
        (_, coco_mask), (_, voc_mask) = coco_val[i], voc_val[i]
        scored = voc_mask != 255  # the VOC PNGs add a 2 px ignore band around each shape
        assert torch.equal(coco_mask[scored], voc_mask[scored])


def _write_voc(root: Path, masks: dict[str, np.ndarray], sizes: dict[str, tuple[int, int]] | None = None) -> None:
    """A tiny VOC segmentation folder: one image per mask (same size unless ``sizes`` says otherwise)."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, mask in masks.items():
        h, w = (sizes or {}).get(name, mask.shape)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        png = Image.fromarray(mask.astype(np.uint8))
        png.putpalette(voc_palette())
        png.save(root / "SegmentationClass" / f"{name}.png")
    for split in ("train", "val"):
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("".join(f"{n}\n" for n in masks))


def _cli_error(tmp_path: Path, capsys, *extra: str) -> str:
    overrides = [
        "data.format=voc",
        f"data.root={tmp_path / 'voc'}",
        "data.classes=[background,a,b]",
        "train.epochs=1",
        "train.tensorboard=false",
        f"output_dir={tmp_path / 'run'}",
        *TINY_MODEL,
        *extra,
    ]
    capsys.readouterr()
    assert main(["train", str(DEMO), "--set", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("se-plugins: error:"), err
    return err


@pytest.mark.parametrize("workers", [0, 1])
def test_mask_of_wrong_size_is_a_one_line_error(tmp_path, capsys, workers):
    good = np.zeros((32, 32), dtype=np.int64)
    _write_voc(tmp_path / "voc", {"a": good, "b": good}, sizes={"b": (32, 40)})
    err = _cli_error(tmp_path, capsys, f"data.num_workers={workers}", "train.batch_size=2")
    assert "b.png" in err and "32x32" in err and "40x32" in err
    assert "Traceback" not in err and "worker" not in err  # a worker's error is re-raised as it was


def test_mask_value_outside_classes_is_a_one_line_error(tmp_path, capsys):
    bad = np.zeros((32, 32), dtype=np.int64)
    bad[3:6, 3:6] = 7
    bad[10:12] = 255
    _write_voc(tmp_path / "voc", {"a": np.ones((32, 32), dtype=np.int64), "b": bad})
    err = _cli_error(tmp_path, capsys, "data.num_workers=0", "train.batch_size=2")
    assert "b.png" in err and "[7]" in err and "0..2" in err


def test_missing_image_is_a_one_line_error(tmp_path, capsys):
    _write_voc(tmp_path / "voc", {"a": np.zeros((32, 32), dtype=np.int64)})
    (tmp_path / "voc/ImageSets/Segmentation/train.txt").write_text("a\nghost\n")
    err = _cli_error(tmp_path, capsys, "data.num_workers=0")
    ghost = tmp_path / "voc/JPEGImages/ghost"
    assert err.endswith(
        f"train.txt lists 'ghost': image not found: no {ghost}.{{jpg/jpeg/png/tif/tiff/bmp/webp}} exists"
    )


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_configs_load_and_build(path):
    cfg = load_config(path)
    assert cfg.task == "segmentation" and cfg.eval.metric == "miou"
    task = SegmentationTask(load_config(path, ["model.num_classes=3"]))
    with torch.device("meta"):  # checks the builder arguments without allocating the weights
        model = task.build_model()
    se_keys = [k for k in model.state_dict() if ".se." in k or "attention2.attention.fc1" in k]
    assert bool(se_keys) == cfg.model.se.enabled


def test_se_and_baseline_configs_differ_only_in_se():
    from omegaconf import OmegaConf

    names = {p.name for p in CONFIG_DIR.glob("*.yaml")}
    for se_name in sorted(n for n in names if "_se_" in n):
        base_name = se_name.replace("_se_", "_")
        assert base_name in names, f"{se_name} has no baseline {base_name}"
        se = OmegaConf.to_container(load_config(CONFIG_DIR / se_name))
        base = OmegaConf.to_container(load_config(CONFIG_DIR / base_name))
        for cfg in (se, base):
            cfg.pop("output_dir")
            cfg["model"].pop("se")
            cfg["model"].pop("name")
        assert se == base, f"{se_name} and {base_name} differ outside model.se / model.name / output_dir"
