"""SE in RegNetX, where RegNetY has it: timm's ``se_plugin_regnetx_*`` twins and ``add_se`` on torchvision's RegNetX.

SE sits after the 3x3 group conv, before the last 1x1 conv, with hidden width ``round(block input width / r)``;
r=4 is RegNetY, so ``regnety_002`` (the same widths as ``regnetx_002``) loads strictly into the twin.
"""

import pytest
import timm
import torch
import torchvision

import se_plugins  # noqa: F401  (registers se_plugin_*)
from se_plugins import add_se, se_modules
from tests.conftest import random_se, randomize_norm_stats, same_ops_close
from tests.family_checks import (
    assert_features_match_base,
    assert_identity_init,
    batch,
    compile_matches_eager,
    count_params,
    detector_trains_one_step,
    fx_matches_eager,
    pretrained_from_base,
    unet_trains_one_step,
)
from tests.test_torchscript import assert_scripted_matches

ARCH = "regnetx_002"


def _models():
    return {
        "timm": lambda: timm.create_model(ARCH, num_classes=5),
        "torchvision": lambda: torchvision.models.regnet_x_400mf(num_classes=5),
    }


def test_registry_and_parameter_counts():
    names = timm.list_models("se_plugin_regnetx_*")
    assert names == [f"se_plugin_{b}" for b in timm.list_models("regnetx_*")] and len(names) == 13
    assert set(names) <= set(timm.list_models(module="regnet"))
    with torch.device("meta"):
        base, ours = timm.create_model(ARCH), timm.create_model(f"se_plugin_{ARCH}")
        as_y = timm.create_model(f"se_plugin_{ARCH}", se_reduction=4)
        regnety = timm.create_model("regnety_002")
    assert count_params(base) == 2_684_792 and count_params(ours) - count_params(base) == 123_034
    assert len(se_modules(ours)) == 13
    assert count_params(as_y) == count_params(regnety) == 3_162_996
    # on the bottleneck channels (24), hidden width from the block input width (the stem's 32): round(32 / 4)
    assert (as_y.s1.b1.se.channels, as_y.s1.b1.se.hidden_channels) == (24, 8)
    assert (as_y.s3.b2.se.channels, as_y.s3.b2.se.hidden_channels) == (152, 38)


def test_regnety_weights_load_strictly_with_identical_outputs(tmp_path):
    torch.manual_seed(0)
    regnety = randomize_norm_stats(timm.create_model("regnety_002")).eval()
    ours = timm.create_model(f"se_plugin_{ARCH}", se_reduction=4).eval()
    ours.load_state_dict(regnety.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(ours(batch()), regnety(batch()))  # the plain SE forward is timm's SEModule, op for op
    # and through timm's pretrained mechanism (timm's RegNet filter, then ours)
    torch.save(regnety.state_dict(), tmp_path / "regnety_002.pth")
    loaded = timm.create_model(f"se_plugin_{ARCH}", pretrained=True, se_reduction=4,
                               pretrained_cfg_overlay=dict(file=str(tmp_path / "regnety_002.pth"))).eval()  # fmt: skip
    with torch.no_grad():
        assert torch.equal(loaded(batch()), regnety(batch()))


def test_pretrained_base_weights_through_timm(tmp_path):
    base, ours, kwargs = pretrained_from_base(ARCH, tmp_path)
    assert all(se.gate_gain.item() == 2.0 for se in se_modules(ours).values())
    with torch.no_grad():
        assert same_ops_close(ours(batch()), base(batch()))
        assert_features_match_base(ARCH, [2, 4, 8, 16, 32], exact=False, **kwargs)


@pytest.mark.parametrize("kind", list(_models()))
def test_identity_init_keeps_outputs_and_keys(kind):
    torch.manual_seed(0)
    model = randomize_norm_stats(_models()[kind]()).eval()
    state, before_state = assert_identity_init(model, batch(), exact=False)
    assert all(".se." in k for k in set(state) - set(before_state))


def test_se_sits_after_the_group_conv():
    torch.manual_seed(0)
    tv = random_se(add_se(torchvision.models.regnet_x_400mf(), init="random"))
    tm = random_se(timm.create_model(f"se_plugin_{ARCH}", se_init="random"))
    with torch.no_grad():
        block = tv.trunk_output.block2[0]  # with a projection shortcut
        x = torch.randn(1, block.f.a[0].in_channels, 16, 16)
        expected = block.activation(block.proj(x) + block.f.c(block.se(block.f.b(block.f.a(x)))))
        torch.testing.assert_close(block(x), expected, rtol=0, atol=0)
        block = tm.s3.b2  # identity shortcut
        x = torch.randn(1, block.conv1.conv.in_channels, 16, 16)
        torch.testing.assert_close(block(x), block.act3(block.conv3(block.se(block.conv2(block.conv1(x)))) + x))


def test_options_and_errors():
    model = add_se(torchvision.models.regnet_x_400mf(), stages=(3, 4), reduction=8)
    assert {name.split(".")[1] for name in se_modules(model)} == {"block3", "block4"}
    first = model.trunk_output.block3[0]
    assert first.se.hidden_channels == round(first.f.a[0].in_channels / 8)
    with pytest.raises(ValueError, match=r"position 'identity' is not supported by torchvision RegNet"):
        add_se(torchvision.models.regnet_x_400mf(), position="identity")
    with pytest.raises(ValueError, match="already has SE"):
        add_se(torchvision.models.regnet_y_400mf())  # torchvision's own SE sits inside the transform
    with pytest.raises(ValueError, match="reduction must be > 0"):
        add_se(timm.create_model(ARCH), reduction=0)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["timm", "torchvision"])
def test_torchscript_fx_and_compile_match_eager(kind):
    torch.manual_seed(0)
    model = random_se(add_se(_models()[kind](), init="random"))
    x = batch()
    assert_scripted_matches(model, x)
    fx_matches_eager(model, x)
    if kind == "timm":
        compile_matches_eager(model, x)


@pytest.mark.slow
def test_detection_and_segmentation_train_one_step():
    detector_trains_one_step(f"se_plugin_{ARCH}", 13)
    unet_trains_one_step(f"tu-se_plugin_{ARCH}", 13)
