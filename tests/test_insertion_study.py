"""tools/insertion_study.py at a tiny size: the identity arm equals the base exactly at step 0, random does not."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from se_plugins.engine.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "configs" / "classification" / "shapes_resnet10t.yaml"
SIZE = 32


def _load_tool():
    spec = importlib.util.spec_from_file_location("insertion_study", REPO / "tools" / "insertion_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny(root: Path) -> list[str]:
    return [
        f"data.root={root}",
        "data.shapes.num_train=16",
        "data.shapes.num_val=8",
        f"data.shapes.image_size={SIZE}",
        f"data.image_size={SIZE}",
        "data.num_workers=0",
        "train.batch_size=8",
        "train.warmup_iters=0",
        "train.tensorboard=false",
        "train.num_vis=0",
        "eval.batch_size=8",
    ]


@pytest.mark.slow
def test_study_step0_identity_equals_base_exactly_and_random_differs(tmp_path):
    tool = _load_tool()
    out = tmp_path / "study"
    report = tool.run_study(
        BASE,
        out,
        seeds=[0],
        base_epochs=2,
        finetune_epochs=1,
        overrides=tiny(tmp_path / "shapes"),
        finetune_overrides=["train.lr=0.001"],
    )
    base_weights = out / "base" / "last.pth"
    assert report["base_weights"] == str(base_weights)
    # the base's own evaluation of its final weights
    base_eval = Trainer(tool.base_config(BASE, out, tiny(tmp_path / "shapes"), 2)).evaluate(base_weights)
    step0 = {arm: report["results"][arm]["0"]["curve"][0] for arm in tool.ARMS}
    assert step0["no_se"] == {"step": 0, **base_eval}
    assert step0["identity"] == step0["no_se"] and report["identity_equals_no_se_at_step0"] is True
    versus = {arm: report["results"][arm]["0"]["step0_vs_base"] for arm in tool.ARMS}
    assert versus["identity"] == versus["no_se"] == {"agreement": 1.0, "max_abs_logit_diff": 0.0}
    assert versus["random"]["max_abs_logit_diff"] > 1e-3

    # the models themselves: identical logits for identity, different ones for random
    def logits(arm: str) -> torch.Tensor:
        cfg = tool.arm_config(BASE, out, tiny(tmp_path / "shapes"), arm, 0, base_weights, 1)
        model = tool.step0_model(cfg).eval()
        x = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            return model(x)

    assert torch.equal(logits("identity"), logits("no_se"))
    assert not torch.allclose(logits("random"), logits("no_se"), atol=1e-3)

    curve = report["results"]["identity"]["0"]["curve"]
    assert [p["step"] for p in curve] == [0, 2]  # step 0, then after the one fine-tuning epoch (16 / 8 = 2 steps)
    rows = {r["arm"]: r for r in report["summary"]}
    assert rows["identity"]["step0"]["mean"] == base_eval["top1"] and rows["random"]["seeds"] == 1
    assert rows["no_se"]["final"]["mean"] == report["results"]["no_se"]["0"]["curve"][-1]["top1"]
    table = (out / "study.md").read_text()
    assert table.splitlines()[0].startswith("| arm | seeds | top1 at step 0 | top1 after fine-tuning |")
    assert f"| identity | 1 | {base_eval['top1']:.4f} ± 0.0000 |" in table and "| 1.0000 | 0 |" in table
    assert (out / "study.png").stat().st_size > 10_000
    assert json.loads((out / "study.json").read_text())["metric"] == "top1"
    # a second run reuses the trained base
    stamp = base_weights.stat().st_mtime_ns
    tool.run_study(
        BASE, out, seeds=[0], base_epochs=2, finetune_epochs=1, overrides=tiny(tmp_path / "shapes"), arms=["no_se"]
    )
    assert base_weights.stat().st_mtime_ns == stamp


DETECTION_BASE = REPO / "configs" / "detection" / "shapes_fasterrcnn_r18.yaml"
DETECTION_SIZE = 64
# with detector weights the timm route freezes the stem by default (torchvision's rule): train all 5 units, as the
# base did, so that no BatchNorm becomes FrozenBatchNorm2d
DETECTION_FINETUNE = ["train.lr=0.0002", "model.trainable_backbone_layers=5"]


def tiny_detection(root: Path) -> list[str]:
    return [
        f"data.root={root}",
        "data.shapes.num_train=8",
        "data.shapes.num_val=4",
        f"data.shapes.image_size={DETECTION_SIZE}",
        f"model.min_size={DETECTION_SIZE}",
        f"model.max_size={DETECTION_SIZE}",
        "train.batch_size=4",
        "train.warmup_iters=0",
        "train.tensorboard=false",
        "train.num_vis=0",
        "eval.batch_size=4",
    ]


@pytest.mark.slow
def test_detection_study_step0_identity_gives_the_base_detections_and_random_does_not(tmp_path):
    tool = _load_tool()
    out, overrides = tmp_path / "study", tiny_detection(tmp_path / "shapes")
    report = tool.run_study(
        DETECTION_BASE, out, seeds=[0], base_epochs=1, finetune_epochs=1, overrides=overrides,
        finetune_overrides=DETECTION_FINETUNE,
    )  # fmt: skip
    base_weights = out / "base" / "last.pth"
    base_eval = Trainer(tool.base_config(DETECTION_BASE, out, overrides, 1)).evaluate(base_weights)
    step0 = {arm: report["results"][arm]["0"]["curve"][0] for arm in tool.ARMS}
    assert step0["no_se"] == {"step": 0, **base_eval}  # the same AP50, AP, ... (all 12 COCO numbers)
    assert step0["identity"] == step0["no_se"] and report["identity_equals_no_se_at_step0"] is True
    versus = {arm: report["results"][arm]["0"]["step0_vs_base"] for arm in tool.ARMS}
    assert versus["identity"] == versus["no_se"] == {"agreement": 1.0}  # every image: the same detections
    assert versus["random"]["agreement"] < 1.0

    # the step-0 detectors themselves on fixed images: identity's detections are the base's, random's are not
    def detections(arm: str) -> list[dict[str, torch.Tensor]]:
        cfg = tool.arm_config(DETECTION_BASE, out, [*overrides, *DETECTION_FINETUNE], arm, 0, base_weights, 1)
        model = tool.step0_model(cfg).eval()
        images = list(torch.rand(2, 3, DETECTION_SIZE, DETECTION_SIZE, generator=torch.Generator().manual_seed(0)))
        with torch.no_grad():
            return model(images)

    base, identity, random = detections("no_se"), detections("identity"), detections("random")
    assert sum(len(d["boxes"]) for d in base) > 0  # the comparison is not between empty lists
    keys = ("boxes", "scores", "labels")
    assert all(torch.equal(i[k], b[k]) for i, b in zip(identity, base, strict=True) for k in keys)
    assert not all(
        r[k].shape == b[k].shape and torch.equal(r[k], b[k]) for r, b in zip(random, base, strict=True) for k in keys
    )

    curve = report["results"]["identity"]["0"]["curve"]
    assert [p["step"] for p in curve] == [0, 2]  # step 0, then after the one fine-tuning epoch (8 / 4 = 2 steps)
    assert report["metric"] == "AP50" and {"AP50", "AP"} <= curve[-1].keys()
    table = (out / "study.md").read_text()
    assert table.splitlines()[0] == (
        "| arm | seeds | AP50 at step 0 | AP50 after fine-tuning | step-0 detections = base |"
    )
    assert f"| identity | 1 | {base_eval['AP50']:.4f} ± 0.0000 |" in table and table.count("| 1.0000 |") >= 2
