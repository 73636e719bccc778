"""DetectionTask with Mask R-CNN, RetinaNet and FCOS: training, mask AP against pycocotools, drawings, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.models.detection import FCOS, MaskRCNN, RetinaNet

from se_plugins import se_modules
from se_plugins.cli import main
from se_plugins.data import ShapesPaths, make_shapes
from se_plugins.engine.config import load_config
from se_plugins.engine.evaluation import COCO_STAT_NAMES, CocoEvaluator, detections_to_coco_results, masks_to_rle
from se_plugins.engine.logging import read_metrics
from se_plugins.engine.tasks.detection import DetectionTask
from se_plugins.engine.visualize import class_color, draw_detections
from se_plugins.errors import ConfigError
from tests.test_detection_task import last_eval, tiny_config

SEGM = ["segm_" + name for name in COCO_STAT_NAMES]
MASK_KWARGS = {"mask_head_channels": 16}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> ShapesPaths:
    """8 train / 4 val images of 96 px."""
    return make_shapes(tmp_path_factory.mktemp("shapes"), num_train=8, num_val=4, image_size=96, seed=3)


def mask_config(tmp_path, shapes, name="maskrcnn_timm_fpn", **sections):
    """``tiny_config`` with another detector of the same backbone and FPN."""
    path = tiny_config(tmp_path, shapes, **sections)
    raw = yaml.safe_load(path.read_text())
    kwargs = raw["model"]["kwargs"]
    if name.startswith(("retinanet", "fcos")):  # one-stage heads: no RPN/RoI options
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith(("rpn_", "box_"))}
        kwargs["score_thresh"] = 0.0
        kwargs["fpn_channels"] = 32  # FCOS's head has GroupNorm(32)
        retina = name.startswith("retinanet")
        kwargs["anchor_sizes"] = [[12, 16, 20], [24, 32, 40], [48, 64, 80]] if retina else [8, 16, 32]
    if name.startswith("maskrcnn"):
        kwargs.update(MASK_KWARGS)
    raw["model"]["name"] = name
    raw["model"]["kwargs"] = kwargs
    path.write_text(yaml.safe_dump(raw))
    return path


def _independent_segm_stats(cfg_path, checkpoint, shapes) -> tuple[list[float], int]:
    """COCOeval segm of the checkpoint's masks: the model run directly on the files, pycocotools only."""
    model = DetectionTask(load_config(cfg_path)).build_model()
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
    model.eval()
    gt = COCO(str(shapes.coco_val_ann))
    cat_ids = sorted(gt.getCatIds())
    results = []
    for image_id in sorted(gt.getImgIds()):
        info = gt.loadImgs(image_id)[0]
        pixels = np.asarray(Image.open(shapes.coco_val_images / info["file_name"]).convert("RGB"), np.float32) / 255
        with torch.no_grad():
            out = model([torch.from_numpy(pixels).permute(2, 0, 1)])[0]
        binary = (out["masks"][:, 0] > 0.5).numpy().astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
        for rle, label, score in zip(rles, out["labels"].tolist(), out["scores"].tolist(), strict=True):
            results.append({"image_id": image_id, "category_id": cat_ids[label - 1], "segmentation": rle,
                            "score": score})  # fmt: skip
    coco_eval = COCOeval(gt, gt.loadRes(results), "segm")
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return [float(v) for v in coco_eval.stats], len(results)


@pytest.mark.slow
def test_maskrcnn_trains_and_its_mask_ap_equals_pycocotools(tmp_path, shapes):
    cfg = mask_config(tmp_path, shapes, eval={"batch_size": 2, "main_metric": "segm_AP50"})
    assert main(["train", str(cfg), "--set", "train.max_iters_per_epoch=3", "train.epochs=2"]) == 0
    run = tmp_path / "run"
    train = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "train"]
    assert {"loss", "loss_mask", "loss_classifier", "loss_objectness"} <= set(train[-1])
    record = last_eval(run)
    assert set(COCO_STAT_NAMES) | set(SEGM) <= set(record)
    assert torch.load(run / "best.pth", weights_only=True)["main_metric"] == "segm_AP50"
    assert len(list((run / "predictions").glob("*.png"))) == 2

    # After a few steps the mask logits are still all negative: raise them so the masks fill their boxes and
    # overlap the shapes, then evaluate that checkpoint with `se-plugins eval` and independently.
    state = torch.load(run / "last.pth", weights_only=True)
    state["model"]["roi_heads.mask_predictor.mask_fcn_logits.bias"] += 5.0
    torch.save(state, tmp_path / "filled.pth")
    out = tmp_path / "eval.json"
    assert main(["eval", str(cfg), "--checkpoint", str(tmp_path / "filled.pth"), "--out", str(out)]) == 0
    evaluated = json.loads(out.read_text())["metrics"]
    stats, num = _independent_segm_stats(cfg, tmp_path / "filled.pth", shapes)
    assert num > 0 and stats[1] > 0  # some masks overlap the shapes: a non-trivial comparison
    assert [evaluated[k] for k in SEGM] == pytest.approx(stats, abs=1e-6)


@pytest.mark.parametrize(
    ("name", "losses"),
    [
        ("retinanet_timm_fpn", {"loss_classification", "loss_bbox_regression"}),
        ("fcos_timm_fpn", {"loss_classification", "loss_bbox_regression", "loss_bbox_ctrness"}),
    ],
)
def test_one_stage_detectors_train_through_the_same_task(tmp_path, shapes, name, losses):
    cfg = mask_config(tmp_path, shapes, name=name)
    assert main(["train", str(cfg), "--set", "train.max_iters_per_epoch=2", "train.num_vis=1"]) == 0
    train = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["type"] == "train"]
    assert losses | {"loss"} == {k for k in train[-1] if k.startswith("loss")}
    assert train[-1]["loss"] == pytest.approx(sum(train[-1][k] for k in losses), rel=1e-5)
    record = last_eval(tmp_path / "run")
    assert set(COCO_STAT_NAMES) <= set(record) and not set(SEGM) & set(record)


class OracleMasks(torch.nn.Module):
    """The ground truth of the next images as Mask R-CNN output (soft masks [N, 1, H, W]) plus a label-0 box."""

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
            masks = t["masks"].as_subclass(torch.Tensor)[:, None].float() * 0.9  # probabilities above 0.5
            background = {"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0]]), "labels": torch.tensor([0])}
            out.append({
                "boxes": torch.cat([t["boxes"].as_subclass(torch.Tensor), background["boxes"]]),
                "labels": torch.cat([t["labels"], background["labels"]]),
                "scores": torch.ones(n + 1),
                "masks": torch.cat([masks, torch.ones(1, 1, *masks.shape[-2:])]),
            })  # fmt: skip
        return out


def test_perfect_masks_score_one_and_background_is_dropped(tmp_path, shapes):
    task = DetectionTask(load_config(mask_config(tmp_path, shapes)))
    assert task.with_masks and task.main_metric == "AP50"
    val = task.build_val_dataset()
    metrics = task.evaluate(OracleMasks(val), task.build_val_loader(val, distributed=False), torch.device("cpu"))
    assert set(metrics) == set(COCO_STAT_NAMES) | set(SEGM)
    assert metrics["AP"] == metrics["segm_AP"] == 1.0  # masks line up with the COCO polygons pixel for pixel


def test_segm_evaluator_equals_pycocotools_on_the_same_results(shapes):
    gt = COCO(str(shapes.coco_val_ann))
    rng = np.random.default_rng(0)
    outputs, ids = [], sorted(gt.getImgIds())
    for image_id in ids:
        anns = gt.loadAnns(gt.getAnnIds(imgIds=image_id))
        masks = np.stack([gt.annToMask(a) for a in anns])
        masks[::2] = np.roll(masks[::2], 3, axis=-1)  # imperfect: some shifted
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns])  # fmt: skip
        labels = torch.tensor([sorted(gt.getCatIds()).index(a["category_id"]) + 1 for a in anns])
        outputs.append({"boxes": boxes, "labels": labels, "scores": torch.tensor(rng.random(len(anns))),
                        "masks": torch.from_numpy(masks).bool()})  # fmt: skip
    label_to_cat = dict(enumerate(sorted(gt.getCatIds()), start=1))
    results = detections_to_coco_results(outputs, ids, label_to_cat)
    ours = CocoEvaluator(gt, iou_type="segm", backend="pycocotools")
    ours.update(results, image_ids=ids)
    stats = ours.summarize()

    plain = [{k: v for k, v in r.items() if k != "bbox"} for r in results]  # mask area, not box area
    coco_eval = COCOeval(gt, gt.loadRes(plain), "segm")
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    assert 0 < stats["AP"] < 1
    assert [stats[k] for k in COCO_STAT_NAMES] == [float(v) for v in coco_eval.stats]
    assert masks_to_rle(torch.zeros(0, 4, 4)) == []


def test_mask_config_errors_are_one_line(tmp_path, shapes):
    with pytest.raises(ConfigError, match="eval.main_metric: 'segm_AP50' is not one of .*predicts no masks"):
        DetectionTask(load_config(tiny_config(tmp_path, shapes, eval={"main_metric": "segm_AP50"})))
    with pytest.raises(ConfigError, match="maskrcnn_timm_fpn needs instance masks, which VOC"):
        DetectionTask(load_config(mask_config(tmp_path, shapes), ["data.format=voc"]))
    with pytest.raises(ConfigError, match="model.kwargs.topk: not an option of retinanet_timm_fpn or .*RetinaNet"):
        cfg = load_config(mask_config(tmp_path, shapes, name="retinanet_timm_fpn"), ["model.kwargs.topk=5"])
        DetectionTask(cfg).build_model()


def test_draw_detections_fills_masks_in_class_colours():
    image = torch.zeros(3, 40, 60)
    boxes = torch.tensor([[2.0, 2.0, 30.0, 30.0], [35.0, 5.0, 58.0, 38.0]])
    masks = torch.zeros(2, 40, 60, dtype=torch.bool)
    masks[0, 15:28, 15:28] = True
    masks[1, 20:36, 40:56] = True
    drawn = draw_detections(image, boxes, [1, 3], [0.9, 0.2], score_threshold=0.5, masks=masks, width=1)
    expected = draw_detections(image, boxes[:1], [1], [0.9], masks=None, width=1)  # boxes and labels alone
    filled = (drawn != expected).any(dim=0)
    assert torch.equal(filled, masks[0])  # exactly the kept instance's pixels, in its class colour
    colour = torch.tensor(class_color(1), dtype=torch.float32)
    assert torch.allclose(drawn[:, 20, 20].float(), 0.45 * colour, atol=1)  # alpha 0.45 over black
    with pytest.raises(ValueError, match="do not fit 2 boxes"):
        draw_detections(image, boxes, [1, 3], masks=masks[:1])


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "detection"


@pytest.mark.parametrize(("name", "cls"), [("shapes_maskrcnn", MaskRCNN), ("shapes_retinanet", RetinaNet)])
def test_shapes_demo_configs_build_their_models(name, cls):
    se = DetectionTask(load_config(CONFIG_DIR / f"{name}_se_r18.yaml")).build_model()
    base = DetectionTask(load_config(CONFIG_DIR / f"{name}_r18.yaml")).build_model()
    assert type(se) is type(base) is cls
    assert se_modules(se) and not se_modules(base)
    se_keys, base_keys = dict(se.named_parameters()), dict(base.named_parameters())
    assert set(base_keys) < set(se_keys) and all(".se." in k for k in set(se_keys) - set(base_keys))


@pytest.mark.filterwarnings("ignore:Changing trainable_backbone_layers")  # no pretrained file in this test
@pytest.mark.parametrize(("arch", "cls"), [("maskrcnn", MaskRCNN), ("retinanet", RetinaNet), ("fcos", FCOS)])
def test_coco_configs_build_torchvision_recipes_with_and_without_se(arch, cls):
    counts = []
    for name in (f"coco_{arch}_se_r50_fpn", f"coco_{arch}_r50_fpn"):
        cfg = load_config(CONFIG_DIR / f"{name}.yaml", ["model.pretrained_backbone=null", "model.num_classes=81"])
        model = DetectionTask(cfg).build_model()
        assert type(model) is cls
        counts.append((sum(p.numel() for p in model.parameters()), len(se_modules(model))))
    assert counts[0][0] - counts[1][0] == 2_530_992 and (counts[0][1], counts[1][1]) == (16, 0)
