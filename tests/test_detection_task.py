"""DetectionTask: CLI runs on tiny shapes data checked against pycocotools; configs; one-line errors; drawing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import yaml
from omegaconf import OmegaConf
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.models.detection import FasterRCNN

from se_plugins import se_modules
from se_plugins.cli import main
from se_plugins.data import SHAPE_CATEGORY_IDS, SHAPE_CLASSES, ShapesPaths, make_shapes
from se_plugins.engine.config import load_config
from se_plugins.engine.distributed import DistInfo
from se_plugins.engine.evaluation import COCO_STAT_NAMES
from se_plugins.engine.logging import read_metrics
from se_plugins.engine.tasks.detection import DetectionTask
from se_plugins.engine.visualize import class_color, draw_detections, draw_mask, hstack_images, save_png

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> ShapesPaths:
    """8 train / 4 val images of 96 px (COCO and VOC layout)."""
    return make_shapes(tmp_path_factory.mktemp("shapes"), num_train=8, num_val=4, image_size=96, seed=3)


def tiny_config(tmp_path: Path, shapes: ShapesPaths, **sections) -> Path:
    """A config for a few CPU iterations: SE-ResNet-10-T + a narrow FPN, 64 px internal size."""
    cfg = {
        "task": "detection",
        "output_dir": str(tmp_path / "run"),
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
                "rpn_pre_nms_top_n_train": 200,
                "rpn_post_nms_top_n_train": 50,
                "rpn_pre_nms_top_n_test": 500,  # many test proposals: some hit the shapes even this early
                "rpn_post_nms_top_n_test": 200,
                "box_batch_size_per_image": 32,
                "box_score_thresh": 0.0,  # keep low-score detections: more to compare with pycocotools
            },
        },
        "data": {
            "format": "coco",
            "root": str(shapes.root / "coco"),
            "train_images": "train",
            "train_annotations": "annotations/instances_train.json",
            "val_images": "val",
            "val_annotations": "annotations/instances_val.json",
            "num_workers": 0,
        },
        "train": {
            "epochs": 1,
            "batch_size": 2,
            "optimizer": "adamw",
            "lr": 0.001,
            "warmup_iters": 2,
            "log_every": 1,
            "num_vis": 2,
            "tensorboard": False,
        },
        "eval": {"batch_size": 2},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            cfg[section].update(values)
        else:
            cfg[section] = values
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def last_eval(run: Path) -> dict:
    return [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "eval"][-1]


def pycocotools_stats(cfg_path: Path, checkpoint: Path, ann_file: Path, img_dir: Path) -> tuple[list[float], int]:
    """COCOeval of the checkpoint's detections, computed without the package's data or evaluation code."""
    model = DetectionTask(load_config(cfg_path)).build_model()
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    model.eval()
    gt = COCO(str(ann_file))
    cat_ids = sorted(gt.getCatIds())  # contiguous label k is the k-th category id
    results = []
    for image_id in sorted(gt.getImgIds()):
        info = gt.loadImgs(image_id)[0]
        pixels = np.asarray(Image.open(img_dir / info["file_name"]).convert("RGB"), dtype=np.float32) / 255
        with torch.no_grad():
            out = model([torch.from_numpy(pixels).permute(2, 0, 1)])[0]
        for (x1, y1, x2, y2), label, score in zip(
            out["boxes"].tolist(), out["labels"].tolist(), out["scores"].tolist(), strict=True
        ):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": cat_ids[label - 1],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": score,
                }
            )
    coco_eval = COCOeval(gt, gt.loadRes(results), "bbox")
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return [float(v) for v in coco_eval.stats], len(results)


# --------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_train_then_eval_equals_pycocotools(tmp_path, shapes, capsys):
    cfg = tiny_config(tmp_path, shapes)
    assert main(["train", str(cfg), "--set", "train.epochs=2", "train.channels_last=true"]) == 0
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "last.pth", "best.pth", "curves.png"):
        assert (run / name).is_file(), name
    record = last_eval(run)
    assert record["epoch"] == 2
    assert set(COCO_STAT_NAMES) <= set(record)
    pngs = sorted((run / "predictions").glob("*.png"))
    assert len(pngs) == 2
    for png in pngs:
        with Image.open(png) as im:
            im.verify()
        with Image.open(png) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size[0] == 96 * 2 + 4  # truth | predictions
            assert im.size[1] > 96  # the legend below

    out = tmp_path / "eval.json"
    assert main(["eval", str(cfg), "--checkpoint", str(run / "last.pth"), "--out", str(out)]) == 0
    assert "AP50" in capsys.readouterr().out
    evaluated = json.loads(out.read_text())["metrics"]

    stats, num_detections = pycocotools_stats(cfg, run / "last.pth", shapes.coco_val_ann, shapes.coco_val_images)
    expected = dict(zip(COCO_STAT_NAMES, stats, strict=True))
    assert num_detections > 0 and expected["AP50"] > 0 and expected["AR100"] > 0  # a non-trivial comparison
    assert {k: evaluated[k] for k in COCO_STAT_NAMES} == pytest.approx(expected, abs=1e-6)
    assert {k: record[k] for k in COCO_STAT_NAMES} == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path, shapes):
    """Aspect-ratio batches come from a DistributedSampler: 1 epoch + resume == 2 epochs, bit for bit."""
    sets = ["train.max_iters_per_epoch=2", "train.num_vis=0", "train.eval_every=5"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    full, part = tiny_config(tmp_path / "a", shapes), tiny_config(tmp_path / "b", shapes)
    assert main(["train", str(full), "--set", "train.epochs=2", *sets]) == 0
    assert main(["train", str(part), "--set", "train.epochs=1", *sets]) == 0
    resumed = ["train.epochs=2", *sets]
    assert main(["train", str(part), "--set", *resumed, "--resume", str(tmp_path / "b" / "run" / "last.pth")]) == 0
    a = torch.load(tmp_path / "a" / "run" / "last.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "run" / "last.pth", weights_only=True)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_voc_layout_with_voc07_metric(tmp_path, shapes):
    voc = {"format": "voc", "root": str(shapes.voc_root), "train_split": "train", "val_split": "val"}
    cfg = tiny_config(tmp_path, shapes, data={**voc, "classes": SHAPE_CLASSES}, eval={"metric": "voc07"})
    assert main(["train", str(cfg), "--set", "train.max_iters_per_epoch=2", "train.num_vis=0"]) == 0
    record = last_eval(tmp_path / "run")
    per_class = [record[f"AP_{name}"] for name in SHAPE_CLASSES]
    assert all(0.0 <= ap <= 1.0 for ap in per_class)
    assert record["mAP"] == pytest.approx(float(np.mean(per_class)), abs=1e-12)
    ckpt = torch.load(tmp_path / "run" / "best.pth", weights_only=True)
    assert ckpt["main_metric"] == "mAP"

    out = tmp_path / "eval.json"
    assert main(["eval", str(cfg), "--checkpoint", str(tmp_path / "run" / "last.pth"), "--out", str(out)]) == 0
    evaluated = json.loads(out.read_text())["metrics"]
    assert evaluated["mAP"] == pytest.approx(record["mAP"], abs=1e-6)


def test_shapes_format_generates_data_once(tmp_path):
    cfg = load_config(
        REPO / "configs/detection/shapes_fasterrcnn_se_r18.yaml",
        [
            f"data.root={tmp_path / 'shapes'}",
            "data.shapes.num_train=3",
            "data.shapes.num_val=2",
            "data.shapes.image_size=64",
        ],
    )
    task = DetectionTask(cfg)
    train, val = task.build_datasets()
    assert (len(train), len(val)) == (3, 2)
    assert task.class_names == SHAPE_CLASSES
    assert train.label_to_cat_id == dict(enumerate(SHAPE_CATEGORY_IDS, start=1))
    marker = tmp_path / "shapes" / "shapes.json"
    stamp = marker.stat().st_mtime_ns
    task.build_val_dataset()  # reused, not regenerated
    assert marker.stat().st_mtime_ns == stamp


class OracleDetector(torch.nn.Module):
    """Returns the ground truth of the next images of ``dataset`` (in loader order) as detections."""

    def __init__(self, dataset) -> None:
        super().__init__()
        self.targets = [dataset[i][1] for i in range(len(dataset))]
        self.next = 0

    def forward(self, images):
        out = []
        for _ in images:
            t = self.targets[self.next]
            self.next += 1
            n = len(t["labels"])
            out.append({"boxes": t["boxes"].as_subclass(torch.Tensor), "labels": t["labels"], "scores": torch.ones(n)})
        return out


@pytest.mark.parametrize("fmt", ["coco", "voc"])
@pytest.mark.parametrize("metric", ["coco", "voc07", "voc"])
def test_perfect_detections_score_one(tmp_path, shapes, fmt, metric):
    """Category ids (1, 3, 5, 7 in the shapes COCO files) and VOC difficult boxes are mapped right."""
    data = {"format": "voc", "root": str(shapes.voc_root), "classes": SHAPE_CLASSES} if fmt == "voc" else {}
    cfg = load_config(tiny_config(tmp_path, shapes, data=data, eval={"metric": metric}))
    task = DetectionTask(cfg)
    val = task.build_val_dataset()
    metrics = task.evaluate(OracleDetector(val), task.build_val_loader(val, distributed=False), torch.device("cpu"))
    assert metrics[task.main_metric] == pytest.approx(1.0, abs=1e-12)  # 11-point sums round
    if metric == "coco":
        assert metrics["AP"] == 1.0 and set(metrics) == set(COCO_STAT_NAMES)
    else:
        assert {k for k in metrics if k.startswith("AP_")} == {f"AP_{name}" for name in SHAPE_CLASSES}


class JitterDetector(torch.nn.Module):
    """Deterministic imperfect detections: shifted ground truth, every third label wrong, varied scores.

    Looks images up by content, so it answers the same whichever rank or batch an image arrives in.
    """

    def __init__(self, dataset) -> None:
        super().__init__()
        self.table = {}
        for i in range(len(dataset)):
            image, target = dataset[i]
            boxes = target["boxes"].as_subclass(torch.Tensor).clone()
            labels = target["labels"].clone()
            n = len(labels)
            boxes += torch.arange(n, dtype=torch.float32)[:, None] * 1.5  # a growing shift: some IoU < 0.75
            labels[::3] = labels[::3] % len(SHAPE_CLASSES) + 1
            scores = torch.linspace(0.9, 0.3, n) if n else torch.zeros(0)
            self.table[self.key(image)] = {"boxes": boxes, "labels": labels, "scores": scores}

    @staticmethod
    def key(image: torch.Tensor) -> bytes:
        return image.as_subclass(torch.Tensor).contiguous().numpy().tobytes()

    def forward(self, images):
        return [self.table[self.key(image)] for image in images]


def _ddp_eval_worker(rank: int, world_size: int, init_file: str, cfg_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        out = {}
        for metric in ("coco", "voc07"):
            task = DetectionTask(load_config(cfg_path, [f"eval.metric={metric}", "eval.batch_size=1"]))
            task.dist = DistInfo(rank=rank, world_size=world_size)
            val = task.build_val_dataset()
            loader = task.build_val_loader(val, distributed=True)
            assert len(loader) < len(val)  # each rank sees a shard
            out[metric] = task.evaluate(JitterDetector(val), loader, torch.device("cpu"))
        torch.save(out, f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_evaluation_equals_single_process(tmp_path, shapes):
    cfg_path = tiny_config(tmp_path, shapes)
    mp.spawn(_ddp_eval_worker, args=(2, str(tmp_path / "init"), str(cfg_path), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank1 == {"coco": {}, "voc07": {}}  # only rank 0 reports; the trainer broadcasts its result
    for metric in ("coco", "voc07"):
        task = DetectionTask(load_config(cfg_path, [f"eval.metric={metric}"]))
        val = task.build_val_dataset()
        single = task.evaluate(JitterDetector(val), task.build_val_loader(val, False), torch.device("cpu"))
        assert 0.0 < single[task.main_metric] < 1.0  # imperfect detections: a non-trivial comparison
        assert rank0[metric] == single


# --------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("path", CONFIGS, ids=[p.relative_to(REPO / "configs").as_posix() for p in CONFIGS])
def test_every_config_loads(path):
    cfg = load_config(path)
    if cfg.task == "detection":
        default = "AP50" if cfg.eval.metric == "coco" else "mAP"
        assert DetectionTask(cfg).main_metric == (cfg.eval.main_metric or default)


def test_detection_configs_exist_in_pairs():
    names = {p.name for p in (REPO / "configs" / "detection").glob("*.yaml")}
    pairs = ["shapes_fasterrcnn_se_r18", "coco_fasterrcnn_se_r50_fpn", "voc_fasterrcnn_se_r50_fpn"]
    pairs += ["shapes_maskrcnn_se_r18", "shapes_retinanet_se_r18"]
    pairs += [f"coco_{arch}_se_r50_fpn" for arch in ("maskrcnn", "retinanet", "fcos")]
    for se_name in pairs:
        base_name = se_name.replace("_se_", "_")
        assert {f"{se_name}.yaml", f"{base_name}.yaml"} <= names
        se_cfg = OmegaConf.to_container(load_config(REPO / "configs" / "detection" / f"{se_name}.yaml"))
        base_cfg = OmegaConf.to_container(load_config(REPO / "configs" / "detection" / f"{base_name}.yaml"))
        assert se_cfg["model"]["se"].pop("enabled") and not base_cfg["model"]["se"].pop("enabled")
        se_cfg.pop("output_dir"), base_cfg.pop("output_dir")
        assert se_cfg == base_cfg  # the baseline differs only in SE (and where it writes)


def test_shapes_configs_build_their_models():
    models = {}
    for name in ("shapes_fasterrcnn_se_r18", "shapes_fasterrcnn_r18"):
        cfg = load_config(REPO / "configs" / "detection" / f"{name}.yaml")
        models[name] = DetectionTask(cfg).build_model()  # class count known without generating the data
        assert isinstance(models[name], FasterRCNN)
        assert models[name].roi_heads.box_predictor.cls_score.out_features == len(SHAPE_CLASSES) + 1
    assert len(se_modules(models["shapes_fasterrcnn_se_r18"])) > 0
    assert len(se_modules(models["shapes_fasterrcnn_r18"])) == 0
    se_params = {k for k, _ in models["shapes_fasterrcnn_se_r18"].named_parameters()}
    base_params = {k for k, _ in models["shapes_fasterrcnn_r18"].named_parameters()}
    assert base_params < se_params and all(".se." in k for k in se_params - base_params)


@pytest.mark.filterwarnings("ignore:Changing trainable_backbone_layers")  # no pretrained file in this test
@pytest.mark.parametrize("data", ["coco", "voc"])
def test_paper_configs_build_torchvision_models(data):
    """The R50-FPN configs build torchvision's recipe; SE adds the paper's 2,530,992 parameters (r=16)."""
    counts = {}
    for name in (f"{data}_fasterrcnn_se_r50_fpn", f"{data}_fasterrcnn_r50_fpn"):
        overrides = ["model.pretrained_backbone=null", "model.num_classes=21"]  # no weights file, no data here
        cfg = load_config(REPO / "configs" / "detection" / f"{name}.yaml", overrides)
        model = DetectionTask(cfg).build_model()
        assert model.transform.min_size == (cfg.model.min_size,) and model.transform.max_size == cfg.model.max_size
        counts[name] = (sum(p.numel() for p in model.parameters()), len(se_modules(model)))
    (se_params, se_blocks), (base_params, base_blocks) = counts.values()
    assert (se_blocks, base_blocks) == (16, 0)
    assert se_params - base_params == 2_530_992


def test_channels_last_reaches_the_backbone(tmp_path, shapes):
    cfg = load_config(tiny_config(tmp_path, shapes), ["train.channels_last=true"])
    model = DetectionTask(cfg).build_model().eval()
    seen = []
    model.backbone.body.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        model([torch.rand(3, 96, 80)])
    assert seen[0].is_contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------------------------- errors


def one_line_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("se-plugins: error: ")
    return err


def test_missing_annotation_file_is_a_one_line_error(tmp_path, shapes, capsys):
    cfg = tiny_config(tmp_path, shapes, data={"val_annotations": "annotations/nope.json"})
    err = one_line_error(["train", str(cfg)], capsys)
    assert "nope.json" in err and "not found" in err


def test_corrupt_image_is_a_one_line_error(tmp_path, shapes, capsys):
    root = tmp_path / "coco"
    shutil.copytree(shapes.root / "coco", root)
    bad = sorted((root / "train").glob("*.jpg"))[0]
    bad.write_bytes(b"this is not a JPEG")
    cfg = tiny_config(tmp_path, shapes, data={"root": str(root)})
    err = one_line_error(["train", str(cfg), "--set", "train.num_vis=0"], capsys)
    assert bad.name in err and "cannot read image" in err


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.name=no_such_model", "model.name: unknown detection model 'no_such_model'"),
        ("model.backbone=null", "model.backbone: required for fasterrcnn_timm_fpn"),
        ("model.backbone=efficientnet_b0", "'se_plugin_efficientnet_b0' is not a timm model"),
        ("model.kwargs.min_size=32", "model.kwargs.min_size: set model.min_size instead"),
        ("model.kwargs.no_such_option=1", "model.kwargs.no_such_option: not an option of fasterrcnn_timm_fpn"),
        ("model.num_classes=3", "model.num_classes: 3 is too small for 4 classes"),
        ("model.name=fasterrcnn_se_resnet50_fpn", "model.backbone: fasterrcnn_se_resnet50_fpn has a fixed backbone"),
        ("eval.metric=miou", "eval.metric: 'miou' is not a detection metric"),
        ("data.train_images=null", "data.train_images: required for data.format coco"),
    ],
)
def test_bad_config_is_a_one_line_error(tmp_path, shapes, capsys, override, expected):
    err = one_line_error(["train", str(tiny_config(tmp_path, shapes)), "--set", override], capsys)
    assert expected in err


# --------------------------------------------------------------------------------------------- drawing


def test_draw_detections_colours_filters_and_labels():
    image = torch.zeros(3, 40, 60)
    boxes = torch.tensor([[5.0, 5.0, 20.0, 30.0], [30.0, 10.0, 55.0, 35.0]])
    drawn = draw_detections(image, boxes, [1, 2], [0.9, 0.2], ["circle", "square"], score_threshold=0.5)
    assert drawn.dtype == torch.uint8 and drawn.shape == (3, 40, 60)
    assert tuple(drawn[:, 5, 12].tolist()) == class_color(1)  # top edge of the kept box
    assert drawn[:, 20, 30].sum() == 0  # the box under the threshold is not drawn
    truth = draw_detections(image, boxes, [1, 2])  # no scores: everything drawn
    assert tuple(truth[:, 20, 30].tolist()) == class_color(2)
    assert torch.equal(draw_detections(image, boxes[:0], []), torch.zeros(3, 40, 60, dtype=torch.uint8))
    assert image.abs().sum() == 0  # input untouched


def test_draw_mask_and_save_png(tmp_path):
    image = torch.full((3, 4, 4), 0.5)
    mask = torch.tensor([[0, 1, 1, 255], [0, 2, 2, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    drawn = draw_mask(image, mask, num_classes=3, alpha=1.0)
    assert tuple(drawn[:, 0, 1].tolist()) == class_color(1)
    assert tuple(drawn[:, 1, 2].tolist()) == class_color(2)
    assert tuple(drawn[:, 0, 3].tolist()) == (255, 255, 255)
    assert tuple(drawn[:, 3, 3].tolist()) == (128, 128, 128)  # background untouched (0.5 -> 128)
    with pytest.raises(ValueError, match="outside 0..2"):
        draw_mask(image, torch.where(mask == 2, 3, mask), num_classes=3)
    panel = hstack_images([drawn, image], gap=2)
    assert panel.shape == (3, 4, 10)
    path = save_png(panel, tmp_path / "sub" / "x.png")
    assert torch.equal(torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1), panel)
    assert [p.name for p in path.parent.iterdir()] == ["x.png"]  # no temp file left
