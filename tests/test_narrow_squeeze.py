"""Squeeze from the narrow tensor: a Bottleneck's SE pools conv3's input when conv3 + norm are affine."""

import copy

import pytest
import timm
import torch
import torchvision
from torch import nn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d

from se_plugins import add_se, se_modules, set_se_fused
from se_plugins.insert.narrow_squeeze import narrow_squeeze_kind
from tests.conftest import randomize_norm_stats, rounding_tolerance


def test_kind_follows_the_conv_and_the_norm():
    conv = nn.Conv2d(16, 64, 1, bias=False)
    assert narrow_squeeze_kind(conv, nn.BatchNorm2d(64)) == "eval"  # batch statistics in training
    assert narrow_squeeze_kind(conv, FrozenBatchNorm2d(64)) == "always"
    assert narrow_squeeze_kind(conv, nn.GroupNorm(8, 64)) == "never"  # per-sample statistics of the wide tensor
    assert narrow_squeeze_kind(conv, nn.BatchNorm2d(64, affine=False)) == "never"
    assert narrow_squeeze_kind(conv, nn.BatchNorm2d(64, track_running_stats=False)) == "never"
    assert narrow_squeeze_kind(nn.Conv2d(16, 64, 1, stride=2), nn.BatchNorm2d(64)) == "never"
    assert narrow_squeeze_kind(nn.Conv2d(16, 64, 3, padding=1), nn.BatchNorm2d(64)) == "never"
    assert timm.create_model("se_plugin_resnet50_gn").layer1[0].se_narrow == "never"


def _random_se(model: nn.Module) -> nn.Module:
    randomize_norm_stats(model)
    for se in se_modules(model).values():
        se.reset_parameters("random")
    return model


def test_pooled_vector_is_the_mean_of_the_branch_output(rng_input):
    torch.manual_seed(0)
    block = _random_se(timm.create_model("se_plugin_resnet50")).layer2[1].eval()
    x = rng_input(2, 512, 14, 14)
    with torch.no_grad():
        out, pooled = block.residual_and_pooled(x)
        expected = out.mean((2, 3))
    # the same function: conv3 (fan-in 128) and the norm in another order, then a 196-term mean
    assert pooled is not None and pooled.shape == expected.shape
    assert (pooled - expected).abs().max().item() <= rounding_tolerance(expected, layers=2, fan_in=196)
    block.train()
    assert block.residual_and_pooled(x)[1] is None  # batch statistics: the squeeze reads the output


@pytest.mark.parametrize(
    "build",
    [
        lambda: timm.create_model("se_plugin_resnet50", num_classes=10, se_init="random"),
        lambda: add_se(torchvision.models.resnet50(num_classes=10), init="random"),
    ],
    ids=["timm", "torchvision"],
)
def test_eval_outputs_equal_the_plain_form(build, rng_input):
    torch.manual_seed(0)
    fused = _random_se(build()).eval()
    plain = set_se_fused(copy.deepcopy(fused), False)
    x = rng_input(2, 3, 96, 96)
    with torch.no_grad():
        expected = plain(x)
        actual = fused(x)
    # 16 SE blocks rounding their squeeze differently, carried through resnet50's 53 conv layers
    assert (actual - expected).abs().max().item() <= rounding_tolerance(expected, layers=53, fan_in=3 * 3 * 512)


def test_frozen_norm_trains_through_the_narrow_squeeze(rng_input):
    """Detection backbones (FrozenBatchNorm2d): the narrow squeeze also in training, with the plain gradients."""
    torch.manual_seed(0)
    fused = _random_se(add_se(resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=5),
                              init="random"))  # fmt: skip
    assert {b.se_narrow for b in fused.body.modules() if hasattr(b, "se_narrow")} == {"always"}
    plain = set_se_fused(copy.deepcopy(fused), False)
    x = rng_input(2, 3, 64, 64)
    for model in (fused, plain):
        model.train()
        sum(f.square().mean() for f in model(x).values()).backward()
    for (name, p), q in zip(fused.named_parameters(), plain.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            # gradients through 53 conv layers and the SE gates, each side rounding its own way
            tol = rounding_tolerance(q.grad, layers=53, fan_in=3 * 3 * 512)
            assert (p.grad - q.grad).abs().max().item() <= tol, name
