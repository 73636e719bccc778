"""1- and 4-channel, 16-bit data through the detection and segmentation tasks (SE backbones), prediction PNGs of such
data, channel statistics for ``data.mean``/``data.std``, and the warmup warning.

The data set is a real COCO data set written here: 16-bit single-band PNGs and 4-band (RGB + NIR) TIFFs with one
bright square per image (polygon + box annotations).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
import timm
import torch
import torchvision
import yaml
from PIL import Image

from se_plugins.data.stats import channel_stats
from se_plugins.engine.channel_stats import config_channel_stats
from se_plugins.engine.channel_stats import main as channel_stats_main
from se_plugins.engine.config import load_config
from se_plugins.engine.tasks.detection import DetectionTask
from se_plugins.engine.tasks.segmentation import SegmentationTask
from se_plugins.engine.trainer import Trainer, warmup_warning
from se_plugins.engine.visualize import render_image, to_uint8
from se_plugins.errors import ConfigError, DataError

SIZE = 64


def write_dataset(root: Path, kind: str, num: int, seed: int) -> tuple[Path, Path]:
    """``num`` images of ``kind`` ("gray16": 12-bit values in 16-bit PNGs; "rgbn": 4-band uint16 TIFFs)."""
    rng = np.random.default_rng(seed)
    img_dir = root / kind / f"images{seed}"
    img_dir.mkdir(parents=True)
    images, annotations = [], []
    for i in range(num):
        bands = 1 if kind == "gray16" else 4
        pixels = rng.integers(200, 900, (bands, SIZE, SIZE)).astype(np.uint16)
        x, y, w = (int(v) for v in rng.integers(4, 28, 3))
        w += 12
        pixels[:, y : y + w, x : x + w] = rng.integers(3000, 4095, (bands, 1, 1))  # a bright square
        name = f"{i:03d}.png" if kind == "gray16" else f"{i:03d}.tif"
        if kind == "gray16":
            Image.fromarray(pixels[0]).save(img_dir / name)
        else:
            tifffile.imwrite(img_dir / name, pixels, photometric="minisblack", planarconfig="separate")
        images.append({"id": i + 1, "file_name": name, "height": SIZE, "width": SIZE})
        polygon = [x, y, x + w, y, x + w, y + w, x, y + w]
        annotations.append(
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 1,
                "bbox": [x, y, w, w],
                "area": w * w,
                "iscrowd": 0,
                "segmentation": [polygon],
            }
        )
    ann = root / kind / f"instances{seed}.json"
    ann.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "cell"}]})
    )
    return img_dir, ann


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, dict[str, str]]:
    root = tmp_path_factory.mktemp("imagery")
    out = {}
    for kind in ("gray16", "rgbn"):
        (ti, ta), (vi, va) = write_dataset(root, kind, 4, seed=0), write_dataset(root, kind, 2, seed=1)
        out[kind] = {
            "train_images": str(ti),
            "train_annotations": str(ta),
            "val_images": str(vi),
            "val_annotations": str(va),
        }
    return out


def imagery_data(datasets, kind: str) -> dict:
    data = {"format": "coco", **datasets[kind], "num_workers": 0, "hflip_prob": 0.5}
    if kind == "gray16":
        data.update(channels=1, intensity="range", intensity_range=[0, 4095])
    else:
        data.update(channels=4, intensity="percentile", mean=[0.3, 0.3, 0.3, 0.3], std=[0.35, 0.35, 0.35, 0.35])
    return data


def detection_config(tmp_path: Path, data: dict, **model) -> Path:
    cfg = {
        "task": "detection",
        "output_dir": str(tmp_path / "det"),
        "device": "cpu",
        "model": {
            "name": "fasterrcnn_timm_fpn",
            "backbone": "se_plugin_resnet10t",
            "min_size": 64,
            "max_size": 96,
            "se": {"init": "random", "reduction": 8},
            "kwargs": {
                "out_indices": [2, 3, 4],
                "fpn_channels": 16,
                "extra_blocks": None,
                "anchor_sizes": [[12, 16], [24, 32], [48, 64]],
                "rpn_post_nms_top_n_train": 50,
                "rpn_post_nms_top_n_test": 50,
                "box_batch_size_per_image": 32,
                "box_score_thresh": 0.0,
            },
            **model,
        },
        "data": data,
        "train": {
            "epochs": 1,
            "batch_size": 2,
            "optimizer": "adamw",
            "lr": 0.001,
            "warmup_iters": 0,
            "max_iters_per_epoch": 1,
            "num_vis": 1,
            "tensorboard": False,
        },
        "eval": {"batch_size": 2},
    }
    path = tmp_path / "det.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def segmentation_config(tmp_path: Path, data: dict, **model) -> Path:
    cfg = {
        "task": "segmentation",
        "output_dir": str(tmp_path / "seg"),
        "device": "cpu",
        "model": {
            "name": "se_unet",
            "backbone": "resnet18",
            "se": {"init": "random", "reduction": 8},
            "kwargs": {"encoder_depth": 3, "decoder_channels": [16, 8, 8]},
            **model,
        },
        "data": data,
        "train": {
            "epochs": 1,
            "batch_size": 2,
            "optimizer": "adamw",
            "lr": 0.001,
            "warmup_iters": 0,
            "max_iters_per_epoch": 1,
            "num_vis": 1,
            "tensorboard": False,
        },
        "eval": {"batch_size": 2, "metric": "miou"},
    }
    path = tmp_path / "seg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def first_conv(model: torch.nn.Module) -> torch.nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))


# ------------------------------------------------------------------------------------------------ training steps


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gray16", "rgbn"])
def test_detection_trains_on_1_and_4_channel_16bit_data(tmp_path, datasets, kind, caplog):
    cfg = load_config(detection_config(tmp_path, imagery_data(datasets, kind)))
    with caplog.at_level(logging.INFO, logger="se_plugins"):
        metrics = Trainer(cfg).fit()
    assert "AP50" in metrics
    channels = cfg.data.channels
    task = DetectionTask(cfg)
    model = task.build_model()
    assert first_conv(model.backbone).in_channels == channels
    assert len(model.transform.image_mean) == channels
    assert any(m.__class__.__name__.startswith("SqueezeExcite") for m in model.modules())
    image, _ = task.build_val_dataset()[0]
    assert image.shape[0] == channels and 0.0 <= image.min() and image.max() <= 1.0
    assert sum("intensity" in r.getMessage() for r in caplog.records) == 1  # the rule, logged once
    png = next((Path(cfg.output_dir) / "predictions").glob("*.png"))
    assert np.asarray(Image.open(png)).shape[-1] == 3


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gray16", "rgbn"])
def test_segmentation_trains_on_1_and_4_channel_16bit_data(tmp_path, datasets, kind):
    cfg = load_config(segmentation_config(tmp_path, imagery_data(datasets, kind)))
    metrics = Trainer(cfg).fit()
    assert 0.0 <= metrics["mIoU"] <= 1.0
    task = SegmentationTask(cfg)
    model = task.build_model()
    assert first_conv(model).in_channels == cfg.data.channels
    batch = task.collate([task.build_datasets()[0][i] for i in range(2)])
    losses = task.train_step(model, batch, torch.device("cpu"))
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and all(p.grad is not None for p in model.parameters())
    assert len(list((Path(cfg.output_dir) / "predictions").glob("*.png"))) == 1


def test_pretrained_first_conv_is_adapted_by_timm_and_smp(tmp_path, datasets):
    """4-channel models from 3-channel local weights: the stem is timm's ``adapt_input_conv`` of the saved one."""
    data = imagery_data(datasets, "rgbn")
    r10 = tmp_path / "resnet10t.pth"
    torch.save(timm.create_model("resnet10t").state_dict(), r10)
    det = DetectionTask(load_config(detection_config(tmp_path, data, pretrained_backbone=str(r10))))
    conv = det.build_model().backbone.body.conv1[0]
    saved = torch.load(r10, weights_only=True)["conv1.0.weight"]
    torch.testing.assert_close(conv.weight, timm.models.adapt_input_conv(4, saved), rtol=0, atol=0)
    r18 = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), r18)
    seg = SegmentationTask(load_config(segmentation_config(tmp_path, data, pretrained_backbone=str(r18))))
    saved = torch.load(r18, weights_only=True)["conv1.weight"]
    torch.testing.assert_close(seg.build_model().encoder.conv1.weight, timm.models.adapt_input_conv(4, saved))


def test_channel_errors_are_one_line_config_errors(tmp_path, datasets):
    data = imagery_data(datasets, "rgbn")
    three = load_config(segmentation_config(tmp_path, data), ["data.channels=3", "data.mean=null", "data.std=null"])
    with pytest.raises(DataError, match=r"000\.tif: image has 4 channels but data\.channels is 3"):
        SegmentationTask(three).build_datasets()  # at start, from the first image, not in the middle of an epoch
    with pytest.raises(DataError, match=r"000\.tif: image has 4 channels but data\.channels is 3"):
        DetectionTask(
            load_config(detection_config(tmp_path, data), ["data.channels=3", "data.mean=null", "data.std=null"])
        ).build_datasets()
    with pytest.raises(ConfigError, match="fasterrcnn_se_resnet50_fpn has torchvision's 3-channel ResNet stem"):
        DetectionTask(
            load_config(
                detection_config(tmp_path, data), ["model.name=fasterrcnn_se_resnet50_fpn", "model.backbone=null"]
            )
        ).build_model()
    with pytest.raises(ConfigError, match=r"data.mean/data.std: required for data.channels 4"):
        SegmentationTask(load_config(segmentation_config(tmp_path, data), ["data.mean=null"])).image_mean_std()
    with pytest.raises(ConfigError, match=r"model.kwargs.in_channels: set data.channels instead"):
        SegmentationTask(load_config(segmentation_config(tmp_path, data), ["model.kwargs.in_channels=3"])).build_model()
    with pytest.raises(ConfigError, match=r"data.mean: 3 values for data.channels 4"):
        load_config(segmentation_config(tmp_path, data), ["data.mean=[0.1,0.2,0.3]"])
    with pytest.raises(ConfigError, match=r"data.intensity_range: .* got null"):
        load_config(segmentation_config(tmp_path, data), ["data.intensity=range"])


# ------------------------------------------------------------------------------------------------ statistics


def test_channel_stats_equal_torch_over_all_pixels(tmp_path, datasets, capsys):
    data = imagery_data(datasets, "rgbn")
    cfg = load_config(segmentation_config(tmp_path, data))
    stats = config_channel_stats(cfg)
    task = SegmentationTask(cfg)
    reader = task.image_reader()
    files = sorted(Path(data["train_images"]).glob("*.tif"))
    pixels = torch.cat([reader(f).reshape(4, -1) for f in files], dim=1).double()
    assert stats.num_images == 4 and stats.num_pixels == pixels.shape[1]
    np.testing.assert_allclose(stats.mean, pixels.mean(1).numpy(), rtol=1e-12)
    np.testing.assert_allclose(stats.std, pixels.std(1, correction=0).numpy(), rtol=1e-9)
    assert channel_stats([torch.ones(1, 2, 2), torch.zeros(1, 2, 6)]).mean == (0.25,)
    assert channel_stats_main([str(tmp_path / "seg.yaml"), "--max-images", "2"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["channels"] == 4 and len(printed["data"]["mean"]) == 4


# ------------------------------------------------------------------------------------------------ rendering


def test_render_image_stretches_16bit_and_multiband_data():
    raw = torch.arange(4096, dtype=torch.float32).reshape(1, 64, 64)
    dark = raw / 65535  # a 12-bit image normalised by the 16-bit range: under 7 % of [0, 1]
    shown = render_image(dark)
    assert shown.shape == (3, 64, 64) and shown.dtype == torch.uint8
    assert shown.min() == 0 and shown.max() == 255  # stretched, not a black picture
    photo = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(render_image(photo), to_uint8(photo))  # ordinary images are drawn as they are
    bands = torch.stack([dark[0], 1 - dark[0], dark[0] * 0.5, torch.zeros(64, 64)])
    rgb = render_image(bands)
    assert rgb.shape == (3, 64, 64) and rgb[0].max() == 255 and rgb[2].max() == 255
    # band 2 is 1 - band 1: stretched per band, it is the negative of band 1 (up to rounding to 8 bits)
    assert (rgb[0].int() + rgb[1].int() - 255).abs().max() <= 1


# ------------------------------------------------------------------------------------------------ warmup


def test_warmup_longer_than_training_is_warned_with_both_numbers(tmp_path, datasets):
    cfg = load_config(
        segmentation_config(tmp_path, imagery_data(datasets, "gray16")),
        ["train.warmup_iters=1000", "train.epochs=2", "train.lr=0.002", "train.scheduler=cosine"],
    )
    message = warmup_warning(cfg.train, iters_per_epoch=50)
    assert "train.warmup_iters 1000 >= the 100 training iterations (2 epochs x 50 iterations)" in message
    factor = 0.001 * (1 - 99 / 1000) + 99 / 1000  # warmup at the last step, before the cosine decay
    assert "peak" in message and "never reaches train.lr 0.002" in message
    peak = float(message.rsplit("peak ", 1)[1].rstrip(")"))
    assert peak <= 0.002 * factor * 1.001
    half = load_config(segmentation_config(tmp_path, imagery_data(datasets, "gray16")), ["train.warmup_iters=60"])
    assert ">= 50 % of the 100 training iterations" in warmup_warning(half.train, 100)
    assert warmup_warning(half.train, 121) is None
