"""Faster R-CNN with SE: parameter counts, weight loading, surgery, freezing, timm backbones, anchors."""

import math
import os

import pytest
import timm
import torch
import torchvision
from torchvision.models import ResNet50_Weights
from torchvision.models.detection import FasterRCNN_ResNet50_FPN_V2_Weights, FasterRCNN_ResNet50_FPN_Weights
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d

import se_plugins
from se_plugins import CheckpointError, ConfigError, has_se, se_modules
from se_plugins.detection import (
    DETECTION_MODELS,
    TimmBackboneWithFPN,
    add_se_to_detector,
    create_detection_model,
    fasterrcnn_se_resnet50_fpn,
    fasterrcnn_se_resnet50_fpn_v2,
    fasterrcnn_timm_fpn,
)
from tests.conftest import randomize_norm_stats, rounding_tolerance

# small images and few RoIs keep a ResNet-50 detector fast on one CPU core
SMALL = dict(
    min_size=128,
    max_size=160,
    rpn_pre_nms_top_n_test=100,
    rpn_post_nms_top_n_test=50,
    rpn_pre_nms_top_n_train=100,
    rpn_post_nms_top_n_train=50,
    box_batch_size_per_image=32,
)
# random heads give scores near 1/num_classes: keep every detection so the comparisons are not vacuous
KEEP_ALL = dict(box_score_thresh=0.0, box_detections_per_img=30)
# ResNet-50 bottlenecks: (output channels, number of blocks) per stage
R50_STAGES = [(256, 3), (512, 4), (1024, 6), (2048, 3)]


def _count(params) -> int:
    return sum(p.numel() for p in params)


def _split_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(parameters outside SE, parameters of SE)."""
    se = [p for n, p in model.named_parameters() if ".se." in n]
    return _count(model.parameters()) - _count(se), _count(se)


def _expected_se_params(stages, reduction=16) -> int:
    """SE parameter count from widths: fc1 (C*h + h) + fc2 (h*C + C), h = C/r rounded to a multiple of 8."""
    total = 0
    for channels, blocks in stages:
        hidden = max(8, int(channels / reduction + 4) // 8 * 8)  # timm's make_divisible(C / r, 8)
        total += blocks * (2 * channels * hidden + hidden + channels)
    return total


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _detect(model: torch.nn.Module, images) -> list[dict[str, torch.Tensor]]:
    return model.eval()(images)


def _assert_same_detections(a, b) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        assert len(u["boxes"]) > 0
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(u[key], v[key]), key


def _trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Random detector with non-trivial BN and tamed heads.

    Random backbones give huge features, which make every random box regression degenerate and every class
    score saturate (both would make the comparisons vacuous).
    """
    randomize_norm_stats(model)
    with torch.no_grad():
        for layer in (model.rpn.head.bbox_pred, model.roi_heads.box_predictor.bbox_pred):
            layer.weight.mul_(1e-3)
        model.roi_heads.box_predictor.cls_score.weight.mul_(1e-3)
    return model


def _train_step(model: torch.nn.Module) -> torch.Tensor:
    """One forward/backward in train mode on two small images; returns the total loss."""
    images = [_image(96, 240), _image(150, 120, seed=1)]
    targets = [
        {"boxes": torch.tensor([[20.0, 10.0, 120.0, 80.0]]), "labels": torch.tensor([1])},
        {
            "boxes": torch.tensor([[5.0, 30.0, 60.0, 140.0], [70.0, 5.0, 115.0, 50.0]]),
            "labels": torch.tensor([2, 1]),
        },
    ]
    losses = model.train()(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    loss = sum(losses.values())
    loss.backward()
    return loss


def _put_in_hub_cache(weights, state_dict_path, hub_dir) -> None:
    """Place a checkpoint where torch.hub looks for ``weights.url`` (what a finished download leaves)."""
    target = hub_dir / "hub" / "checkpoints" / os.path.basename(weights.url)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(state_dict_path)


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
    """A torchvision resnet50 state dict on disk (random weights, non-trivial BN statistics)."""
    torch.manual_seed(0)
    model = randomize_norm_stats(torchvision.models.resnet50())
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(model.state_dict(), path)
    return path


# ------------------------------------------------------------------------------------------------------------
# torchvision R50-FPN recipes


def test_se_parameter_increment_from_channel_widths():
    # the paper's classifiers: SE-ResNet-50 has 28,088,024 parameters, ResNet-50 25,557,032
    assert _expected_se_params(R50_STAGES) == 28_088_024 - 25_557_032 == 2_530_992


def test_parameter_counts_are_torchvision_plus_exact_se(resnet50_file):
    se_params = _expected_se_params(R50_STAGES)
    # pretrained backbone: FrozenBatchNorm2d, as torchvision's COCO model (documented count: 41,755,286)
    model = fasterrcnn_se_resnet50_fpn(backbone_weights_file=resnet50_file)
    assert _split_counts(model) == (FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["num_params"], se_params)
    assert _count(model.parameters()) == 41_755_286 + 2_530_992
    assert len(se_modules(model)) == 16

    model = fasterrcnn_se_resnet50_fpn_v2()  # v2: BatchNorm2d everywhere
    assert _split_counts(model) == (FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1.meta["num_params"], se_params)

    model = fasterrcnn_se_resnet50_fpn(se_reduction=8, se_stages=(3, 4), num_classes=5)
    assert _split_counts(model)[1] == _expected_se_params(R50_STAGES[2:], reduction=8)
    assert all(name.startswith("backbone.body.layer") for name in se_modules(model))


def test_baseline_recipe_is_torchvision():
    ours = create_detection_model("fasterrcnn_resnet50_fpn", num_classes=5)
    reference = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=5
    )
    assert not has_se(ours)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }


def test_backbone_weights_file_loads_like_torchvision(resnet50_file, tmp_path, monkeypatch):
    model = fasterrcnn_se_resnet50_fpn(num_classes=5, backbone_weights_file=resnet50_file)
    reference = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=3)
    state = torch.load(resnet50_file, weights_only=True)
    reference.body.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})

    body, ref_body = model.backbone.body, reference.body.eval()
    ours_state = body.state_dict()
    for key, value in ref_body.state_dict().items():
        assert torch.equal(ours_state[key], value), key
    assert isinstance(body.bn1, FrozenBatchNorm2d) and isinstance(body.layer3[0].bn2, FrozenBatchNorm2d)
    assert all(se.gate_gain.item() == 2.0 and not se.fc2.weight.any() for se in se_modules(body).values())
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours_out, ref_out = body.eval()(x), ref_body(x)
    assert list(ours_out) == list(ref_out) == ["0", "1", "2", "3"]
    for key in ref_out:
        assert torch.equal(ours_out[key], ref_out[key]), key

    # weights_backbone (the ResNet50_Weights enum) loads through the same path: here from torch.hub's cache
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _put_in_hub_cache(ResNet50_Weights.IMAGENET1K_V1, resnet50_file, tmp_path)
    from_enum = fasterrcnn_se_resnet50_fpn(num_classes=5, weights_backbone=ResNet50_Weights.IMAGENET1K_V1)
    enum_state = from_enum.backbone.body.state_dict()
    assert all(torch.equal(enum_state[k], v) for k, v in ours_state.items() if ".se." not in k)


def test_coco_weights_load_into_the_base_then_se_keeps_detections(tmp_path, monkeypatch):
    torch.manual_seed(0)
    coco = _trained_like(
        torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    )
    torch.save(coco.state_dict(), tmp_path / "coco.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _put_in_hub_cache(FasterRCNN_ResNet50_FPN_Weights.COCO_V1, tmp_path / "coco.pth", tmp_path)
    weights = FasterRCNN_ResNet50_FPN_Weights.COCO_V1

    reference = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=weights, **SMALL, **KEEP_ALL)
    ours = fasterrcnn_se_resnet50_fpn(weights=weights, **SMALL, **KEEP_ALL)
    assert ours.roi_heads.box_predictor.cls_score.out_features == 91
    assert all(se.gate_gain.item() == 2.0 for se in se_modules(ours).values())  # identity init by default
    images = [_image(120, 150), _image(100, 90, seed=1)]
    _assert_same_detections(_detect(ours, images), _detect(reference, images))
    with pytest.raises(ValueError, match="num_classes"):
        fasterrcnn_se_resnet50_fpn(weights=weights, num_classes=5)


@pytest.mark.parametrize("surgery", ["add_se", "add_se_to_detector"])
def test_se_on_an_existing_detector_keeps_keys_and_detections(surgery):
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=4, **SMALL, **KEEP_ALL
    )
    _trained_like(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = [_image(128, 160), _image(96, 130, seed=1)]
    expected = _detect(model, images)

    if surgery == "add_se":
        se_plugins.add_se(model)
    else:
        add_se_to_detector(model)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert set(after) - set(before) == {k for k in after if ".se." in k} != set()
    missing, unexpected = model.load_state_dict(before, strict=False)  # the saved checkpoint still loads
    assert not unexpected and missing and all(".se." in k for k in missing)
    _assert_same_detections(_detect(model, images), expected)


def test_se_init_defaults_to_the_paper_without_pretrained_weights():
    model = fasterrcnn_se_resnet50_fpn_v2(num_classes=3, se_stages=(4,))
    ses = se_modules(model)
    assert len(ses) == 3 and all(se.gate_gain.item() == 1.0 and se.fc2.weight.any() for se in ses.values())
    assert all(
        p.requires_grad for p in model.parameters()
    )  # nothing pretrained: torchvision trains everything
    assert isinstance(model.backbone.body.bn1, torch.nn.BatchNorm2d)
    assert len(model.rpn.head.conv) == 2  # v2: two RPN convs and a 4conv1fc box head with BatchNorm
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.roi_heads.box_head.modules()) == 4


@pytest.mark.parametrize("layers", [0, 3])
def test_trainable_backbone_layers_freeze_what_torchvision_freezes(resnet50_file, layers):
    model = fasterrcnn_se_resnet50_fpn(
        num_classes=3, backbone_weights_file=resnet50_file, trainable_backbone_layers=layers, **SMALL
    )
    reference = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=layers)
    ours = {n: p.requires_grad for n, p in model.backbone.named_parameters() if ".se." not in n}
    assert ours == {n: p.requires_grad for n, p in reference.named_parameters()}
    assert sum(ours.values()) < len(ours)  # something is frozen
    assert all(p.requires_grad for n, p in model.named_parameters() if ".se." in n)  # SE trains everywhere
    if layers == 0:  # the whole ResNet is frozen: SE still learns (identity init: fc2 gets the gradient)
        assert torch.isfinite(_train_step(model))
        assert all(se.fc2.weight.grad.abs().sum() > 0 for se in se_modules(model).values())
        assert model.backbone.body.layer4[0].conv1.weight.grad is None


def test_se_trainable_false_freezes_se_in_frozen_stages(resnet50_file):
    model = fasterrcnn_se_resnet50_fpn(
        num_classes=3, backbone_weights_file=resnet50_file, trainable_backbone_layers=2, se_trainable=False
    )
    for name, se in se_modules(model).items():
        stage = int(name.split(".")[2].removeprefix("layer"))
        assert all(p.requires_grad == (stage >= 3) for p in se.parameters()), name


def test_bad_inputs_give_clear_errors(tmp_path, resnet50_file):
    with pytest.raises(CheckpointError, match="no such file"):
        fasterrcnn_se_resnet50_fpn(backbone_weights_file=tmp_path / "missing.pth")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="bad.pth.*not a torchvision resnet50"):
        fasterrcnn_se_resnet50_fpn(backbone_weights_file=tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not both"):
        fasterrcnn_se_resnet50_fpn(
            weights_backbone=ResNet50_Weights.IMAGENET1K_V1, backbone_weights_file=resnet50_file
        )
    with pytest.raises(ConfigError, match="unknown detection model 'yolo'"):
        create_detection_model("yolo")
    with pytest.raises(ValueError, match="anchor_sizes needs one entry per feature map \\(5"):
        fasterrcnn_timm_fpn("resnet18", num_classes=3, anchor_sizes=(32, 64, 128, 256))
    with pytest.raises(ValueError, match="features_only"):
        fasterrcnn_timm_fpn(timm.create_model("resnet18"), num_classes=3)


# ------------------------------------------------------------------------------------------------------------
# timm backbones + FPN


def test_timm_fpn_trains_one_step_and_detects_in_image_coordinates():
    torch.manual_seed(0)
    # timm zero-initialises the last BN of each block (the SE input) in fresh models: use plain init here
    model = fasterrcnn_timm_fpn(
        "se_plugin_resnet18",
        num_classes=3,
        backbone_kwargs={"zero_init_last": False},
        **SMALL,
        **KEEP_ALL,
    )
    assert isinstance(model.backbone, TimmBackboneWithFPN) and model.backbone.out_channels == 256
    ses = se_modules(model)
    assert len(ses) == 8 and all(se.gate_gain.item() == 1.0 for se in ses.values())  # no weights: paper init
    assert torch.isfinite(_train_step(model))
    for name, p in model.named_parameters():
        if ".se." in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name

    images = [_image(96, 240), _image(150, 120, seed=1)]
    detections = _detect(model, images)
    for det, image in zip(detections, images, strict=True):
        h, w = image.shape[-2:]
        boxes = det["boxes"]
        assert len(boxes) == 30 and det["labels"].min() >= 1
        assert boxes[:, 0].min() >= 0 and boxes[:, 1].min() >= 0
        assert boxes[:, 2].max() <= w and boxes[:, 3].max() <= h
    # the 96x240 image is resized to 64x160 internally: boxes reach past 160, so they are in input coordinates
    assert detections[0]["boxes"][:, 2].max() > 160


@pytest.mark.parametrize(
    ("backbone", "out_indices", "extra_blocks", "sizes", "roi_levels"),
    [
        ("resnet18", (1, 2, 3, 4), "maxpool", (32, 64, 128, 256, 512), ["0", "1", "2", "3"]),
        ("se_plugin_resnet18", (2, 3, 4), "p6p7", (64, 128, 256, 512, 1024), ["0", "1", "2"]),
        ("convnext_atto", (0, 1, 2, 3), None, (32, 64, 128, 256), ["0", "1", "2", "3"]),
    ],
)
def test_timm_fpn_anchors_match_the_levels(backbone, out_indices, extra_blocks, sizes, roi_levels):
    model = fasterrcnn_timm_fpn(
        backbone, num_classes=3, out_indices=out_indices, extra_blocks=extra_blocks, **SMALL
    )
    feature_info = model.backbone.body.feature_info
    fpn_in = [block[0].in_channels for block in model.backbone.fpn.inner_blocks]
    assert fpn_in == feature_info.channels()
    anchors = model.rpn.anchor_generator
    with torch.no_grad():
        maps = model.backbone(torch.zeros(1, 3, 128, 160))
    assert (
        len(anchors.sizes) == len(maps) == len(out_indices) + {"maxpool": 1, "p6p7": 2, None: 0}[extra_blocks]
    )
    assert anchors.sizes == tuple((s,) for s in sizes)
    assert [8 * r for r in feature_info.reduction()] == list(sizes[: len(out_indices)])
    assert anchors.num_anchors_per_location() == [3] * len(maps)
    assert anchors.aspect_ratios == ((0.5, 1.0, 2.0),) * len(maps)
    assert model.roi_heads.box_roi_pool.featmap_names == roi_levels
    detections = _detect(model, [_image(100, 140)])  # runs: the anchor generator fits the feature maps
    assert detections[0]["boxes"].shape[1] == 4

    custom = fasterrcnn_timm_fpn(
        backbone, num_classes=3, out_indices=out_indices, extra_blocks=extra_blocks,
        anchor_sizes=[(s, 2 * s) for s in sizes],
    )  # fmt: skip
    assert custom.rpn.anchor_generator.num_anchors_per_location() == [6] * len(maps)
    assert custom.rpn.head.cls_logits.out_channels == 6


def test_timm_pretrained_file_loads_and_freezes_like_torchvision(tmp_path):
    torch.manual_seed(0)
    plain = randomize_norm_stats(timm.create_model("resnet18"))
    torch.save(plain.state_dict(), tmp_path / "resnet18.pth")
    reference = timm.create_model("resnet18")
    reference.load_state_dict(torch.load(tmp_path / "resnet18.pth", weights_only=True))

    model = fasterrcnn_timm_fpn(
        "se_plugin_resnet18", num_classes=3, pretrained_backbone=tmp_path / "resnet18.pth"
    )
    body = model.backbone.body.eval()
    assert all(se.gate_gain.item() == 2.0 for se in se_modules(body).values())  # pretrained: identity SE
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference.eval().forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
        # frozen stages use FrozenBatchNorm2d (x * scale + shift instead of (x - mean) / std * w + b): the same
        # function, rounded differently in each of resnet18's 20 norm layers, through 3x3x512 convolutions
        actual = body(x)
        tol = rounding_tolerance(expected, layers=20, fan_in=3 * 3 * 512)
        assert all((a - e).abs().max().item() <= tol for a, e in zip(actual, expected, strict=True))

    # default 3 trainable units of 5 (stem, layer1..4): stem and layer1 frozen with frozen BN, SE still trains
    assert isinstance(body.bn1, FrozenBatchNorm2d) and isinstance(body.layer1[0].bn1, FrozenBatchNorm2d)
    assert isinstance(body.layer2[0].bn1, torch.nn.BatchNorm2d)
    for name, p in body.named_parameters():
        frozen_stage = name.startswith(("conv1", "bn1", "layer1")) and ".se." not in name
        assert p.requires_grad != frozen_stage, name
    assert torch.isfinite(_train_step(model))  # SE in the frozen layer1 learns
    assert body.layer1[0].conv1.weight.grad is None and body.layer1[0].se.fc2.weight.grad.abs().sum() > 0

    model = fasterrcnn_timm_fpn(
        "se_plugin_resnet18",
        num_classes=3,
        pretrained_backbone=str(tmp_path / "resnet18.pth"),
        trainable_backbone_layers=2,
        se_trainable=False,
    )
    for name, se in se_modules(model).items():  # units stem, layer1, layer2 frozen: their SE too
        stage = int(name.split(".")[2].removeprefix("layer"))
        assert all(p.requires_grad == (stage >= 3) for p in se.parameters()), name


def test_timm_fpn_from_a_module_and_registry():
    body = timm.create_model("se_plugin_resnet18", features_only=True, out_indices=(1, 2, 3, 4))
    model = create_detection_model(
        "fasterrcnn_timm_fpn", backbone=body, num_classes=3, trainable_backbone_layers=4
    )
    assert model.backbone.body is body
    assert not body.conv1.weight.requires_grad and body.layer1[0].conv1.weight.requires_grad
    assert math.isclose(model.transform.image_mean[0], 0.485)
    archs = ("fasterrcnn", "maskrcnn", "retinanet", "fcos")
    recipes = {f"{a}_resnet50_fpn{v}" for a in archs for v in ("", "_v2")} - {"fcos_resnet50_fpn_v2"}
    assert set(DETECTION_MODELS) == (
        recipes | {r.replace("_resnet50", "_se_resnet50") for r in recipes} | {f"{a}_timm_fpn" for a in archs}
    )


def test_timm_fpn_levels_beyond_the_backbone_are_one_line():
    """ConvNeXt has four feature levels: the ResNet default (1, 2, 3, 4) names a fifth."""
    message = r"out_indices \(1, 2, 3, 4\): timm 'se_plugin_convnext_atto' has 4 feature levels \(indices 0\.\.3\)"
    with pytest.raises(ValueError, match=message):
        fasterrcnn_timm_fpn("se_plugin_convnext_atto", num_classes=3)
