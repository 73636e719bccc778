"""SE backbones inside other projects, as the README's "Use in other projects" shows them.

Hugging Face transformers (DETR with a timm backbone by name, ``AutoBackbone``/``TimmBackbone``, the
``TimmWrapper`` re-initialisation trap) and effdet (one training step). Each test skips when its library is not
installed (the dev extra installs both). Random weights only; the hub is never asked (``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import pytest
import timm
import torch

import se_plugins  # noqa: F401  (registers se_plugin_* with timm: needed before any library resolves the name)
from se_plugins import se_modules
from tests.conftest import randomize_norm_stats


@pytest.fixture
def transformers(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import: set it there too
    return transformers


def _tiny_detr_config(transformers, backbone: str):
    return transformers.DetrConfig(
        use_timm_backbone=True,
        backbone=backbone,
        use_pretrained_backbone=False,
        num_labels=3,
        num_queries=10,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
    )


def _identity_gates(model: torch.nn.Module) -> bool:
    return all(torch.count_nonzero(m.fc2.weight) == 0 for m in se_modules(model).values())


@pytest.mark.slow
def test_transformers_detr_with_se_backbone_by_name(transformers):
    pytest.importorskip("scipy")  # DETR's Hungarian matcher
    torch.manual_seed(0)
    model = transformers.DetrForObjectDetection(_tiny_detr_config(transformers, "se_plugin_resnet18"))
    se = se_modules(model.model.backbone)
    assert len(se) == 8 and _identity_gates(model)  # one per ResNet-18 block, still the identity after post_init
    # like pretrained weights (timm zero-initialises each block's last norm: the gates would get no gradient)
    randomize_norm_stats(model.model.backbone)

    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    labels = [  # DETR's targets: class_labels 0..num_labels-1, boxes (cx, cy, w, h) normalised to [0, 1]
        {"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.7, 0.1, 0.2]])},
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.4, 0.6, 0.3, 0.3]])},
    ]
    model.train()
    out = model(pixel_values=images, labels=labels)
    assert out.logits.shape == (2, 10, 4) and out.pred_boxes.shape == (2, 10, 4)
    assert {"loss_ce", "loss_bbox", "loss_giou"} <= set(out.loss_dict) and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.count_nonzero(m.fc2.weight.grad) > 0 for m in se.values())  # the gates learn from step one

    # identity init: the same weights in a plain resnet18 DETR give exactly the same detections
    base = transformers.DetrForObjectDetection(_tiny_detr_config(transformers, "resnet18"))
    result = base.load_state_dict(model.state_dict(), strict=False)
    assert result.missing_keys == [] and result.unexpected_keys and all(".se." in k for k in result.unexpected_keys)
    model.eval(), base.eval()
    with torch.no_grad():
        a, b = model(pixel_values=images), base(pixel_values=images)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.pred_boxes, b.pred_boxes)


def test_transformers_auto_backbone_timm(transformers):
    config = transformers.TimmBackboneConfig(
        backbone="se_plugin_resnet18", use_pretrained_backbone=False, out_indices=(1, 2, 3, 4)
    )
    backbone = transformers.AutoBackbone.from_config(config)
    assert type(backbone).__name__ == "TimmBackbone" and backbone.channels == [64, 128, 256, 512]
    assert len(se_modules(backbone)) == 8 and _identity_gates(backbone)
    maps = backbone(torch.rand(1, 3, 64, 64)).feature_maps
    assert [tuple(m.shape) for m in maps] == [(1, 64, 16, 16), (1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)]


def test_transformers_timm_wrapper_reinitialises_se_until_weights_are_loaded(transformers):
    """The README's trap: TimmWrapper's post_init re-initialises every conv, SE's fc2 included."""
    torch.manual_seed(0)
    config = transformers.TimmWrapperConfig(architecture="se_plugin_resnet18", num_labels=5)
    wrapper = transformers.TimmWrapperForImageClassification(config).eval()
    assert len(se_modules(wrapper)) == 8 and not _identity_gates(wrapper)  # SE no longer starts as the identity

    # the fix: load the weights afterwards (here a plain resnet18's, as from a checkpoint) and reset SE
    plain = timm.create_model("resnet18", num_classes=5).eval()
    result = wrapper.timm_model.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == [] and all(".se." in k for k in result.missing_keys)
    for m in se_modules(wrapper).values():
        m.reset_parameters("identity")
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(wrapper(pixel_values=images).logits, plain(images))


def test_effdet_with_se_backbone_one_train_step():
    effdet = pytest.importorskip("effdet")
    torch.manual_seed(0)
    config = effdet.get_efficientdet_config("resdet50")
    config.backbone_name = "se_plugin_resnet18"  # any timm name: effdet builds it with features_only=True
    config.num_classes = 3
    config.image_size = (128, 128)  # a multiple of 2 ** max_level (128)
    config.fpn_channels = 32
    config.fpn_cell_repeats = 1
    config.box_class_repeats = 1
    net = effdet.EfficientDet(config, pretrained_backbone=False)
    se = se_modules(net.backbone)
    assert len(se) == 8 and _identity_gates(net)
    randomize_norm_stats(net.backbone)  # like pretrained weights (see the DETR test)
    bench = effdet.DetBenchTrain(net, create_labeler=True).train()
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    target = {  # effdet's targets: boxes (y1, x1, y2, x2) in pixels, classes 1..num_classes, -1 = padding
        "bbox": torch.tensor([[[10.0, 20.0, 60.0, 80.0], [0, 0, 0, 0]], [[30.0, 30.0, 100.0, 90.0], [5, 5, 40, 40]]]),
        "cls": torch.tensor([[1.0, -1.0], [3.0, 2.0]]),
    }
    optimizer = torch.optim.SGD(bench.parameters(), lr=0.01, momentum=0.9)
    out = bench(images, target)
    assert set(out) == {"loss", "class_loss", "box_loss"} and torch.isfinite(out["loss"])
    assert torch.equal(out["loss"], out["class_loss"] + config.box_loss_weight * out["box_loss"])  # same float ops
    optimizer.zero_grad()
    out["loss"].backward()
    optimizer.step()
    assert not _identity_gates(net)  # the SE gates trained (fc2 left zero)
    with torch.no_grad():
        after = bench(images, target)["loss"]
    assert torch.isfinite(after) and after != out["loss"]
