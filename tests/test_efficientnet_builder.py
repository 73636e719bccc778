"""SE in timm's efficientnet-builder nets built without SE, beyond MobileNetV2 (test_mobilenetv2.py).

MobileNetV1, MNASNet-B1, FBNet-C, SPNASNet, EfficientNet-Lite and EfficientNet-EdgeTPU (``EdgeResidual``, the fused
MBConv), and torchvision's MNASNet: SE fills each block's own slot, after the depthwise conv (or the 3x3 expansion
conv), on the expanded channels, before the linear projection, as MobileNetV3/MnasNet-A1/EfficientNet have it.
"""

import pytest
import timm
import torch
import torchvision
from timm.layers import make_divisible
from torch import nn

import se_plugins  # noqa: F401  (registers se_plugin_*)
from se_plugins import add_se, has_se, se_modules
from se_plugins.models import efficientnet as se_efficientnet
from tests.conftest import random_se, randomize_norm_stats, same_ops_close
from tests.family_checks import (
    assert_features_match_base,
    assert_identity_init,
    assert_intermediates_match,
    batch,
    count_params,
    detector_trains_one_step,
    fx_matches_eager,
    pretrained_from_base,
    unet_trains_one_step,
)
from tests.test_torchscript import assert_scripted_matches

# the timm efficientnet-builder families that have archs without SE, and their SE'd relatives
FAMILIES = ("mobilenetv1_*", "mobilenetv2_*", "mnasnet_*", "fbnet*", "spnasnet_*", "tinynet_*", "lcnet_*",
            "*efficientnet_lite*", "*efficientnet_e[sml]*", "mobilenet_edgetpu_*", "semnasnet_*")  # fmt: skip
# one small arch of each family (EdgeResidual: efficientnet_es, mobilenet_edgetpu_v2_xs)
ONE_PER_FAMILY = ["mobilenetv1_100", "mnasnet_050", "fbnetc_100", "spnasnet_100", "efficientnet_lite0",
                  "tf_efficientnet_lite0", "efficientnet_es", "mobilenet_edgetpu_v2_xs"]  # fmt: skip
REP = "efficientnet_lite0"
# efficientnet_lite0's arch def (repeats, output width, expansion) after a 32-channel stem
LITE0_STAGES = [(1, 16, 1), (2, 24, 6), (2, 40, 6), (3, 80, 6), (3, 112, 6), (4, 192, 6), (1, 320, 6)]


def _slots(arch: str) -> list[nn.Module]:
    with torch.device("meta"):
        model = timm.create_model(arch)
    return [m.se for m in model.modules() if hasattr(m, "se")]


def test_registry_has_exactly_the_archs_without_se():
    """The twins are the archs of these families minus those with SE of their own in some or all blocks.

    (That every base has only empty slots is checked by building each twin: add_se refuses a block whose slot is
    taken, see test_timm_models.py::test_every_arch_builds_with_se.)
    """
    archs = {n for p in FAMILIES for n in timm.list_models(p, exclude_filters=["*test*", "se_plugin_*"])}
    with_se = archs - set(se_efficientnet.BASES)
    assert set(se_efficientnet.BASES) <= archs and len(se_efficientnet.BASES) == 39
    assert with_se == {*timm.list_models("tinynet_*"), *timm.list_models("lcnet_*"), *timm.list_models("semnasnet_*"),
                       *timm.list_models("fbnetv3_*"), "mnasnet_small"}  # fmt: skip
    for arch in ("tinynet_e", "lcnet_050", "mnasnet_small", "semnasnet_050", "fbnetv3_b"):  # one of each
        assert not all(isinstance(se, nn.Identity) for se in _slots(arch)), arch
    assert all(isinstance(se, nn.Identity) for se in _slots("efficientnet_lite0"))
    names = timm.list_models("se_plugin_*", module="efficientnet")
    assert names == sorted(f"se_plugin_{b}" for b in se_efficientnet.BASES)
    assert timm.models.get_pretrained_cfg("se_plugin_mobilenetv1_100").architecture == "se_plugin_mobilenetv1_100"


def test_parameter_count_from_widths():
    """efficientnet_lite0: SE on each block's expanded width (the depthwise-separable first block: its input)."""
    widths, cin = [], 32
    for repeats, cout, expansion in LITE0_STAGES:
        for _ in range(repeats):
            widths.append(cin * expansion)
            cin = cout
    hidden = [make_divisible(c / 16, 8, round_limit=0.0) for c in widths]
    expected = sum(2 * c * h + h + c for c, h in zip(widths, hidden, strict=True))
    with torch.device("meta"):
        base, ours = timm.create_model(REP), timm.create_model(f"se_plugin_{REP}")
    assert [se.channels for se in se_modules(ours).values()] == widths and len(widths) == 16
    assert count_params(base) == 4_652_008 and count_params(ours) - count_params(base) == expected == 948_536


@pytest.mark.parametrize("arch", ONE_PER_FAMILY)
def test_identity_init_keeps_outputs_and_keys(arch):
    torch.manual_seed(0)
    model = randomize_norm_stats(timm.create_model(arch, num_classes=5)).eval()
    state, before_state = assert_identity_init(model, batch(), exact=False)
    assert len(se_modules(model)) == len(_slots(arch))  # every block, residual add or not
    assert all(".se." in k for k in set(state) - set(before_state))


def test_torchvision_mnasnet(rng_input):
    torch.manual_seed(0)
    model = randomize_norm_stats(torchvision.models.mnasnet0_5(num_classes=5)).eval()
    keys = set(model.state_dict())
    with torch.no_grad():
        before = model(batch())
        add_se(model)
        assert torch.equal(model(batch()), before)  # x * 1 == x
    assert len(se_modules(model)) == 16  # the 16 inverted residuals (the stem's separable conv is no block)
    assert {k for k in model.state_dict() if k not in keys and k.startswith("layers.8.0.")} == {
        f"layers.8.0.se.{p}" for p in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "gate_gain")
    }
    random_se(model)
    with torch.no_grad():
        for block, residual in ((model.layers[8][0], False), (model.layers[8][1], True)):
            x = rng_input(1, block.layers[0].in_channels, 16, 16)
            mid = block.se(block.layers[:6](x))
            assert block.se.channels == block.layers[3].out_channels
            torch.testing.assert_close(block(x), block.layers[6:](mid) + (x if residual else 0), rtol=0, atol=0)
    with pytest.raises(ValueError, match="cannot tell the stage of block 'layers.8.0'"):
        add_se(torchvision.models.mnasnet0_5(), stages=(2,))
    assert_scripted_matches(model, batch())
    graph = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert same_ops_close(graph(batch()), model(batch()))


def test_se_sits_in_the_slot(rng_input):
    """Blocks against their own layers composed by hand: MobileNetV1's separable conv and the fused MBConv."""
    torch.manual_seed(0)
    v1 = random_se(timm.create_model("se_plugin_mobilenetv1_100", se_init="random"))
    es = random_se(timm.create_model("se_plugin_efficientnet_es", se_init="random"))
    with torch.no_grad():
        block = v1.blocks[3][1]  # depthwise, SE, pointwise conv + BN + ReLU6 (MobileNetV1 has no skips)
        assert not block.has_skip and block.se.channels == 512
        x = rng_input(1, block.conv_dw.in_channels, 8, 8)
        expected = block.bn2(block.conv_pw(block.se(block.bn1(block.conv_dw(x)))))
        torch.testing.assert_close(block(x), expected, rtol=0, atol=0)
        block = es.blocks[1][1]  # EdgeResidual with a residual add: 3x3 expansion conv, SE, 1x1 projection
        assert type(block).__name__ == "SETimmEdgeResidual" and block.has_skip
        x = rng_input(1, block.conv_exp.in_channels, 16, 16)
        expected = block.bn2(block.conv_pwl(block.se(block.bn1(block.conv_exp(x)))))
        torch.testing.assert_close(block(x), expected + x, rtol=0, atol=0)


def test_stages_per_model_and_errors():
    v1 = timm.create_model("se_plugin_mobilenetv1_100", se_stages=(5,), se_reduction=8)
    assert sorted(se_modules(v1)) == ["blocks.4.0.se", "blocks.4.1.se"]
    assert v1.blocks[4][0].se.hidden_channels == make_divisible(512 / 8, 8, round_limit=0.0)
    with pytest.raises(ValueError, match=r"stages must be a non-empty subset of 1\.\.5"):  # MobileNetV1: 5 stages
        add_se(timm.create_model("mobilenetv1_100"), stages=(6,))
    with pytest.raises(ValueError, match=r"stages must be a non-empty subset of 1\.\.6"):  # EdgeTPU-S: 6
        add_se(timm.create_model("efficientnet_es"), stages=(7,))
    es = add_se(timm.create_model("efficientnet_es"), stages=(1, 6))
    assert sorted(se_modules(es)) == ["blocks.0.0.se", "blocks.5.0.se", "blocks.5.1.se"]
    with pytest.raises(ValueError, match=r"position 'post' is not supported by timm EdgeResidual .*\('standard',\)"):
        add_se(timm.create_model("efficientnet_es"), position="post")
    with pytest.raises(ValueError, match="already has SE"):
        add_se(timm.create_model("lcnet_050"))  # SE of its own in the last two blocks


def test_pretrained_base_weights_through_timm(tmp_path):
    base, ours, kwargs = pretrained_from_base(REP, tmp_path)
    state, ours_state = torch.load(tmp_path / "base.pth", weights_only=True), ours.state_dict()
    assert {k for k in ours_state if k not in state and k.startswith("blocks.1.0.")} == {
        f"blocks.1.0.se.{p}" for p in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "gate_gain")
    }
    assert all(".se." in k for k in set(ours_state) - set(state))
    assert all(se.gate_gain.item() == 2.0 for se in se_modules(ours).values())
    with torch.no_grad():
        assert same_ops_close(ours(batch()), base(batch()))
        assert_features_match_base(REP, [2, 4, 8, 16, 32], exact=False, se_count=16, **kwargs)
        assert_intermediates_match(ours, base, batch(), exact=False)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mobilenetv1_100", "efficientnet_es"])
def test_torchscript_and_fx_match_eager(arch):
    torch.manual_seed(0)
    model = random_se(timm.create_model(f"se_plugin_{arch}", num_classes=5, se_init="random"))
    assert_scripted_matches(model, batch())
    fx_matches_eager(model, batch())


def test_fx_features_and_export():
    """tf_efficientnet_lite0's TF "same" padding is dynamic: plain symbolic_trace fails on the base model too, timm's
    FX feature extractor keeps the padding as a leaf and traces the SE twin."""
    fx = timm.create_model("se_plugin_tf_efficientnet_lite0", features_only=True, feature_cls="fx")
    listed = random_se(timm.create_model("se_plugin_tf_efficientnet_lite0", features_only=True))
    assert sum(".se.fc1.weight" in k for k in fx.state_dict()) == len(se_modules(listed)) == 16
    fx.load_state_dict({f"graph_module.{k}": v for k, v in listed.state_dict().items()})
    with torch.no_grad():
        assert all(same_ops_close(a, b) for a, b in zip(fx.eval()(batch()), listed(batch()), strict=True))
    model = random_se(timm.create_model("se_plugin_mobilenetv1_100", num_classes=5, se_init="random"))
    exported = torch.export.export(model, (batch(),))
    with torch.no_grad():
        assert same_ops_close(exported.module()(batch()), model(batch()))


@pytest.mark.slow
def test_detection_and_segmentation_train_one_step():
    detector_trains_one_step(f"se_plugin_{REP}", 16)
    unet = unet_trains_one_step(f"tu-se_plugin_{REP}", 16)
    assert list(unet.encoder.out_channels[1:]) == [16, 24, 40, 112, 320]
    assert has_se(unet.encoder)
