"""Mask R-CNN, RetinaNet and FCOS with SE: torchvision's recipes + identity insertion, and the timm routes."""

import pytest
import timm
import torch
import torchvision
from torchvision.models import get_model_weights
from torchvision.models.detection import FCOS, MaskRCNN, RetinaNet
from torchvision.ops.misc import FrozenBatchNorm2d

from se_plugins import CheckpointError, se_modules
from se_plugins.detection import (
    DETECTION_MODEL_TYPES,
    DETECTION_MODELS,
    create_detection_model,
    fasterrcnn_timm_fpn,
    fcos_timm_fpn,
    maskrcnn_timm_fpn,
    retinanet_timm_fpn,
)
from se_plugins.detection.timm_fpn import ARCHS
from tests.conftest import randomize_norm_stats
from tests.test_detection_models import _expected_se_params, _image, _put_in_hub_cache

R50_SE_PARAMS = 2_530_992  # r=16 on all 16 bottlenecks (see test_detection_models)
NEW_RECIPES = [
    "fasterrcnn_resnet50_fpn_v2",  # (v1: test_detection_models)
    "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2",
    "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2",
    "fcos_resnet50_fpn",
]
# small inputs, few candidates, every detection kept (random heads score low): fast and non-vacuous comparisons
RCNN_SMALL = dict(
    min_size=96, max_size=128, rpn_pre_nms_top_n_test=60, rpn_post_nms_top_n_test=30, box_score_thresh=0.0,
    box_detections_per_img=20,
)  # fmt: skip
ONE_STAGE_SMALL = dict(min_size=96, max_size=128, score_thresh=0.0, detections_per_img=20, topk_candidates=50)


def _small(name: str) -> dict:
    return RCNN_SMALL if name.startswith(("maskrcnn", "fasterrcnn")) else ONE_STAGE_SMALL


def _trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial norm statistics and tamed output layers (random ones saturate scores and boxes)."""
    randomize_norm_stats(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("bbox_pred.weight", "bbox_reg.weight", "cls_score.weight", "cls_logits.weight")):
                p.mul_(1e-3)
    return model


@torch.no_grad()
def _detect(model, images):
    return model.eval()(images)


def _assert_identical(ours, reference) -> None:
    for u, v in zip(ours, reference, strict=True):
        assert len(u["boxes"]) > 0
        assert set(u) == set(v)
        for key in v:
            assert torch.equal(u[key], v[key]), key


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW_RECIPES)
def test_coco_weights_load_into_torchvision_recipe_then_se_keeps_outputs(name, tmp_path, monkeypatch):
    """A (locally saved) COCO detector through ``weights=`` and ``weights_file=``: torchvision's model + SE."""
    weights = get_model_weights(name).COCO_V1
    builder = getattr(torchvision.models.detection, name)
    torch.manual_seed(0)
    saved = _trained_like(builder(weights=None, weights_backbone=None))
    torch.save(saved.state_dict(), tmp_path / "coco.pth")
    del saved
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _put_in_hub_cache(weights, tmp_path / "coco.pth", tmp_path)

    reference = builder(weights=weights, **_small(name))
    ours = create_detection_model(name.replace("_resnet50", "_se_resnet50"), weights=weights, **_small(name))
    assert isinstance(ours, DETECTION_MODEL_TYPES[name])
    # parameters: torchvision's documented count + exactly the SE parameters (identity-initialised)
    se = [p.numel() for n, p in ours.named_parameters() if ".se." in n]
    assert sum(se) == R50_SE_PARAMS == _expected_se_params([(256, 3), (512, 4), (1024, 6), (2048, 3)])
    assert sum(p.numel() for p in ours.parameters()) - sum(se) == weights.meta["num_params"]
    assert all(m.gate_gain.item() == 2.0 for m in se_modules(ours).values())
    frozen = name in ("maskrcnn_resnet50_fpn", "retinanet_resnet50_fpn", "fcos_resnet50_fpn")  # v1: frozen BN
    assert isinstance(ours.backbone.body.bn1, FrozenBatchNorm2d) == frozen

    images = [_image(96, 120), _image(110, 90, seed=1)]
    expected = _detect(reference, images)
    _assert_identical(_detect(ours, images), expected)
    if name.startswith("maskrcnn"):
        assert expected[0]["masks"].shape[1:] == (1, 96, 120)

    # the same weights from a local file: the same state (torchvision sets eps=0 only for its enum's legacy files)
    from_file = create_detection_model(name.replace("_resnet50", "_se_resnet50"), weights_file=tmp_path / "coco.pth")
    state = from_file.state_dict()
    assert state.keys() == ours.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in ours.state_dict().items() if ".se.fc1." not in k)  # fc1: random


def test_bad_weights_files_give_one_line_errors(tmp_path):
    torch.save({"backbone.body.conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"bad.pth' is not a torchvision fcos_resnet50_fpn state dict"):
        create_detection_model("fcos_se_resnet50_fpn", weights_file=tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="weights_file .*missing.pth'.*no such file"):
        create_detection_model("retinanet_se_resnet50_fpn", weights_file=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="not both"):
        create_detection_model("maskrcnn_se_resnet50_fpn", weights="COCO_V1", weights_file=tmp_path / "bad.pth")


def test_registry_types_and_baselines():
    assert DETECTION_MODEL_TYPES["maskrcnn_timm_fpn"] is MaskRCNN
    assert DETECTION_MODEL_TYPES["retinanet_resnet50_fpn_v2"] is RetinaNet
    assert DETECTION_MODEL_TYPES["fcos_se_resnet50_fpn"] is FCOS
    model = DETECTION_MODELS["retinanet_resnet50_fpn_v2"](num_classes=3)  # the SE-free torchvision recipe
    assert not se_modules(model)
    reference = torchvision.models.detection.retinanet_resnet50_fpn_v2(weights=None, num_classes=3)
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }


# ------------------------------------------------------------------------------------------------------------
# timm routes


def _targets(with_masks: bool):
    boxes = [torch.tensor([[10.0, 8.0, 60.0, 50.0]]), torch.tensor([[5.0, 20.0, 40.0, 70.0], [50, 5, 90, 45.0]])]
    targets = []
    for b, labels, (h, w) in zip(boxes, ([1], [2, 1]), ((80, 100), (90, 96)), strict=True):
        t = {"boxes": b, "labels": torch.tensor(labels)}
        if with_masks:
            masks = torch.zeros(len(b), h, w, dtype=torch.uint8)
            for i, (x0, y0, x1, y1) in enumerate(b.int().tolist()):
                masks[i, y0:y1, x0:x1] = 1
            t["masks"] = masks
        targets.append(t)
    return [_image(80, 100), _image(90, 96, seed=1)], targets


LOSSES = {
    "maskrcnn": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "loss_mask"},
    "retinanet": {"classification", "bbox_regression"},
    "fcos": {"classification", "bbox_regression", "bbox_ctrness"},
}
TIMM_BUILDERS = {"maskrcnn": maskrcnn_timm_fpn, "retinanet": retinanet_timm_fpn, "fcos": fcos_timm_fpn}


@pytest.mark.parametrize("arch", ["maskrcnn", "retinanet", "fcos"])
def test_timm_route_trains_and_se_is_an_identity_on_pretrained_weights(arch, tmp_path):
    torch.manual_seed(0)
    torch.save(randomize_norm_stats(timm.create_model("resnet10t")).state_dict(), tmp_path / "r10t.pth")
    small = {k: v for k, v in _small(arch).items()}
    kwargs = dict(num_classes=3, pretrained_backbone=tmp_path / "r10t.pth", fpn_channels=32, **small)
    if arch == "maskrcnn":
        kwargs["mask_head_channels"] = 16
    base = _trained_like(TIMM_BUILDERS[arch]("resnet10t", **kwargs))
    se = TIMM_BUILDERS[arch]("se_plugin_resnet10t", **kwargs)
    assert type(se) is DETECTION_MODEL_TYPES[f"{arch}_timm_fpn"]
    missing, unexpected = se.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and missing and all(".se." in k for k in missing)
    assert len(se_modules(se)) == 4 and all(m.gate_gain.item() == 2.0 for m in se_modules(se).values())

    images = [_image(80, 100), _image(90, 96, seed=1)]
    _assert_identical(_detect(se, images), _detect(base, images))  # identity SE: bit-identical outputs

    images, targets = _targets(arch == "maskrcnn")
    losses = se.train()(images, targets)
    assert set(losses) == LOSSES[arch] and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(m.fc2.weight.grad.abs().sum() > 0 for m in se_modules(se).values())  # the gates learn


@pytest.mark.parametrize("arch", ["fasterrcnn", "maskrcnn", "retinanet"])
def test_timm_route_weights_file_loads_a_trained_base_detector_into_the_se_one(arch, tmp_path):
    """``weights_file``: a whole SE-free detector (here in the engine's checkpoint format) gives an SE detector
    with exactly its detections; the wrappers' head options are applied before the file loads."""
    torch.manual_seed(0)
    kwargs = dict(num_classes=3, fpn_channels=32, **_small(arch))
    kwargs.update({"maskrcnn": {"mask_head_channels": 16}, "retinanet": {"head_group_norm": True}}.get(arch, {}))
    builder = {"fasterrcnn": fasterrcnn_timm_fpn, **TIMM_BUILDERS}[arch]
    base = _trained_like(builder("resnet10t", **kwargs))
    torch.save({"model": base.state_dict(), "epoch": 12}, tmp_path / "last.pth")
    images = [_image(80, 100), _image(90, 96, seed=1)]
    reference = _detect(base, images)

    # every unit trainable (no FrozenBatchNorm2d): the SE detector is the base plus identity SE, bit for bit
    se = builder("se_plugin_resnet10t", weights_file=tmp_path / "last.pth", trainable_backbone_layers=5, **kwargs)
    assert len(se_modules(se)) == 4 and all(m.gate_gain.item() == 2.0 for m in se_modules(se).values())
    se_keys = {k for k in se.state_dict() if ".se." in k}
    assert set(se.state_dict()) - se_keys == set(base.state_dict())
    _assert_identical(_detect(se, images), reference)
    # trained weights count as trained (torchvision's rule): by default the stem is frozen, SE still trains
    default = builder("se_plugin_resnet10t", weights_file=tmp_path / "last.pth", **kwargs)
    assert not any(p.requires_grad for p in default.backbone.body.conv1.parameters())
    assert all(p.requires_grad for p in default.backbone.body.layer2.parameters())

    # an SE detector's weights do not fit the plain detector; a backbone file on top is a conflict
    torch.save(se.state_dict(), tmp_path / "se.pth")
    with pytest.raises(CheckpointError, match=r"weights_file .*se.pth' is not a .* state dict.*Unexpected key"):
        builder("resnet10t", weights_file=tmp_path / "se.pth", **kwargs)
    with pytest.raises(ValueError, match="pretrained_backbone has no effect with detector weights"):
        builder("resnet10t", weights_file=tmp_path / "last.pth", pretrained_backbone=tmp_path / "x.pth", **kwargs)


def test_timm_route_levels_and_anchors_follow_torchvision():
    """RetinaNet/FCOS read P3-P7 with torchvision's anchors; Mask R-CNN pools masks 14x14 from P2-P5."""
    retina = retinanet_timm_fpn("resnet10t", num_classes=3, fpn_channels=32)
    tv_retina = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None)
    assert retina.anchor_generator.sizes == tv_retina.anchor_generator.sizes  # 32..512 x 3 octaves
    assert retina.anchor_generator.aspect_ratios == tv_retina.anchor_generator.aspect_ratios
    assert retina.backbone.strides == [8, 16, 32] and retina.backbone.num_extra_levels == 2
    fcos = fcos_timm_fpn("resnet10t", num_classes=3, fpn_channels=32)
    tv_fcos = torchvision.models.detection.fcos_resnet50_fpn(weights=None, weights_backbone=None)
    assert fcos.anchor_generator.sizes == tv_fcos.anchor_generator.sizes == ((8,), (16,), (32,), (64,), (128,))
    with torch.no_grad():
        maps = fcos.backbone(torch.zeros(1, 3, 128, 128))
    assert [m.shape[-1] for m in maps.values()] == [16, 8, 4, 2, 1]
    mask = maskrcnn_timm_fpn("resnet10t", num_classes=3, fpn_channels=32)
    assert mask.roi_heads.mask_roi_pool.featmap_names == ["0", "1", "2", "3"]
    assert mask.roi_heads.mask_roi_pool.output_size == (14, 14)
    assert set(ARCHS) == {"fasterrcnn", "maskrcnn", "retinanet", "fcos"}
    gn = retinanet_timm_fpn("resnet10t", num_classes=3, fpn_channels=32, head_group_norm=True)
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in gn.head.modules()) == 8  # 4 convs x 2 branches
    assert gn.head.classification_head.cls_logits.out_channels == 9 * 3
    with pytest.raises(ValueError, match="multiple of 32"):
        retinanet_timm_fpn("resnet10t", num_classes=3, fpn_channels=16, head_group_norm=True)
